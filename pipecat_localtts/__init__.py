"""pipecat-localtts: a Pipecat TTS service that speaks with a local speech-token LM.

``LocalTTSService`` runs Orpheus (a Llama emitting SNAC codec tokens) on your GPU or CPU,
streams audio as it is decoded, and stops within one decode step on barge-in.
Imports are lazy: importing the package loads neither Pipecat nor any weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipecat_localtts.version import __version__

if TYPE_CHECKING:
    from pipecat_localtts.aggregator import AdaptiveTextAggregator
    from pipecat_localtts.chunking import AdaptiveChunker, ChunkerConfig
    from pipecat_localtts.engine.batched import BatchedEngine
    from pipecat_localtts.engine.remote import RemoteLM
    from pipecat_localtts.engine.sampling import GenerationParams
    from pipecat_localtts.errors import (
        GenerationError,
        LMServerError,
        LocalTTSError,
        ModelLoadError,
        UnknownVoiceError,
    )
    from pipecat_localtts.models.orpheus import OrpheusModel, load_orpheus
    from pipecat_localtts.service import LocalTTSService
    from pipecat_localtts.websocket_service import LocalTTSWebsocketService

__all__ = [
    "AdaptiveChunker",
    "AdaptiveTextAggregator",
    "BatchedEngine",
    "ChunkerConfig",
    "GenerationError",
    "GenerationParams",
    "LMServerError",
    "LocalTTSError",
    "LocalTTSService",
    "LocalTTSWebsocketService",
    "ModelLoadError",
    "OrpheusModel",
    "RemoteLM",
    "UnknownVoiceError",
    "__version__",
    "load_orpheus",
]

_LAZY = {
    "AdaptiveChunker": "pipecat_localtts.chunking",
    "AdaptiveTextAggregator": "pipecat_localtts.aggregator",
    "ChunkerConfig": "pipecat_localtts.chunking",
    "BatchedEngine": "pipecat_localtts.engine.batched",
    "GenerationParams": "pipecat_localtts.engine.sampling",
    "GenerationError": "pipecat_localtts.errors",
    "LMServerError": "pipecat_localtts.errors",
    "RemoteLM": "pipecat_localtts.engine.remote",
    "LocalTTSError": "pipecat_localtts.errors",
    "ModelLoadError": "pipecat_localtts.errors",
    "UnknownVoiceError": "pipecat_localtts.errors",
    "OrpheusModel": "pipecat_localtts.models.orpheus",
    "load_orpheus": "pipecat_localtts.models.orpheus",
    "LocalTTSService": "pipecat_localtts.service",
    "LocalTTSWebsocketService": "pipecat_localtts.websocket_service",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipecat_localtts' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
