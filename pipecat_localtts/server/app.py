"""The TTS server: an OpenAI-compatible speech endpoint and a WebSocket protocol on one engine.

:func:`create_app` builds the ASGI app (FastAPI) around a loader that returns a started
:class:`~pipecat_localtts.engine.batched.BatchedEngine`; ``pipecat-localtts serve`` runs it with
uvicorn. The app listens at once and loads in the background: ``/health`` is 503 until the
engine is warm. Routes:

- ``POST /v1/audio/speech``: OpenAI's speech API (``model``, ``input``, ``voice``,
  ``response_format`` ``pcm`` | ``wav``, ``speed`` 1.0), the audio streamed with chunked
  transfer as it is decoded; extra fields ``seed``, ``temperature``, ``top_p``,
  ``repetition_penalty``, ``max_tokens``. A client that goes away cancels its generation.
- ``GET /v1/models``: the served model.
- ``WS /v1/audio/stream``: many turns per connection (:mod:`pipecat_localtts.server.protocol`).
- ``GET /health``, ``GET /metrics`` (Prometheus text).

Limits: a bearer key on every route (constant-time compare), ``max_chars`` per text (413),
``max_streams`` concurrent generations (503 + ``Retry-After``), request bodies and WebSocket
messages bounded, and at most ``max_buffer_seconds`` of audio buffered for a client, which
must also take each piece within ``client_timeout`` seconds, or its generation is cancelled
and its connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from fastapi.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from pipecat_localtts.chunking import AdaptiveChunker, ChunkerConfig, fit_pieces, is_speakable, split_text, well_formed
from pipecat_localtts.engine.batched import BatchedEngine
from pipecat_localtts.engine.request import Request
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.errors import EngineClosedError, UnknownVoiceError
from pipecat_localtts.server import protocol
from pipecat_localtts.server.streams import SlowClientError, SpeechStream

__all__ = ["OPENAI_MODELS", "OPENAI_VOICES", "ServerConfig", "TTSServer", "create_app"]

#: OpenAI's speech model names, accepted as names of the served model so OpenAI clients
#: (Pipecat's ``OpenAITTSService`` sends ``gpt-4o-mini-tts`` by default) work unchanged.
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
#: OpenAI voice names → Orpheus voices, used when the model knows the target (Pipecat's
#: ``OpenAITTSService`` only sends OpenAI names). Override with ``ServerConfig.voice_aliases``.
OPENAI_VOICES = {
    "alloy": "tara",
    "ash": "leo",
    "ballad": "dan",
    "cedar": "zac",
    "coral": "leah",
    "echo": "dan",
    "fable": "zac",
    "marin": "jess",
    "nova": "mia",
    "onyx": "leo",
    "sage": "zoe",
    "shimmer": "jess",
    "verse": "leo",
}
FORMATS = {"pcm": "audio/pcm", "wav": "audio/wav"}
_PARAM_TYPES = {
    "temperature": float, "top_p": float, "top_k": int, "repetition_penalty": float, "seed": int, "max_tokens": int,
}  # fmt: skip


@dataclass
class ServerConfig:
    """What the server allows and how it speaks (``pipecat-localtts serve`` flags)."""

    model_name: str = "model"
    voice: str | None = None  # default voice; None: the model's first
    api_key: str | None = None
    max_streams: int = 32  # concurrent generations (HTTP requests + WebSocket contexts)
    max_chars: int = 4096  # characters per HTTP input / per WebSocket context
    max_contexts: int = 8  # contexts one WebSocket connection may have speaking at once
    max_buffer_seconds: float = 30.0  # audio a client may leave unread before it is cut off
    client_timeout: float = 20.0  # seconds a client may take to accept one piece of audio
    retry_after: int = 1  # seconds, in 503 answers
    edge_fade_ms: float = 5.0
    params: GenerationParams | None = None  # sampling defaults; None: the model family's
    chunking: ChunkerConfig = field(default_factory=ChunkerConfig)
    voice_aliases: Mapping[str, str] = field(default_factory=lambda: dict(OPENAI_VOICES))

    @property
    def max_body_bytes(self) -> int:
        """Request bodies and WebSocket messages: the text at 4 UTF-8 bytes per character, plus room."""
        return 4 * self.max_chars + 16384


class _Metrics:
    def __init__(self, server: TTSServer) -> None:
        self.registry = r = CollectorRegistry()
        self.ready = Gauge("localtts_ready", "1 once the model is loaded and warm", registry=r)
        self.streams = Gauge("localtts_active_streams", "Streams generating (HTTP + WebSocket contexts)", registry=r)
        engine_active = Gauge("localtts_engine_active_requests", "Engine requests in a decode slot", registry=r)
        engine_active.set_function(lambda: server.engine.active if server.engine is not None else 0)
        waiting = Gauge("localtts_waiting_requests", "Engine requests waiting for a slot", registry=r)
        waiting.set_function(lambda: server.engine.waiting if server.engine is not None else 0)
        self.ttfa = Histogram(
            "localtts_time_to_first_audio_seconds",
            "From a stream's start to its first audio handed to the client",
            ["api"],
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
            registry=r,
        )
        self.rtf = Histogram(
            "localtts_real_time_factor",
            "A finished stream's wall time over its audio duration (below 1: faster than real time)",
            ["api"],
            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0),
            registry=r,
        )
        self.audio = Counter("localtts_audio_seconds", "Audio seconds sent", ["api"], registry=r)
        self.finished = Counter("localtts_streams", "Streams ended, by outcome", ["api", "outcome"], registry=r)
        self.errors = Counter("localtts_errors", "Errors answered, by kind", ["kind"], registry=r)
        self.dropped_frames = Counter(
            "localtts_dropped_frames",
            "Codec frames dropped for a token outside its frame slot (a remote LM cannot enforce slots)",
            registry=r,
        )


class TTSServer:
    """The server's state: the engine, its readiness, the open streams and the metrics."""

    def __init__(self, load: Callable[[], BatchedEngine], config: ServerConfig) -> None:
        self.config = config
        self._load = load
        self.engine: BatchedEngine | None = None
        self.ready = False
        self.load_error: BaseException | None = None
        self.streams = 0
        self.peak_buffered = 0  # samples: the most any stream held for a slow client
        self.peak_overshoot = 0  # samples: the most any stream held beyond its cap's last piece
        self.metrics = _Metrics(self)
        self.recent: deque[Request] = deque(maxlen=512)  # engine requests (no text), for tests and debugging
        self.on_load_failed: Callable[[BaseException], None] | None = None
        self._open: set[SpeechStream] = set()
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        try:
            engine = await asyncio.to_thread(self._load)
        except Exception as e:  # noqa: BLE001 - reported by /health and the CLI
            logger.exception(f"server: loading the model failed: {e}")
            self.load_error = e
            if self.on_load_failed is not None:
                self.on_load_failed(e)
            return
        if self._closing:
            await asyncio.to_thread(engine.close)
            return
        self.engine = engine
        self.ready = True
        self.metrics.ready.set(1)
        logger.info(f"server: {self.config.model_name} ready")

    async def shutdown(self) -> None:
        self._closing = True
        self.ready = False
        self.metrics.ready.set(0)
        for stream in list(self._open):
            stream.cancel()
        engine, self.engine = self.engine, None
        if engine is not None:
            await asyncio.to_thread(engine.close)

    # ------------------------------------------------------------------ requests

    @property
    def voices(self) -> tuple[str, ...]:
        assert self.engine is not None
        return tuple(self.engine.model.voices)

    def resolve_voice(self, name: Any) -> str:
        """The model's voice for ``name`` (a voice or an alias); the default for ``None``."""
        voices = self.voices
        if name is None or name == "":
            return self.config.voice or voices[0]
        if not isinstance(name, str):
            raise UnknownVoiceError(f"voice must be a string, got {type(name).__name__}")
        if name in voices:
            return name
        target = self.config.voice_aliases.get(name)
        if target in voices:
            return target
        aliases = sorted(a for a, t in self.config.voice_aliases.items() if t in voices)
        raise UnknownVoiceError(
            f"unknown voice {name!r}; known voices: {', '.join(voices)}"
            + (f" (aliases: {', '.join(aliases)})" if aliases else "")
        )

    def params(self, fields: Mapping[str, Any]) -> GenerationParams:
        """The server's sampling defaults with the request's overrides (``ValueError`` if bad)."""
        overrides: dict[str, Any] = {}
        for name, kind in _PARAM_TYPES.items():
            value = fields.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
                raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
            overrides[name] = kind(value)
        base = self.config.params or (self.engine.model.default_params if self.engine else GenerationParams())
        if "max_tokens" in overrides:
            overrides["max_tokens"] = min(overrides["max_tokens"], base.max_tokens)
        try:
            from dataclasses import replace

            return replace(base, **overrides)
        except TypeError as e:
            raise ValueError(str(e)) from None

    def utterances(self, text: str, voice: str) -> list[str]:
        """A text cut into chunks whose prompts fit the engine, unspeakable ones dropped."""
        return [piece for chunk in split_text(well_formed(text), self.config.chunking) for piece in self.fit(chunk, voice)]

    def fit(self, chunk: str, voice: str) -> list[str]:
        assert self.engine is not None
        model = self.engine.model
        pieces = fit_pieces(chunk, lambda piece: len(model.build_prompt(piece, voice)) <= model.prompt_budget)
        return [piece for piece in pieces if is_speakable(piece)]

    def open_stream(self, voice: str, params: GenerationParams) -> SpeechStream | None:
        """A new stream, or ``None`` when ``max_streams`` are open."""
        if self.engine is None or not self.ready:
            raise EngineClosedError("the server is not ready")
        if self.streams >= self.config.max_streams:
            return None
        sr = self.engine.model.sample_rate
        stream = SpeechStream(
            self.engine,
            voice,
            params,
            max_buffer_samples=int(self.config.max_buffer_seconds * sr),
            fade_samples=round(self.config.edge_fade_ms * sr / 1000),
            on_request=self.recent.append,
        )
        self.streams += 1
        self._open.add(stream)
        self.metrics.streams.set(self.streams)
        return stream

    def close_stream(self, stream: SpeechStream, api: str, outcome: str) -> None:
        """Account for a stream that ended (idempotent)."""
        if stream not in self._open:
            return
        stream.cancel()  # whatever is still at the engine stops
        self._open.discard(stream)
        self.peak_buffered = max(self.peak_buffered, stream.peak_buffered)
        self.peak_overshoot = max(self.peak_overshoot, stream.peak_buffered - stream.largest_piece)
        self.streams -= 1
        self.metrics.streams.set(self.streams)
        self.metrics.finished.labels(api, outcome).inc()
        dropped = sum(r.dropped_frames for r in stream.requests if r.done)
        if dropped:
            self.metrics.dropped_frames.inc(dropped)
        assert self.engine is not None or self._closing
        if stream.samples_out:
            sr = stream._engine.model.sample_rate
            seconds = stream.samples_out / sr
            self.metrics.audio.labels(api).inc(seconds)
            if outcome == "ok":
                self.metrics.rtf.labels(api).observe((time.perf_counter() - stream.t_start) / seconds)

    def first_audio(self, stream: SpeechStream, api: str) -> None:
        self.metrics.ttfa.labels(api).observe(time.perf_counter() - stream.t_start)

    def authorized(self, headers: Mapping[str, str]) -> bool:
        """Whether the request carries the API key (always, without one); constant time."""
        key = self.config.api_key
        if not key:
            return True
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


