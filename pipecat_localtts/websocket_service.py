"""``LocalTTSWebsocketService``: a Pipecat TTS service that speaks through ``pipecat-localtts serve``.

For bots without a GPU: the model runs on the server, shared by every bot; this service
streams the LLM's tokens to it over one WebSocket per call (the server's adaptive chunker
cuts them, so no sentence aggregation here), plays the audio back per context, and on an
``InterruptionFrame`` sends ``interrupt`` so the server stops within one decode step and no
stale audio plays. The protocol is :mod:`pipecat_localtts.server.protocol`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, StartFrame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, WebsocketTTSService
from pipecat.transcriptions.language import Language
from pipecat.utils.tracing.service_decorators import traced_tts
from websockets.protocol import State

from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.server.protocol import unpack_audio
from pipecat_localtts.validation import check_number, check_type

__all__ = ["LocalTTSWebsocketService", "LocalTTSWebsocketSettings", "remote_tts_from_env"]


@dataclass
class LocalTTSWebsocketSettings(TTSSettings):
    """Runtime settings of :class:`LocalTTSWebsocketService` (model, voice, language)."""


class LocalTTSWebsocketService(WebsocketTTSService):
    """Speaks through a ``pipecat-localtts serve`` server over its WebSocket protocol.

    Args:
        url: The server's WebSocket URL, ``ws://host:8000/v1/audio/stream`` (an ``http(s)://``
            base URL is completed to it).
        api_key: Sent as ``Authorization: Bearer KEY`` (the server's ``--api-key``); never logged.
        voice: Voice name (a model voice, or an alias the server accepts); ``None``: the
            server's default voice.
        params: Sampling sent with each context (temperature, top_p, top_k, repetition_penalty, seed,
            max_tokens); ``None``: the server's defaults. The max-token guard is the server's.
        connect_timeout: Seconds to open the connection and get the server's ``ready``.
        first_audio_timeout: Seconds a context may wait for the server's first audio (a busy
            server queues) before Pipecat's own end-of-context timeout may end it.
        reconnect_attempts: Reconnection attempts after the connection drops, with backoff
            between ``reconnect_backoff_min_wait`` and ``reconnect_backoff_max_wait`` seconds;
            after the last one the service reports a permanent error.
        settings: Pipecat settings delta (model/voice/language).
        **kwargs: Passed to Pipecat's ``TTSService`` (``sample_rate``: audio is resampled when
            it is not the server's rate).
    """

    Settings = LocalTTSWebsocketSettings
    _settings: LocalTTSWebsocketSettings

    def __init__(
        self,
        *,
        url: str,
        api_key: str | None = None,
        voice: str | None = None,
        params: GenerationParams | None = None,
        connect_timeout: float = 10.0,
        first_audio_timeout: float = 30.0,
        reconnect_attempts: int = 12,
        reconnect_backoff_min_wait: float = 0.5,
        reconnect_backoff_max_wait: float = 5.0,
        settings: LocalTTSWebsocketSettings | None = None,
        **kwargs: Any,
    ) -> None:
        check_type("url", url, str, "a ws:// or http:// URL (str)")
        if not url.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError(f"url must start with ws://, wss://, http:// or https://, got {url!r}")
        check_type("api_key", api_key, (str, type(None)), "a str or None")
        check_type("voice", voice, (str, type(None)), "a voice name (str) or None")
        check_type("params", params, (GenerationParams, type(None)), "a GenerationParams or None")
        for name, value in (("connect_timeout", connect_timeout), ("first_audio_timeout", first_audio_timeout)):
            check_number(name, value, "a finite number > 0")
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not isinstance(reconnect_attempts, int) or reconnect_attempts < 1:
            raise ValueError(f"reconnect_attempts must be an int >= 1, got {reconnect_attempts!r}")
        default_settings = self.Settings(model="pipecat-localtts", voice=voice, language=Language.EN)
        if settings is not None:
            default_settings.apply_update(settings)
        kwargs.setdefault("sample_rate", 24000)
        # A failed context is reported with its cause; Pipecat's silent-provider detector
        # must not write the service off after a few of them (a server restart, say).
        kwargs.setdefault("max_consecutive_zero_audio_contexts", 0)
        super().__init__(
            text_aggregation_mode=TextAggregationMode.TOKEN,  # the server chunks
            push_start_frame=True,
            push_stop_frames=True,
            settings=default_settings,
            **kwargs,
        )
        self._reconnect_backoff_min_wait = reconnect_backoff_min_wait
        self._reconnect_backoff_max_wait = reconnect_backoff_max_wait
        self._reconnect_attempts = reconnect_attempts
        if url.startswith("http"):
            url = "ws" + url[4:].rstrip("/") + "/v1/audio/stream"
        self._url = url
        self._api_key = api_key
        self._params = params
        self._connect_timeout = connect_timeout
        self._first_audio_timeout = first_audio_timeout
        self._receive_task: asyncio.Task | None = None
        self._keepalive: asyncio.Task | None = None
        self._server_rate: int | None = None
        # Contexts opened on the server: context id -> when we last heard of it (or sent it text).
        self._open: dict[str, float] = {}
        self._waiting_audio: set[str] = set()  # opened, no audio yet
        self._resamplers: dict[str, Any] = {}
        self._failed_contexts: set[str] = set()

    def can_generate_metrics(self) -> bool:
        """TTFB and usage metrics are supported."""
        return True

    # ------------------------------------------------------------------ connection

    async def start(self, frame: StartFrame) -> None:
        """Connect to the server (errors become an ``ErrorFrame``; turns retry the connection)."""
        await super().start(frame)
        await self._connect()

    async def _connect(self) -> None:
        await super()._connect()
        await self._connect_websocket()
        if self._websocket is not None and self._receive_task is None:
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))
        if self._keepalive is None:
            self._keepalive = self.create_task(self._keep_contexts_open(), name="localtts-first-audio")

    async def _disconnect(self) -> None:
        await super()._disconnect()
        for name in ("_receive_task", "_keepalive"):
            task = getattr(self, name)
            if task is not None:
                await self.cancel_task(task)
                setattr(self, name, None)
        await self._disconnect_websocket()

    async def _connect_websocket(self) -> None:
        try:
            if self._websocket is not None and self._websocket.state is State.OPEN:
                return
            self._websocket = await self._open_websocket()
            await self._call_event_handler("on_connected")
        except Exception as e:
            self._websocket = None
            await self.push_error(error_msg=f"{self}: cannot connect to {self._url}: {e}", exception=e)
            await self._call_event_handler("on_connection_error", f"{e}")

    async def _open_websocket(self):
        """Connect and read the server's ``ready`` event; raises ``ConnectionError`` if it refuses."""
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        websocket = await self._websocket_connect(
            self._url, additional_headers=headers, open_timeout=self._connect_timeout, max_size=None
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                ready = json.loads(await websocket.recv())
        except Exception:
            await websocket.close()
            raise
        if ready.get("type") != "ready":
            await websocket.close()
            raise ConnectionError(f"server refused the connection: {ready.get('message', ready)}")
        self._server_rate = int(ready["sample_rate"])
        if self._settings.voice is not None and self._settings.voice not in ready.get("voices", ()):
            logger.debug(f"{self}: voice {self._settings.voice!r} is not a model voice; the server may alias it")
        return websocket

    async def _reconnect_websocket(self, attempt_number: int) -> bool:
        await self._end_open_contexts("the connection to the TTS server was lost")
        await self._close_connection_contexts()
        await self._disconnect_websocket()
        self._websocket = await self._open_websocket()  # raises: the attempt failed
        await self._call_event_handler("on_connected")
        return True

    async def _try_reconnect(self, max_retries: int = 3, report_error=None) -> bool:
        return await super()._try_reconnect(max_retries=self._reconnect_attempts, report_error=report_error)

    async def _disconnect_websocket(self) -> None:
        try:
            await self.stop_all_metrics()
            if self._websocket is not None:
                await self._websocket.close()
        except Exception as e:
            logger.debug(f"{self}: error closing the connection: {e}")
        finally:
            self._websocket = None
            self._open.clear()
            self._waiting_audio.clear()
            await self._call_event_handler("on_disconnected")

    async def _end_open_contexts(self, why: str) -> None:
        """Contexts the server was still speaking are cut off: say so, once each."""
        for cid in list(self._open):
            if self.audio_context_available(cid):
                self._failed_contexts.add(cid)
                await self.push_error(error_msg=f"{self}: {why}; context {cid} was cut off")
                await self.remove_audio_context(cid)
        self._open.clear()
        self._waiting_audio.clear()

    # ------------------------------------------------------------------ receiving

    async def _receive_messages(self) -> None:
        try:
            async for message in self._websocket:
                if isinstance(message, bytes):
                    await self._on_audio(message)
                else:
                    await self._on_event(json.loads(message))
        finally:
            if not self._disconnecting and self._open:
                await self._end_open_contexts("the connection to the TTS server was lost")

    async def _on_audio(self, message: bytes) -> None:
        cid, pcm = unpack_audio(message)
        if cid not in self._open or not self.audio_context_available(cid):
            return  # an interrupted or finished context: never play it
        self._open[cid] = time.monotonic()
        self._waiting_audio.discard(cid)
        pcm = self._resample(cid, pcm)
        if pcm:
            frame = TTSAudioRawFrame(audio=pcm, sample_rate=self.sample_rate, num_channels=1, context_id=cid)
            await self.append_to_audio_context(cid, frame)

    async def _on_event(self, event: dict) -> None:
        kind, cid = event.get("type"), event.get("context_id")
        if kind == "done":
            if cid in self._open and self.audio_context_available(cid):
                tail = self._resample(cid, b"", last=True)
                if tail:
                    frame = TTSAudioRawFrame(audio=tail, sample_rate=self.sample_rate, num_channels=1, context_id=cid)
                    await self.append_to_audio_context(cid, frame)
                await self.remove_audio_context(cid)
            self._forget(cid)
        elif kind == "error":
            message = f"{self}: server error {event.get('code')}: {event.get('message')}"
            logger.warning(message)
            if cid is not None and cid in self._open:
                self._forget(cid)
                if self.audio_context_available(cid):
                    self._failed_contexts.add(cid)
                    await self.remove_audio_context(cid)
            await self.push_error(error_msg=message)
        # "interrupted" needs nothing: the context was dropped when it was interrupted.

    def _forget(self, cid: str) -> None:
        self._open.pop(cid, None)
        self._waiting_audio.discard(cid)
        self._resamplers.pop(cid, None)

    def _resample(self, cid: str, pcm: bytes, *, last: bool = False) -> bytes:
        if self._server_rate is None or self._server_rate == self.sample_rate:
            return pcm
        import numpy as np
        import soxr

        resampler = self._resamplers.get(cid)
        if resampler is None:
            resampler = self._resamplers[cid] = soxr.ResampleStream(
                self._server_rate, self.sample_rate, 1, dtype="int16"
            )
        return resampler.resample_chunk(np.frombuffer(pcm, "<i2"), last=last).astype("<i2").tobytes()

    async def _keep_contexts_open(self) -> None:
        """Keep a context that waits for its first audio from being ended by Pipecat's
        end-of-context timeout, for up to ``first_audio_timeout`` (a busy server queues)."""
        while True:
            await asyncio.sleep(max(0.05, self._stop_frame_timeout_s / 3))
            now = time.monotonic()
            for cid in list(self._waiting_audio):
                if now - self._open.get(cid, 0.0) < self._first_audio_timeout:
                    self._refresh_audio_context(cid)

    # ------------------------------------------------------------------ sending

    async def _send(self, message: dict) -> None:
        if self._websocket is None or self._websocket.state is not State.OPEN:
            raise ConnectionError(f"not connected to {self._url}")
        await self._websocket.send(json.dumps(message))

    def _context_settings(self) -> dict[str, Any]:
        # No voice: the server's default (its --voice, or the model's first).
        settings: dict[str, Any] = {} if self._settings.voice is None else {"voice": str(self._settings.voice)}
        if self._params is not None:
            p = self._params
            settings.update(
                temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, repetition_penalty=p.repetition_penalty
            )
            settings["max_tokens"] = p.max_tokens
            if p.seed is not None:
                settings["seed"] = p.seed
        return settings

    @traced_tts
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Send a piece of the turn's text; its audio comes back on the receive task."""
        if self._websocket is None or self._websocket.state is not State.OPEN:
            await self._connect()
        message: dict[str, Any] = {"type": "speak", "context_id": context_id, "text": text}
        opening = context_id not in self._open
        if opening:
            message.update(self._context_settings())
        try:
            await self._send(message)
        except Exception as e:
            self._failed_contexts.add(context_id)
            yield ErrorFrame(error=f"{self}: cannot send to the TTS server: {e}", exception=e)
            return
        now = time.monotonic()
        self._open[context_id] = now
        if opening:
            self._waiting_audio.add(context_id)
        await self.start_tts_usage_metrics(text)
        yield None

    async def flush_audio(self, context_id: str | None = None) -> None:
        """End of the turn's text: the server speaks what it holds, then says ``done``."""
        cid = context_id or self.get_active_audio_context_id()
        if cid is None or cid not in self._open:
            return
        try:
            await self._send({"type": "flush", "context_id": cid})
        except Exception as e:
            await self.push_error(error_msg=f"{self}: cannot flush context {cid}: {e}", exception=e)

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """Barge-in: the server stops this context within one decode step."""
        if context_id in self._open:
            self._forget(context_id)
            try:
                await self._send({"type": "interrupt", "context_id": context_id})
            except Exception as e:
                logger.debug(f"{self}: interrupt not sent ({e}); the connection is gone anyway")
        self._failed_contexts.discard(context_id)
        await super().on_audio_context_interrupted(context_id)

    async def _record_context_audio_outcome(self, context_id: str, received_audio: bool) -> None:
        # A context whose failure was reported with its cause needs no second, vaguer error.
        if context_id in self._failed_contexts:
            self._failed_contexts.discard(context_id)
            return
        await super()._record_context_audio_outcome(context_id, received_audio)


#: The environment variables that switch a bot from an in-process model to a server.
SERVER_URL_ENV = "LOCALTTS_SERVER_URL"
SERVER_KEY_ENV = "LOCALTTS_API_KEY"


def remote_tts_from_env(
    *, voice: str | None = None, params: GenerationParams | None = None, env: Mapping[str, str] | None = None, **kwargs: Any
) -> LocalTTSWebsocketService | None:
    """A :class:`LocalTTSWebsocketService` for ``$LOCALTTS_SERVER_URL`` (key ``$LOCALTTS_API_KEY``),
    or ``None`` when the variable is unset: the examples' one switch from an in-process model
    to a shared server."""
    env = os.environ if env is None else env
    url = env.get(SERVER_URL_ENV) or None
    if url is None:
        return None
    return LocalTTSWebsocketService(url=url, api_key=env.get(SERVER_KEY_ENV) or None, voice=voice, params=params, **kwargs)
