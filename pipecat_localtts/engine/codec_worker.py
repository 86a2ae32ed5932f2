"""The codec worker: turns frames into PCM on a thread of its own.

The language model thread hands each complete frame to the worker and goes straight on to
its next decode step, so codec work overlaps LM work instead of adding to it. When the LM is
ahead, several frames of a request are waiting by the time the worker gets to them; they are
decoded in one window, which amortises the window's context frames (adaptive batching).

A request ends on the worker, after its last audio (``end``): that keeps "audio, then done"
ordered for the sink. A cancelled request's waiting frames are dropped; a decode already
running finishes first (it cannot be interrupted), but the LM thread is free at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from loguru import logger

from pipecat_localtts.errors import GenerationError

if TYPE_CHECKING:
    from pipecat_localtts.codecs.snac import SNACCodec, SNACStream
    from pipecat_localtts.engine.request import Request

_FRAME, _END = "frame", "end"
_STOP = object()


class CodecWorker:
    """Decodes the frames of engine requests on a dedicated thread.

    Args:
        codec: The codec (shared with nothing else that decodes concurrently).
        frames_per_decode: Minimum frames per window once audio flows (see ``SNACStream``).
        emit: Called on the worker thread with each piece of audio of a request.
        finish: Called on the worker thread when a request has ended, with its reason.
        threads: CPU threads for codec work on this thread (``None``: PyTorch's default).
    """

    def __init__(
        self,
        codec: SNACCodec,
        *,
        frames_per_decode: int,
        emit: Callable[[Request, np.ndarray], None],
        finish: Callable[[Request, str], None],
        threads: int | None = None,
        name: str = "localtts-codec",
    ) -> None:
        self.codec = codec
        self.frames_per_decode = frames_per_decode
        self._emit = emit
        self._finish = finish
        self._threads = threads
        self._queue: queue.Queue[Any] = queue.Queue()
        self._streams: dict[int, SNACStream] = {}
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ LM thread side

    def frame(self, req: Request, frame: tuple[int, ...]) -> None:
        """One complete frame (canonical codec order) of ``req``."""
        self._queue.put((_FRAME, req, frame))

    def end(self, req: Request, reason: str) -> None:
        """``req`` has no more frames; finish it after its audio (flushed unless cancelled)."""
        self._queue.put((_END, req, reason))

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing being decoded."""
        return not self._busy and self._queue.empty()

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued (cancelled requests are only ended), then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        if self._threads:
            torch.set_num_threads(self._threads)
        cuda_stream = None
        if self.codec.device.type == "cuda":
            cuda_stream = torch.cuda.Stream(self.codec.device)  # overlaps the LM's stream
        carry: Any = None
        while True:
            item = carry if carry is not None else self._queue.get()
            carry = None
            if item is _STOP:
                return
            self._busy = True
            try:
                kind, req, payload = item
                if kind == _FRAME:
                    frames = [payload]
                    # Frames of the same request already waiting join this window.
                    while True:
                        try:
                            nxt = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if nxt is not _STOP and nxt[0] == _FRAME and nxt[1] is req:
                            frames.append(nxt[2])
                        else:
                            carry = nxt
                            break
                    self._decode(req, frames, cuda_stream)
                else:
                    self._end(req, payload, cuda_stream)
            finally:
                self._busy = carry is not None

    def _stream(self, req: Request) -> SNACStream:
        stream = self._streams.get(req.id)
        if stream is None:
            stream = self._streams[req.id] = self.codec.stream(frames_per_decode=self.frames_per_decode)
        return stream

    def _timed(self, req: Request, work: Callable[[], np.ndarray], cuda_stream: Any) -> None:
        t0 = time.perf_counter()
        if cuda_stream is not None:
            with torch.cuda.stream(cuda_stream):
                pcm = work()
        else:
            pcm = work()
        req.codec_seconds += time.perf_counter() - t0
        if pcm.size:
            if req.t_first_window is None:
                req.t_first_window = t0
            self._emit(req, pcm)

    def _decode(self, req: Request, frames: list[tuple[int, ...]], cuda_stream: Any) -> None:
        if req.cancelled or req.error is not None:
            return
        stream = self._stream(req)
        batch = np.asarray(frames, dtype=np.int64)  # [k, codes_per_frame]
        try:
            self._timed(req, lambda: stream.push(batch), cuda_stream)
        except Exception as e:
            logger.exception(f"codec: request {req.id} failed")
            req.error = GenerationError(f"codec failed: {type(e).__name__}: {e}")
            req.error.__cause__ = e
            req.cancel()  # the LM stops generating frames nobody can hear

    def _end(self, req: Request, reason: str, cuda_stream: Any) -> None:
        stream = self._streams.pop(req.id, None)
        if req.error is not None:
            reason = "error"
        elif reason in ("stop", "length") and stream is not None:
            try:
                self._timed(req, stream.flush, cuda_stream)
            except Exception as e:
                logger.exception(f"codec: request {req.id} failed at flush")
                req.error = GenerationError(f"codec failed: {type(e).__name__}: {e}")
                req.error.__cause__ = e
                reason = "error"
        # Not busy any more before the sink hears "done" (``carry`` is empty after an end).
        self._busy = False
        self._finish(req, reason)