# ---------------------------------------------------------------------- HTTP helpers


def _error(status: int, message: str, *, kind: str = "invalid_request_error", code: str | None = None, param=None, headers=None):
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header for a stream of unknown length (sizes 0xFFFFFFFF)."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", unknown) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", unknown)


class _AuthMiddleware:
    """Bearer key on every HTTP request and WebSocket upgrade (401 otherwise)."""

    def __init__(self, app, server: TTSServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.server.authorized(headers):
            return await self.app(scope, receive, send)
        self.server.metrics.errors.labels("unauthorized").inc()
        response = _error(
            401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        if scope["type"] == "http":
            return await response(scope, receive, send)
        if "websocket.http.response" in scope.get("extensions", {}):
            await receive()  # websocket.connect
            return await response(scope, receive, send)  # a plain HTTP 401 instead of the upgrade
        await receive()
        await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})


class _AudioResponse(Response):
    """Streams a :class:`SpeechStream` with chunked transfer; the client's disconnect cancels it.

    The status line waits for the first audio, so a request that fails before any audio is
    a 500 with a JSON error instead of a broken stream. A failure later, or a client that
    stops reading (``client_timeout``, or ``max_buffer_seconds`` of audio unread), ends the
    response without its final chunk: the client sees an incomplete body, not a short one.
    """

    def __init__(self, server: TTSServer, stream: SpeechStream, fmt: str) -> None:
        super().__init__(status_code=200)
        self.server = server
        self.stream = stream
        self.fmt = fmt

    async def __call__(self, scope, receive, send) -> None:
        stream, server = self.stream, self.server

        async def listen() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    stream.cancel()
                    return

        listener = asyncio.create_task(listen())
        outcome = "error"
        try:
            outcome = await self._stream(scope, receive, send)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            server.close_stream(stream, "http", outcome)

    async def _send(self, send, message) -> None:
        await asyncio.wait_for(send(message), self.server.config.client_timeout)

    async def _stream(self, scope, receive, send) -> str:
        stream, server = self.stream, self.server
        chunks = stream.audio()
        try:
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                first = b""
            except Exception as e:  # noqa: BLE001 - answered as a 500
                server.metrics.errors.labels("generation_failed").inc()
                logger.warning(f"server: speech failed before audio: {type(e).__name__}: {e}")
                await _error(500, f"generation failed: {e}", kind="server_error", code="generation_failed")(
                    scope, receive, send
                )
                return "error"
            if stream.cancelled and not first:
                return "cancelled"  # the client left before any audio
            server.first_audio(stream, "http")
            sr = stream._engine.model.sample_rate
            headers = [
                (b"content-type", FORMATS[self.fmt].encode()),
                (b"x-sample-rate", str(sr).encode()),
                (b"cache-control", b"no-store"),
            ]
            await self._send(send, {"type": "http.response.start", "status": 200, "headers": headers})
            head = _wav_header(sr) if self.fmt == "wav" else b""
            await self._send(send, {"type": "http.response.body", "body": head + first, "more_body": True})
            async for chunk in chunks:
                await self._send(send, {"type": "http.response.body", "body": chunk, "more_body": True})
            if stream.cancelled:
                return "cancelled"
            await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})
            return "ok"
        except (TimeoutError, SlowClientError) as e:
            server.metrics.errors.labels("slow_client").inc()
            logger.warning(f"server: client too slow, stream cut off: {e or 'send timed out'}")
            return "slow_client"
        except Exception as e:  # noqa: BLE001 - the stream is cut: the client sees an incomplete body
            server.metrics.errors.labels("generation_failed").inc()
            logger.warning(f"server: speech failed mid-stream: {type(e).__name__}: {e}")
            return "error"
        finally:
            stream.cancel()
            await chunks.aclose()


