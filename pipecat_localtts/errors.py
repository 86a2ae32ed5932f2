"""Typed errors raised at the package's boundaries.

The service maps every one of them (and anything unexpected) to a Pipecat ``ErrorFrame``;
the CLI maps them to a one-line message and a non-zero exit code.
"""

from __future__ import annotations


class LocalTTSError(Exception):
    """Base class of all errors raised by pipecat-localtts."""


class ModelLoadError(LocalTTSError):
    """Weights, tokenizer or codec could not be loaded (missing, gated, offline, corrupt)."""


class UnknownVoiceError(LocalTTSError, ValueError):
    """The requested voice is not one the model knows."""


class GenerationError(LocalTTSError):
    """A generation request failed inside the engine (model error, out of memory, ...)."""


class EngineClosedError(LocalTTSError):
    """A request was submitted to an engine that is not running."""


class LMServerError(ModelLoadError):
    """The serving engine that runs the speech LM (``lm_url``) is unreachable or refuses us."""
