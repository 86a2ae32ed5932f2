"""Type checks of configuration values, shared by the dataclasses and the service.

Each check raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a number
that is not finite, naming the field and saying what is allowed; range checks stay with the
field they belong to. ``bool`` is never a number here (``True`` is an ``int`` to Python, not
a token count), and NaN and infinities are not finite numbers.
"""

from __future__ import annotations

import math
from numbers import Real


def _got(value: object) -> str:
    return f"got {value!r} ({type(value).__name__})"


def check_int(name: str, value: object, allowed: str) -> None:
    """Raise ``TypeError`` unless ``value`` is an ``int`` (a bool is not).

    Args:
        name: The field's name, for the message.
        value: The value to check.
        allowed: What the field accepts, e.g. "an int >= 1".
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {allowed}, {_got(value)}")


def check_number(name: str, value: object, allowed: str) -> None:
    """Raise ``TypeError`` unless ``value`` is a real number (int or float, not bool), and
    ``ValueError`` if it is NaN or infinite.

    Args:
        name: The field's name, for the message.
        value: The value to check.
        allowed: What the field accepts, e.g. "a finite number >= 0".
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be {allowed}, {_got(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {allowed}, {_got(value)}")


def check_type(name: str, value: object, types: type | tuple[type, ...], allowed: str) -> None:
    """Raise ``TypeError`` unless ``value`` is an instance of ``types``.

    Args:
        name: The field's name, for the message.
        value: The value to check.
        types: The accepted type or types (``type(None)`` for an optional field).
        allowed: What the field accepts, e.g. "a GenerationParams or None".
    """
    if not isinstance(value, types):
        raise TypeError(f"{name} must be {allowed}, {_got(value)}")