async def _read_body(request: HTTPRequest, limit: int) -> bytes | None:
    """The body, or ``None`` if it is over ``limit`` bytes (read no further than that)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return None
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            return None
    return bytes(body)


# ---------------------------------------------------------------------- WebSocket


@dataclass(eq=False)
class _Context:
    id: str
    stream: SpeechStream
    chunker: AdaptiveChunker
    voice: str
    chars: int = 0
    flushed: bool = False
    interrupted: bool = False
    task: asyncio.Task | None = None


class _Connection:
    """One WebSocket client: its contexts, one send at a time, every send bounded in time."""

    def __init__(self, server: TTSServer, ws: WebSocket) -> None:
        self.server = server
        self.ws = ws
        self.contexts: dict[str, _Context] = {}
        self._send_lock = asyncio.Lock()
        self._closed = False

    async def _send(self, message: dict | bytes) -> None:
        async with self._send_lock:
            if self._closed:
                return
            await self._send_now(message)

    async def _send_now(self, message: dict | bytes) -> None:
        timeout = self.server.config.client_timeout
        if isinstance(message, bytes):
            await asyncio.wait_for(self.ws.send_bytes(message), timeout)
        else:
            await asyncio.wait_for(self.ws.send_text(json.dumps(message)), timeout)

    async def error(self, code: str, message: str, context_id: str | None = None) -> None:
        self.server.metrics.errors.labels(code).inc()
        await self._send(protocol.error_event(code, message, context_id))

    async def run(self) -> None:
        engine = self.server.engine
        assert engine is not None
        await self._send(
            {
                "type": "ready",
                "model": self.server.config.model_name,
                "sample_rate": engine.model.sample_rate,
                "encoding": "pcm_s16le",
                "voices": list(self.server.voices),
            }
        )
        try:
            while not self._closed:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is not None:
                    await self._handle(message["text"])
                elif message.get("bytes") is not None:
                    await self.error("bad_message", "binary messages are not part of the protocol: send JSON text")
        except (WebSocketDisconnect, RuntimeError):
            pass
        except (TimeoutError, SlowClientError):
            await self._slow_client()
        finally:
            self._closed = True
            for ctx in list(self.contexts.values()):
                self._end(ctx, "cancelled")
                if ctx.task is not None:
                    ctx.task.cancel()

    async def _slow_client(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.server.metrics.errors.labels("slow_client").inc()
        logger.warning("server: WebSocket client too slow: closing its connection")
        for ctx in list(self.contexts.values()):
            self._end(ctx, "slow_client")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=1008, reason="client too slow"), 1.0)

    def _end(self, ctx: _Context, outcome: str) -> None:
        if self.contexts.get(ctx.id) is ctx:
            del self.contexts[ctx.id]
        self.server.close_stream(ctx.stream, "websocket", outcome)

    async def _handle(self, raw: str) -> None:
        try:
            message = protocol.parse_client_message(raw)
        except protocol.ProtocolError as e:
            ctx = self.contexts.get(e.context_id) if e.context_id else None
            if ctx is not None:
                self._end(ctx, "error")
            await self.error(e.code, str(e), e.context_id)
            return
        cid, kind = message["context_id"], message["type"]
        ctx = self.contexts.get(cid)
        if kind == "interrupt":
            if ctx is not None:
                ctx.interrupted = True
                self._end(ctx, "interrupted")
            await self._send({"type": "interrupted", "context_id": cid})
            return
        if ctx is None:
            if kind == "flush":
                return  # nothing open under that id: nothing to flush
            ctx = await self._open(cid, message)
            if ctx is None:
                return
        elif ctx.flushed:
            await self.error("context_busy", f"context {cid!r} was flushed and is still speaking", cid)
            return
        try:
            if kind == "speak":
                text = well_formed(message["text"])
                ctx.chars += len(text)
                if ctx.chars > self.server.config.max_chars:
                    self._end(ctx, "error")
                    await self.error("too_long", f"context text over {self.server.config.max_chars} characters", cid)
                    return
                for chunk in ctx.chunker.push(text):
                    self._push(ctx, chunk)
            if kind == "flush" or message.get("flush"):
                for chunk in ctx.chunker.flush():
                    self._push(ctx, chunk)
                ctx.flushed = True
                ctx.stream.end()
        except EngineClosedError as e:
            self._end(ctx, "error")
            await self.error("unavailable", str(e), cid)

    def _push(self, ctx: _Context, chunk: str) -> None:
        for piece in self.server.fit(chunk, ctx.voice):
            ctx.stream.push(piece)

    async def _open(self, cid: str, message: dict) -> _Context | None:
        if len(self.contexts) >= self.server.config.max_contexts:
            # One call speaks one turn at a time (two around a barge-in): a connection that
            # opens more would take the streams every other client shares.
            await self.error(
                "too_many_contexts", f"this connection already has {len(self.contexts)} contexts speaking; finish or interrupt one", cid
            )
            return None
        try:
            voice = self.server.resolve_voice(message.get("voice"))
            params = self.server.params(message)
        except UnknownVoiceError as e:
            await self.error("unknown_voice", str(e), cid)
            return None
        except ValueError as e:
            await self.error("bad_message", str(e), cid)
            return None
        try:
            stream = self.server.open_stream(voice, params)
        except EngineClosedError as e:
            await self.error("unavailable", str(e), cid)
            return None
        if stream is None:
            await self.error("busy", f"server at its limit of {self.server.config.max_streams} streams; retry shortly", cid)
            return None
        ctx = _Context(cid, stream, AdaptiveChunker(self.server.config.chunking), voice)
        self.contexts[cid] = ctx
        ctx.task = asyncio.create_task(self._speak(ctx))
        return ctx

    async def _speak(self, ctx: _Context) -> None:
        """Send one context's audio, then its done (or error) event."""
        stream = ctx.stream
        first = True
        try:
            async for pcm in stream.audio():
                async with self._send_lock:
                    if ctx.interrupted or self._closed:
                        return
                    if first:
                        self.server.first_audio(stream, "websocket")
                        first = False
                    await self._send_now(protocol.pack_audio(ctx.id, pcm))
            if ctx.interrupted or stream.cancelled:
                return
            seconds = stream.samples_out / stream._engine.model.sample_rate
            async with self._send_lock:
                if ctx.interrupted or self._closed:
                    return
                self._end(ctx, "ok")
                await self._send_now({"type": "done", "context_id": ctx.id, "audio_seconds": round(seconds, 3)})
        except (TimeoutError, SlowClientError):
            await self._slow_client()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - reported to the client as an error event
            if ctx.interrupted or self._closed:
                return
            self._end(ctx, "error")
            logger.warning(f"server: context {ctx.id!r} failed: {type(e).__name__}: {e}")
            with contextlib.suppress(Exception):
                await self.error("generation_failed", f"{type(e).__name__}: {e}", ctx.id)
        finally:
            if self.contexts.get(ctx.id) is ctx and (ctx.interrupted or self._closed or stream.cancelled):
                self._end(ctx, "cancelled")


