"""Model families: which adapter a checkpoint needs, chosen from the checkpoint itself.

A family is a prompt format, a token layout and a codec (Orpheus on SNAC, NeuTTS on
NeuCodec). The engine, the scheduler, the server and the service only see the
:class:`~pipecat_localtts.models.base.SpeechModel` interface; this module is the one place
that knows the families, so that ``LocalTTSService(model="neuphonic/neutts-air")``,
``say --model DIR`` and ``serve --model DIR`` pick the right one without a flag.

Detection reads nothing heavier than tokenizer files: a directory whose tokenizer holds
NeuTTS's markers and speech tokens is NeuTTS, a ``neuphonic/neutts*`` hub id is NeuTTS,
everything else is Orpheus (the default family, whose loader gives the clear error when a
directory is no checkpoint at all).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipecat_localtts.models import neutts, orpheus

__all__ = ["FAMILIES", "MODEL_TYPES", "Family", "family_of", "load_model"]


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        name: Its name in logs and errors.
        model_type: The loaded model's class.
        detect: Whether a hub id or directory is of this family (cheap: no weights read).
        load: ``load(model, device=, dtype=, voices=, lm=)`` → the loaded model.
        voices: The voice names known before loading (``None``: the checkpoint's references,
            known once loaded).
    """

    name: str
    model_type: type
    detect: Callable[[str], bool]
    load: Callable[..., Any]
    voices: tuple[str, ...] | None


def _load_orpheus(model: str, *, device: Any, dtype: Any, voices: Any, lm: bool) -> orpheus.OrpheusModel:
    if voices is not None and isinstance(voices, Mapping):
        raise ValueError("Orpheus voices are names (voices=['tara', ...]), not reference recordings")
    return orpheus.load_orpheus(model, device=device, dtype=dtype, voices=voices, lm=lm)


def _load_neutts(model: str, *, device: Any, dtype: Any, voices: Any, lm: bool) -> neutts.NeuTTSModel:
    if voices is not None and not isinstance(voices, Mapping):
        raise ValueError(
            "NeuTTS voices are reference recordings: voices={name: (codes.pt, transcript)}, "
            "not a list of names"
        )
    return neutts.load_neutts(model, device=device, dtype=dtype, voices=voices, lm=lm)


#: Every family, tried in order; the last (Orpheus) takes whatever no other claims.
FAMILIES: tuple[Family, ...] = (
    Family("NeuTTS", neutts.NeuTTSModel, neutts.is_neutts_checkpoint, _load_neutts, None),
    Family("Orpheus", orpheus.OrpheusModel, lambda model: True, _load_orpheus, orpheus.ENGLISH_VOICES),
)

#: Loaded-model classes a service, the CLI and the server accept.
MODEL_TYPES: tuple[type, ...] = tuple(f.model_type for f in FAMILIES)


def family_of(model: str | Any) -> Family:
    """The family of a hub id or directory, or of a loaded model object."""
    if not isinstance(model, str):
        for family in FAMILIES:
            if isinstance(model, family.model_type):
                return family
        raise TypeError(f"not a loaded model of a known family: {type(model).__name__}")
    return next(f for f in FAMILIES if f.detect(model))


def load_model(
    model: str,
    *,
    device: Any = None,
    dtype: Any = None,
    voices: Sequence[str] | Mapping[str, Any] | None = None,
    lm: bool = True,
) -> Any:
    """Load a hub id or directory with the adapter of its family.

    Args:
        model: Hub id or local directory.
        device: Torch device (``None``: CUDA when available).
        dtype: LM weight dtype (``None``: bf16 on CUDA, fp32 on CPU).
        voices: Orpheus: voice names to accept; NeuTTS: name → reference (codes + transcript).
        lm: Load the LM weights (``False`` when the LM runs on a serving engine).

    Raises:
        ModelLoadError: The checkpoint could not be had.
        ValueError: ``voices`` of the wrong kind for the family.
    """
    return family_of(model).load(model, device=device, dtype=dtype, voices=voices, lm=lm)
