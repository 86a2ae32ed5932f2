"""The codec worker: turns the frames of many requests into PCM on a thread of its own.

The language model thread hands each complete frame to the worker and goes straight on to
its next decode step, so codec work overlaps LM work instead of adding to it.

Each turn of the worker takes EVERYTHING that is waiting (frames and ends of any number of
requests) into the requests' streams, then decodes due windows. While the worker is busy,
the frames of every request pile up in its stream, so the next window of that request holds
all of them: a window's context frames (three on each side for SNAC) are paid once per
window, not once per frame, and the worse the load, the bigger the windows (adaptive
amortisation). Which windows go first:

* a request's FIRST window before any other (its time to first audio);
* a later window only when it is worth it: the request's audio is about to run out (less
  than ``low_water_s`` ahead of real time), or ``big_window`` frames are due, or the request
  has ended. A request comfortably ahead, or already behind real time (an overloaded
  machine, where bigger windows are what lets everybody catch up), waits for a big window,
  so context frames are decoded less often;
* on a CPU each request is decoded incrementally (``SNACCodec.incremental_stream``: every
  layer keeps the tail of its input, nothing is recomputed, about half the work of windows;
  the first audio needs one frame less) by the same rules, all of its waiting frames at once;
* then, on a GPU, all due windows in one batched call (``SNACCodec.decode_windows``: one
  forward pass per window length, each row with its own noise positions); on a CPU, where a
  batched convolution costs the sum of its rows, one window at a time, the stream with the
  least audio ahead of real time first, so a newly due first window never waits behind a
  whole round.

A request ends on the worker, after its last audio (``end``): that keeps "audio, then done"
ordered for the sink. A cancelled request's waiting frames are dropped; a decode already
running finishes first (it cannot be interrupted), but the LM thread is free at once. A
failing window fails its own request only.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from loguru import logger

from pipecat_localtts.errors import GenerationError

if TYPE_CHECKING:
    from pipecat_localtts.codecs.base import CodecStream, CodecWindow, StreamingCodec
    from pipecat_localtts.engine.request import Request

_FRAME, _END = "frame", "end"
_STOP = object()


@dataclass(eq=False)
class _Job:
    """A request the worker has frames of."""

    req: Request
    stream: CodecStream
    end_reason: str | None = None  # set when the LM is done with it
    flushing: bool = False  # its stream was ended: the last windows are due

    def dropped(self) -> bool:
        """Nothing more of it will be decoded (cancelled or failed)."""
        return self.req.cancelled or self.req.error is not None

    def ahead(self, now: float, sample_rate: int) -> float:
        """Seconds of audio emitted beyond the wall time since its first audio."""
        first = self.req.t_first_audio
        if first is None:
            return 0.0
        return self.stream.samples_emitted / sample_rate - (now - first)


class CodecWorker:
    """Decodes the frames of engine requests on a dedicated thread.

    Args:
        codec: The codec (shared with nothing else that decodes concurrently).
        frames_per_decode: Minimum frames per window once audio flows (see ``SNACStream``).
        emit: Called on the worker thread with each piece of audio of a request.
        finish: Called on the worker thread when a request has ended, with its reason.
        threads: CPU threads for codec work on this thread (``None``: PyTorch's default).
        batch_windows: Decode all due windows of all requests in one batched call (``None``:
            on a GPU only; see the module docstring).
        incremental: Decode each request incrementally (the codec's ``incremental_stream``:
            no recomputed context, about half the work) instead of in windows (``None``: when
            windows are not batched, i.e. on a CPU, and the codec has it).
        big_window: Frames due at which a window is decoded whatever the request's timing.
        low_water_s: Audio ahead of real time below which a request's due frames are
            decoded at once.
    """

    def __init__(
        self,
        codec: StreamingCodec,
        *,
        frames_per_decode: int,
        emit: Callable[[Request, np.ndarray], None],
        finish: Callable[[Request, str], None],
        threads: int | None = None,
        name: str = "localtts-codec",
        batch_windows: bool | None = None,
        big_window: int = 12,
        low_water_s: float = 0.4,
        incremental: bool | None = None,
    ) -> None:
        self.codec = codec
        self.frames_per_decode = frames_per_decode
        self.batch_windows = codec.device.type == "cuda" if batch_windows is None else bool(batch_windows)
        if incremental is None:
            incremental = not self.batch_windows and hasattr(codec, "incremental_stream")
        self.incremental = bool(incremental)
        self.big_window = max(1, int(big_window), int(frames_per_decode))
        self.low_water_s = float(low_water_s)
        self._emit = emit
        self._finish = finish
        self._threads = threads
        self._queue: queue.Queue[Any] = queue.Queue()
        self._jobs: dict[int, _Job] = {}  # by request id, in arrival order
        self.windows = 0  # windows decoded
        self.decode_calls = 0  # batched codec calls made
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
        """Nothing waiting, nothing being decoded and no request unfinished."""
        return self._queue.unfinished_tasks == 0 and not self._jobs

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
        stopping = False
        while True:
            due, wake = self._due()
            # Wait for input only when there is nothing to decode (or not yet worth it).
            if not due and not stopping:
                try:
                    stopping |= self._take(self._queue.get(timeout=wake))
                except queue.Empty:
                    pass
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                stopping |= self._take(item)
            self._finish_ended()
            due, _ = self._due()
            if due:
                self._decode(self._choose(due), cuda_stream)
                self._finish_ended()
            elif stopping:
                for job in list(self._jobs.values()):  # never ended by the LM: end them now
                    self._jobs.pop(job.req.id, None)
                    self._finish(job.req, "error" if job.req.error is not None else "cancelled")
                return

    def _take(self, item: Any) -> bool:
        """Put one queue item into the jobs; True for the stop marker."""
        try:
            if item is _STOP:
                return True
            kind, req, payload = item
            job = self._jobs.get(req.id)
            if kind == _FRAME:
                if req.cancelled or req.error is not None:
                    return False  # frames nobody will hear
                if job is None:
                    job = self._jobs[req.id] = _Job(req, self._new_stream())
                if job.end_reason is None:
                    try:
                        job.stream.feed(np.asarray([payload], dtype=np.int64))
                    except Exception as e:
                        self._fail(job, e)
            else:
                if job is None:  # no audio at all: end it now
                    job = self._jobs[req.id] = _Job(req, self._new_stream())
                job.end_reason = payload
                if payload in ("stop", "length") and not job.dropped():
                    job.stream.end()  # the last frames become due, with the context there is
                    job.flushing = True
            return False
        finally:
            self._queue.task_done()

    def _new_stream(self) -> Any:
        if self.incremental:
            return self.codec.incremental_stream()  # type: ignore[attr-defined]
        return self.codec.stream(frames_per_decode=self.frames_per_decode)

    def _due(self) -> tuple[list[tuple[_Job, CodecWindow | None]], float | None]:
        """Every job's next window, for the jobs whose window is due and worth decoding now;
        and how long to wait at most for input before a held-back window becomes worth it
        (``None``: nothing held back)."""
        out = []
        spare = []  # first frames that cannot give audio yet: decoded only when nothing else is due
        wake: float | None = None
        now = time.perf_counter()
        rate = self.codec.sample_rate
        for job in self._jobs.values():
            if job.dropped():
                continue
            stream = job.stream
            if stream.frames_due == 0 and not (self.incremental and stream.has_work):
                continue
            if not (job.flushing or stream.samples_emitted == 0 or stream.frames_due >= self.big_window):
                ahead = job.ahead(now, rate)
                if ahead < 0 or ahead >= self.low_water_s:  # behind: wait for a big window
                    if ahead >= self.low_water_s:
                        until = ahead - self.low_water_s
                        wake = until if wake is None else min(wake, until)
                    continue
            if self.incremental:  # all fed frames in one incremental pass
                early = stream.samples_emitted == 0 and stream.frames_due < stream.first_audio_frames
                (spare if early and not job.flushing else out).append((job, None))
                continue
            window = stream.pending_window()
            if window is not None:
                out.append((job, window))
        if wake is not None:
            wake = min(max(wake, 0.002), 0.25)
        return out or spare, wake

    def _choose(self, due: list[tuple[_Job, CodecWindow]]) -> list[tuple[_Job, CodecWindow]]:
        """The windows to decode now (see the module docstring)."""
        firsts = [d for d in due if d[0].stream.samples_emitted == 0]
        pool = firsts or due
        if self.batch_windows:
            return pool
        now = time.perf_counter()
        rate = self.codec.sample_rate
        return [min(pool, key=lambda d: d[0].ahead(now, rate))]

    def _decode(self, chosen: list[tuple[_Job, CodecWindow | None]], cuda_stream: Any) -> None:
        if self.incremental:
            for job, _ in chosen:
                self._decode_incremental(job)
            return
        t0 = time.perf_counter()
        try:
            if cuda_stream is not None:
                with torch.cuda.stream(cuda_stream):
                    audio = self.codec.decode_windows([w for _, w in chosen])
            else:
                audio = self.codec.decode_windows([w for _, w in chosen])
            self.decode_calls += 1
        except Exception as e:
            if len(chosen) == 1:
                self._fail(chosen[0][0], e)
                return
            for one in chosen:  # find the culprit(s): each window alone
                self._decode([one], cuda_stream)
            return
        seconds = (time.perf_counter() - t0) / len(chosen)
        self.windows += len(chosen)
        for (job, _), pcm in zip(chosen, audio, strict=True):
            req = job.req
            req.codec_seconds += seconds
            try:
                out = job.stream.accept(pcm)
            except Exception as e:
                self._fail(job, e)
                continue
            if out.size:
                if req.t_first_window is None:
                    req.t_first_window = t0
                self._emit(req, out)

    def _decode_incremental(self, job: _Job) -> None:
        req = job.req
        t0 = time.perf_counter()
        try:
            out = job.stream.decode_pending()
        except Exception as e:
            self._fail(job, e)
            return
        self.windows += 1
        self.decode_calls += 1
        req.codec_seconds += time.perf_counter() - t0
        if out.size:
            if req.t_first_window is None:
                req.t_first_window = t0
            self._emit(req, out)

    def _fail(self, job: _Job, e: BaseException) -> None:
        req = job.req
        logger.opt(exception=e).error(f"codec: request {req.id} failed")
        req.error = GenerationError(f"codec failed: {type(e).__name__}: {e}")
        req.error.__cause__ = e
        req.cancel()  # the LM stops generating frames nobody can hear

    def _finish_ended(self) -> None:
        """End the jobs the LM is done with whose audio is all out (or that were dropped)."""
        for job in [j for j in self._jobs.values() if j.end_reason is not None]:
            if job.dropped() or not job.flushing or job.stream.finished:
                reason = "error" if job.req.error is not None else job.end_reason
                self._jobs.pop(job.req.id, None)  # idle before the sink hears "done"
                self._finish(job.req, reason)
