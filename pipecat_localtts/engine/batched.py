"""The batched engine: one model, many requests, a token source and a codec thread.

:class:`BatchedEngine` is the front every caller uses (the Pipecat service, the CLI, the
server): it turns text into a :class:`~pipecat_localtts.engine.source.Job` (the model's
prompt ids, its token budget, a fresh frame parser), hands it to a token source, and turns
the tokens the source gives back into codec frames for the codec thread
(:class:`~pipecat_localtts.engine.codec_worker.CodecWorker`), which ends each request after
its audio. The default source is :class:`~pipecat_localtts.engine.local_lm.LocalBatchedLM`
(continuous batching in this process); a remote serving engine plugs in through the same
:class:`~pipecat_localtts.engine.source.TokenSource` seam.

It depends on the :class:`~pipecat_localtts.models.base.SpeechModel` and
:class:`~pipecat_localtts.codecs.base.StreamingCodec` interfaces only, knows nothing about
asyncio or Pipecat (a sink decides how audio reaches its consumer), and keeps no text of
finished requests.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from loguru import logger

from pipecat_localtts.engine import batch_sampling as bs
from pipecat_localtts.engine.codec_worker import CodecWorker
from pipecat_localtts.engine.local_lm import LocalBatchedLM
from pipecat_localtts.engine.request import AudioSink, NullSink, Request
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.engine.source import Job, TokenSource
from pipecat_localtts.errors import EngineClosedError, GenerationError
from pipecat_localtts.models.base import SpeechModel

__all__ = ["DEFAULT_MAX_BATCH", "BatchedEngine"]

#: Slots per engine when not given: enough for a busy CPU box, small enough to allocate
#: anywhere (``max_batch * (model.prompt_budget + max_tokens)`` cache positions).
DEFAULT_MAX_BATCH = {"cpu": 8, "cuda": 64}


class BatchedEngine:
    """Runs a speech model for many requests at once.

    Args:
        model: The loaded model (LM, tokenizer, codec), a :class:`SpeechModel`.
        max_batch: Requests generated together (``None``: per device, see
            :data:`DEFAULT_MAX_BATCH`); more wait in FIFO order.
        max_tokens: Room for generated tokens per request; requests are capped to it.
        frames_per_decode: Codec frames decoded per window after the first audio.
        codec_threads: CPU threads of the codec thread (``None``: on a CPU half of PyTorch's
            threads, at least one, so the LM and the codec each keep cores of their own: on 2
            cores that cut the batched step from ~29 to ~21 ms at 8 calls; on CUDA unused).
        codec_workers: Codec threads; each request is decoded on one of them (``None``: 2 on
            a CPU with at least 2 threads, where the decode is incremental and lock-free, so two
            requests' audio decodes at once: ×1.1–1.2 aggregate at 2 and 8 calls on 2 cores;
            1 on CUDA, where one thread batches the windows of all requests).
        source: Where the tokens come from (``None``: a :class:`LocalBatchedLM` on ``model.lm``
            with ``max_batch`` slots of ``model.prompt_budget + max_tokens`` positions).
    """

    def __init__(
        self,
        model: SpeechModel,
        *,
        max_batch: int | None = None,
        max_tokens: int = 2048,
        frames_per_decode: int = 1,
        codec_threads: int | None = None,
        codec_workers: int | None = None,
        source: TokenSource | None = None,
    ) -> None:
        self.model = model
        device = model.device
        self.max_batch = max_batch or DEFAULT_MAX_BATCH.get(device.type, 8)
        self.max_tokens = max_tokens
        self.prompt_budget = int(model.prompt_budget)
        self.frames_per_decode = frames_per_decode
        if codec_threads is None and device.type == "cpu":
            import torch

            codec_threads = max(1, torch.get_num_threads() // 2)
        self.codec_threads = codec_threads
        if codec_workers is None:
            import torch

            codec_workers = 2 if device.type == "cpu" and torch.get_num_threads() >= 2 else 1
        if codec_workers < 1:
            raise ValueError(f"codec_workers must be >= 1, got {codec_workers}")
        self.codec_workers = codec_workers
        self._layout = model.token_layout
        if source is None:
            source = LocalBatchedLM(
                model.lm, self._layout, max_batch=self.max_batch, max_len=self.prompt_budget + max_tokens, name=model.name
            )
        self.source = source
        self._lock = threading.Lock()
        self._codecs: list[CodecWorker] = []
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, warm_up: bool = True) -> None:
        """Start the token source and the codec thread (idempotent); blocking: call it off the loop.

        The warm-up runs one short utterance through prefill, the batched step, the sampler
        and the codec, so one-time kernel and allocator costs are paid now, not in the
        first call's time to first audio.
        """
        with self._lock:
            if self._closed:
                raise EngineClosedError("engine was closed")
            if self._started:
                return
            self._codecs = [
                CodecWorker(
                    self.model.codec,
                    frames_per_decode=self.frames_per_decode,
                    emit=self._emit,
                    finish=self._finish,
                    threads=self.codec_threads,
                    name=f"localtts-codec-{self.model.name}-{i}",
                )
                for i in range(self.codec_workers)
            ]
            self.source.start(self)
            self._started = True
        if warm_up:
            t0 = time.perf_counter()
            frames = 2 * self.model.codec.lookahead_frames + 2
            params = GenerationParams(seed=0, max_tokens=frames * self._layout.tokens_per_frame)
            req = self.submit("Warming up.", self.model.voices[0], params, NullSink())
            req.wait()
            if req.error is not None:
                raise GenerationError(f"engine warm-up failed: {req.error}") from req.error
            logger.info(f"engine: {self.model.name} warm ({time.perf_counter() - t0:.2f} s)")

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything, stop the threads; every request still open is ended."""
        with self._lock:
            self._closed = True
        leftovers = self.source.close(timeout)
        for job in leftovers:  # what the source did not end will never run: no one may wait forever
            if not job.req.done:
                self._end(job.req, "cancelled")
        for codec in self._codecs:
            codec.close(timeout)

    @property
    def running(self) -> bool:
        """Whether the token source is running."""
        return self._started and not self._closed and self.source.running

    @property
    def idle(self) -> bool:
        """Nothing generating or waiting, and no audio left to decode."""
        return not self.source.busy and all(codec.idle for codec in self._codecs)

    @property
    def max_len(self) -> int:
        """Positions per request: the prompt budget plus ``max_tokens``."""
        return self.prompt_budget + self.max_tokens

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return self.source.waiting

    @property
    def active(self) -> int:
        """Requests generating."""
        return self.source.active

    @property
    def steps(self) -> int:
        """Batched decode steps run (by a local source)."""
        return getattr(self.source, "steps", 0)

    @property
    def batch_sizes(self):
        """Rows of recent decode steps (a local source; empty otherwise)."""
        return getattr(self.source, "batch_sizes", ())

    # ------------------------------------------------------------------ requests

    def submit(self, text: str, voice: str, params: GenerationParams, sink: AudioSink) -> Request:
        """Queue an utterance; it starts as soon as the source has room.

        Raises:
            UnknownVoiceError: The model does not know ``voice``.
            ValueError: The prompt does not fit the model's ``prompt_budget``.
            EngineClosedError: The engine is not running.
        """
        prompt = self.model.build_prompt(text, voice)
        if len(prompt) > self.prompt_budget:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds the {self.prompt_budget}-token budget")
        cap = min(params.max_tokens, self.max_tokens)
        if self.model.max_context is not None:  # the positions the model was trained for
            cap = min(cap, self.model.max_context - len(prompt))
            if cap < self._layout.tokens_per_frame:
                raise ValueError(
                    f"prompt of {len(prompt)} tokens leaves no room for audio in the model's "
                    f"{self.model.max_context}-position context"
                )
        budget = self.model.token_budget(
            text,
            seconds_per_char=params.guard_seconds_per_char,
            min_seconds=params.guard_min_seconds,
            max_tokens=cap,
        )
        req = Request(
            text="",  # the engine keeps no text: it is in the prompt ids only
            prompt_ids=prompt,
            max_new_tokens=budget,
            params=params,
            sink=sink,
            voice=voice,
            sample_seed=bs.request_seed(params),
        )
        if self._closed or not self._started:
            raise EngineClosedError("engine is not running; call start() first")
        job = Job(req=req, parser=self.model.new_parser(), max_new=min(budget, self.max_tokens))
        self.source.submit(job)
        return req

    # ------------------------------------------------------------------ TokenSink (source thread)

    def on_token(self, job: Job, token: int) -> bool:
        """Record ``token``; hand a finished frame to the codec; say whether the job goes on."""
        req = job.req
        req.tokens.append(token)
        if token in self.model.stop_tokens:
            self._end_job(job, "stop")
            return False
        frame = job.parser.push(token)
        if frame is not None:
            self._codec_of(req).frame(req, frame)
        if len(req.tokens) >= job.max_new:
            self._end_job(job, "length")
            return False
        if req.cancelled:
            self._end_job(job, "cancelled")
            return False
        return True

    def on_end(self, job: Job, reason: str, error: BaseException | None = None) -> None:
        if error is not None:
            job.req.error = error
            reason = "error"
        self._end_job(job, reason)

    def _end_job(self, job: Job, reason: str) -> None:
        job.req.dropped_frames = job.parser.dropped_frames
        self._end(job.req, reason)

    def _end(self, req: Request, reason: str) -> None:
        """The LM is done with ``req``: the codec thread ends it after its audio."""
        req.t_lm_done = time.perf_counter()
        self._codec_of(req).end(req, reason)

    def _codec_of(self, req: Request) -> CodecWorker:
        """The codec thread of ``req`` (always the same one)."""
        return self._codecs[req.id % len(self._codecs)]

    # ------------------------------------------------------------------ codec thread

    def _emit(self, req: Request, pcm: np.ndarray) -> None:
        if pcm.size == 0:
            return
        if req.t_first_audio is None:
            req.t_first_audio = time.perf_counter()
        req.audio_samples += pcm.size
        req.sink.on_audio(pcm)

    def _finish(self, req: Request, reason: str) -> None:
        if req.done:
            return
        req.finish_reason = reason
        req.t_done = time.perf_counter()
        req._done.set()
        try:
            req.sink.on_done(req)
        except Exception:
            logger.exception(f"engine: sink of request {req.id} failed in on_done")
