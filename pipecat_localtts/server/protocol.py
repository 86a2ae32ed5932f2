"""The WebSocket protocol of ``pipecat-localtts serve`` (``/v1/audio/stream``), both sides.

Plain Python (no FastAPI, no Pipecat), so the server and the Pipecat client share it.

One connection carries one call: many turns, each a *context* named by the client. The
client authenticates with ``Authorization: Bearer KEY`` on the upgrade request when the
server has a key (401 otherwise).

Client → server, JSON text messages:

``{"type": "speak", "context_id": "c1", "text": "Hello, ", ...settings}``
    A piece of the turn's text, as the LLM produces it; the server's adaptive chunker cuts
    the pieces into utterances (a small first one, then sentences). The first ``speak`` of a
    context opens it and may carry its settings: ``voice``, ``temperature``, ``top_p``,
    ``repetition_penalty``, ``seed``, ``max_tokens`` (see :data:`SETTINGS`); later ones must
    not change them. ``"flush": true`` also flushes.
``{"type": "flush", "context_id": "c1"}``
    End of the turn's text: speak what is buffered; a ``done`` event follows the last audio.
``{"type": "interrupt", "context_id": "c1"}``
    Stop the context now. The server stops its generation within one decode step, answers
    ``interrupted``, and sends no audio of that context after that answer.

Server → client:

``{"type": "ready", "model": ..., "sample_rate": 24000, "encoding": "pcm_s16le", "voices": [...]}``
    Sent once, right after the connection opens.
binary messages: audio
    ``[2 bytes: n, big-endian][n bytes: context id, UTF-8][PCM: 16-bit little-endian mono
    at the ready event's sample rate]`` (see :func:`pack_audio` / :func:`unpack_audio`).
``{"type": "done", "context_id": "c1", "audio_seconds": 1.23}``
    The context's last audio has been sent; the context id is free again.
``{"type": "interrupted", "context_id": "c1"}``
    The answer to ``interrupt``.
``{"type": "error", "context_id": "c1" | null, "code": ..., "message": ...}``
    ``code`` is one of :data:`ERROR_CODES`. An error with a context id ends that context
    (no ``done`` follows); one without is about a message that named none. The connection
    stays open, except after ``slow_client`` (closed with code 1008).
"""

from __future__ import annotations

import json
import struct
from typing import Any

__all__ = [
    "ERROR_CODES",
    "MAX_CONTEXT_ID_BYTES",
    "SETTINGS",
    "ProtocolError",
    "error_event",
    "pack_audio",
    "parse_client_message",
    "unpack_audio",
]

#: Context settings a ``speak`` may carry (besides ``voice``), as GenerationParams fields.
SETTINGS = ("temperature", "top_p", "repetition_penalty", "seed", "max_tokens")
MAX_CONTEXT_ID_BYTES = 256
CLIENT_TYPES = ("speak", "flush", "interrupt")

#: What an error event's ``code`` can say.
ERROR_CODES = {
    "bad_json": "the message is not a JSON object",
    "bad_message": "a field is missing, of the wrong type or value, or the type is unknown",
    "unknown_voice": "the voice is not one the model knows",
    "too_long": "the context's text is over the server's --max-chars",
    "busy": "the server is at --max-streams concurrent generations; try again shortly",
    "too_many_contexts": "this connection already has the server's limit of contexts speaking (8 by default)",
    "context_busy": "the context id is in use (flushed and still speaking) or its settings changed",
    "generation_failed": "the engine failed while generating this context",
    "slow_client": "the client did not read its audio in time; the connection is closed",
    "unavailable": "the server is not ready (loading) or shutting down",
}


class ProtocolError(ValueError):
    """A client message the server cannot act on; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str, context_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.context_id = context_id


def error_event(code: str, message: str, context_id: str | None = None) -> dict[str, Any]:
    """An ``error`` event."""
    return {"type": "error", "context_id": context_id, "code": code, "message": message}


def pack_audio(context_id: str, pcm: bytes) -> bytes:
    """A binary audio message: the context id's length and bytes, then the PCM."""
    cid = context_id.encode("utf-8")
    if len(cid) > MAX_CONTEXT_ID_BYTES:
        raise ValueError(f"context id over {MAX_CONTEXT_ID_BYTES} bytes")
    return struct.pack(">H", len(cid)) + cid + pcm


def unpack_audio(message: bytes) -> tuple[str, bytes]:
    """``(context_id, pcm)`` of a binary audio message; ``ValueError`` if it is malformed."""
    if len(message) < 2:
        raise ValueError("audio message shorter than its header")
    (n,) = struct.unpack_from(">H", message)
    if len(message) < 2 + n:
        raise ValueError("audio message shorter than its context id")
    return message[2 : 2 + n].decode("utf-8"), message[2 + n :]


def parse_client_message(raw: str) -> dict[str, Any]:
    """A client's text message, checked for shape (not for voice or values).

    Returns the message with ``type`` and ``context_id`` checked and ``text`` a str for
    ``speak``. Raises :class:`ProtocolError` (``bad_json`` or ``bad_message``).
    """
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ProtocolError("bad_json", f"message is not valid JSON: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_json", "message must be a JSON object")
    cid = message.get("context_id")
    if not isinstance(cid, str) or not cid or len(cid.encode("utf-8", "replace")) > MAX_CONTEXT_ID_BYTES:
        raise ProtocolError(
            "bad_message", f"context_id must be a non-empty string of at most {MAX_CONTEXT_ID_BYTES} bytes"
        )
    try:
        cid.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("bad_message", "context_id must be valid Unicode") from None
    kind = message.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            "bad_message", f"unknown message type {kind!r}; expected one of {', '.join(CLIENT_TYPES)}", cid
        )
    if kind == "speak":
        if not isinstance(message.get("text"), str):
            raise ProtocolError("bad_message", "speak needs a 'text' string", cid)
        if not isinstance(message.get("flush", False), bool):
            raise ProtocolError("bad_message", "'flush' must be true or false", cid)
    return message
