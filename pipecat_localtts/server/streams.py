"""One stream of speech the server sends: utterances spoken in order, audio bounded in memory.

A :class:`SpeechStream` is what one HTTP speech request or one WebSocket context is on the
engine: texts (chunks) pushed as they come, each an engine request, the next one queued while
the current one speaks so the engine goes straight on to it. Audio comes back on the engine's
codec thread and is handed to the event loop; what the client has not taken yet is counted,
and a stream whose buffered audio goes over its cap is cancelled (a client that stops reading
cannot grow the server's memory). Everything here but the sinks runs on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from pipecat_localtts.audio import EdgeFade
from pipecat_localtts.engine.batched import BatchedEngine
from pipecat_localtts.engine.request import Request
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.errors import GenerationError

__all__ = ["SlowClientError", "SpeechStream", "to_pcm16"]


class SlowClientError(GenerationError):
    """The client let more audio pile up than the stream may buffer."""


def to_pcm16(pcm: np.ndarray) -> bytes:
    """float32 audio in [-1, 1] as 16-bit little-endian PCM."""
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


@dataclass(eq=False)
class _Utterance:
    text: str
    request: Request | None = None
    pieces: deque = field(default_factory=deque)
    ended: bool = False
    fade: EdgeFade | None = None


class _LoopSink:
    """Engine sink of one utterance: hands audio to the loop (codec thread → loop)."""

    def __init__(self, stream: SpeechStream, utt: _Utterance) -> None:
        self._stream = stream
        self._utt = utt

    def _post(self, fn: Callable, *args) -> None:
        try:
            self._stream._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is gone: nobody is listening
            if self._utt.request is not None:
                self._utt.request.cancel()

    def on_audio(self, pcm: np.ndarray) -> None:
        self._post(self._stream._on_audio, self._utt, pcm)

    def on_done(self, request: Request) -> None:
        self._post(self._stream._on_done, self._utt)


class SpeechStream:
    """Speech for one client stream (an HTTP request, a WebSocket context).

    Args:
        engine: The running engine.
        voice: Voice of every utterance.
        params: Sampling of every utterance (a seed makes each utterance reproducible).
        max_buffer_samples: Audio (samples) the stream may hold that its client has not
            taken; over it the stream is cancelled and :meth:`audio` raises
            :class:`SlowClientError`.
        fade_samples: Fade at each utterance's edges (see :class:`~pipecat_localtts.audio.EdgeFade`).
        on_request: Called with each engine request when it is submitted (metrics, logs).
    """

    def __init__(
        self,
        engine: BatchedEngine,
        voice: str,
        params: GenerationParams,
        *,
        max_buffer_samples: int,
        fade_samples: int = 0,
        on_request: Callable[[Request], None] | None = None,
    ) -> None:
        self._engine = engine
        self._voice = voice
        self._params = params
        self._max_buffer = max_buffer_samples
        self._fade_samples = fade_samples
        self._on_request = on_request
        self._loop = asyncio.get_running_loop()
        self._utterances: deque[_Utterance] = deque()  # not yet fully read, in order
        self._ended = False  # no more text will come
        self._cancelled = False
        self._overflow = False
        self._wake = asyncio.Event()
        self.buffered = 0  # samples waiting for the client
        self.peak_buffered = 0  # the most that ever waited
        self.largest_piece = 0  # samples of the largest piece the engine handed over
        self.samples_out = 0  # samples handed to the client
        self.requests: list[Request] = []
        self.t_start = time.perf_counter()
        self.t_first_audio: float | None = None

    # ------------------------------------------------------------------ text in

    def push(self, text: str) -> None:
        """One more utterance (a chunk whose prompt fits the engine)."""
        if self._ended or self._cancelled:
            raise RuntimeError("stream already ended")
        self._utterances.append(_Utterance(text))
        self._submit_ahead()

    def end(self) -> None:
        """No more text: the stream ends after the last utterance's audio."""
        self._ended = True
        self._wake.set()

    def cancel(self) -> None:
        """Stop now: every request of the stream is cancelled (within one decode step)."""
        self._cancelled = True
        for utt in self._utterances:
            if utt.request is not None:
                utt.request.cancel()
        self._wake.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def finished(self) -> bool:
        """Ended and every utterance read (or cancelled)."""
        return self._cancelled or (self._ended and not self._utterances)

    def _submit_ahead(self) -> None:
        """Keep the current utterance and the next one at the engine."""
        for i, utt in enumerate(self._utterances):
            if i > 1:
                break
            if utt.request is None and not self._cancelled:
                utt.request = self._engine.submit(utt.text, self._voice, self._params, _LoopSink(self, utt))
                self.requests.append(utt.request)
                if self._on_request is not None:
                    self._on_request(utt.request)

    # ------------------------------------------------------------------ engine → loop

    def _on_audio(self, utt: _Utterance, pcm: np.ndarray) -> None:
        if self._cancelled:
            return
        utt.pieces.append(pcm)
        self.buffered += pcm.size
        self.peak_buffered = max(self.peak_buffered, self.buffered)
        self.largest_piece = max(self.largest_piece, pcm.size)
        if self.buffered > self._max_buffer:
            self._overflow = True
            self.cancel()
        self._wake.set()

    def _on_done(self, utt: _Utterance) -> None:
        utt.ended = True
        self._wake.set()

    # ------------------------------------------------------------------ audio out

    async def audio(self) -> AsyncIterator[bytes]:
        """The stream's audio as 16-bit PCM, utterance after utterance, until it ends.

        Raises:
            SlowClientError: The buffered audio went over its cap (the stream is cancelled).
            GenerationError / EngineClosedError / ...: An utterance failed (the error of its request).
        """
        while True:
            if self._overflow:
                raise SlowClientError(
                    f"client fell {self._max_buffer / self._engine.model.sample_rate:.0f} s of audio behind"
                )
            if self._cancelled or not self._utterances and self._ended:
                return
            if not self._utterances:
                self._wake.clear()
                await self._wake.wait()
                continue
            utt = self._utterances[0]
            if utt.fade is None:
                utt.fade = EdgeFade(self._fade_samples)
            fade = utt.fade
            if utt.pieces:
                pieces = list(utt.pieces)
                utt.pieces.clear()
                n = sum(p.size for p in pieces)
                self.buffered -= n
                pcm = fade.push(np.concatenate(pieces) if len(pieces) > 1 else pieces[0])
                if pcm.size:
                    yield self._out(pcm)
                continue
            if utt.ended:
                request = utt.request
                assert request is not None
                if request.error is not None:
                    self.cancel()
                    raise request.error
                tail = fade.finish()
                self._utterances.popleft()
                self._submit_ahead()
                if tail.size:
                    yield self._out(tail)
                continue
            self._wake.clear()
            await self._wake.wait()

    def _out(self, pcm: np.ndarray) -> bytes:
        if self.t_first_audio is None:
            self.t_first_audio = time.perf_counter()
        self.samples_out += pcm.size
        return to_pcm16(pcm)