# ---------------------------------------------------------------------- the app


def create_app(load: Callable[[], BatchedEngine], config: ServerConfig | None = None) -> FastAPI:
    """The server's ASGI app; ``load`` returns a started engine (called once, off the loop)."""
    config = config or ServerConfig()
    server = TTSServer(load, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(server.startup())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await server.shutdown()

    app = FastAPI(title="pipecat-localtts", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tts = server
    app.add_middleware(_AuthMiddleware, server=server)

    def unavailable():
        server.metrics.errors.labels("unavailable").inc()
        message = "model is still loading" if server.load_error is None else f"model failed to load: {server.load_error}"
        return _error(503, message, kind="server_error", code="unavailable", headers={"Retry-After": str(config.retry_after)})

    @app.get("/health")
    async def health():
        if server.ready:
            return {"status": "ok", "model": config.model_name}
        status = "loading" if server.load_error is None else "failed"
        body = {"status": status}
        if server.load_error is not None:
            body["error"] = str(server.load_error)
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(config.retry_after)})

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": config.model_name, "object": "model", "created": 0, "owned_by": "pipecat-localtts"}],
        }

    @app.post("/v1/audio/speech")
    async def speech(request: HTTPRequest):
        def bad(message: str, param: str | None = None, code: str | None = None, status: int = 400):
            server.metrics.errors.labels("bad_request" if status == 400 else "too_long").inc()
            return _error(status, message, param=param, code=code)

        body = await _read_body(request, config.max_body_bytes)
        if body is None:
            return bad(f"request body over {config.max_body_bytes} bytes", code="too_long", status=413)
        try:
            fields = json.loads(body)
        except (ValueError, RecursionError) as e:
            return bad(f"request body is not valid JSON: {e}", code="bad_json")
        if not isinstance(fields, dict):
            return bad("request body must be a JSON object", code="bad_json")
        if not server.ready:
            return unavailable()
        text = fields.get("input")
        if not isinstance(text, str) or not text.strip():
            return bad("'input' must be a non-empty string", "input")
        if len(text) > config.max_chars:
            return bad(f"'input' is {len(text)} characters, over this server's {config.max_chars}", "input", "too_long", 413)
        model = fields.get("model")
        if model is not None and model != config.model_name and model not in OPENAI_MODELS:
            return bad(f"unknown model {model!r}; this server serves {config.model_name!r}", "model", "model_not_found")
        fmt = fields.get("response_format") or "wav"
        if fmt not in FORMATS:
            return bad(f"response_format {fmt!r} is not supported; use one of: {', '.join(FORMATS)}", "response_format")
        stream_format = fields.get("stream_format")
        if stream_format not in (None, "audio"):
            return bad("only stream_format 'audio' is supported", "stream_format")
        speed = fields.get("speed")
        if speed is not None and (
            isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isclose(speed, 1.0)
        ):
            return bad("speed other than 1.0 is not supported by this model", "speed")
        try:
            voice = server.resolve_voice(fields.get("voice"))
        except UnknownVoiceError as e:
            return bad(str(e), "voice", "unknown_voice")
        try:
            params = server.params(fields)
        except (TypeError, ValueError) as e:
            return bad(str(e))
        texts = server.utterances(text, voice)
        if not texts:
            return bad("nothing to say: 'input' has no letters or digits", "input")
        try:
            stream = server.open_stream(voice, params)
        except EngineClosedError:
            return unavailable()
        if stream is None:
            server.metrics.errors.labels("busy").inc()
            return _error(
                503, f"server at its limit of {config.max_streams} concurrent streams; retry shortly",
                kind="server_error", code="busy", headers={"Retry-After": str(config.retry_after)},
            )
        try:
            for piece in texts:
                stream.push(piece)
            stream.end()
        except Exception as e:  # noqa: BLE001 - the engine refused (closing)
            server.close_stream(stream, "http", "error")
            return _error(503, str(e), kind="server_error", code="unavailable")
        return _AudioResponse(server, stream, fmt)

    @app.websocket("/v1/audio/stream")
    async def stream_ws(ws: WebSocket):
        if not server.ready:
            await ws.accept()
            await ws.send_text(json.dumps(protocol.error_event("unavailable", "the model is still loading")))
            await ws.close(code=1013, reason="loading")
            return
        await ws.accept()
        connection = _Connection(server, ws)
        try:
            await connection.run()
        finally:
            if ws.client_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await ws.close()

    return app

