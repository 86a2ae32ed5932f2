"""The generation engine: one model, requests in, audio out.

The engine owns the language model, its KV cache and the codec, and touches them only on its
own threads: one for the LM, one for the codec (:mod:`codec_worker`), so decoding audio
overlaps the next LM steps. Callers ``submit()`` a request (text + voice + parameters + a
sink) from any thread; the engine runs prefill, then one decode step at a time, parses tokens
into codec frames, and the codec thread decodes frames to PCM as they complete and hands each
piece to the request's sink.
Cancellation is a flag checked before every model step, so a cancelled request runs at most
one more step and the engine moves straight on to the next request.

It knows nothing about asyncio or Pipecat: the sink decides how audio reaches its consumer
(a blocking queue here, the event loop in the service). Requests are plain objects with their
own state (tokens, parser, codec stream), so a later scheduler can run many of them in one
batched decode step; today they run one after another in submission order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque

import numpy as np
import torch
from loguru import logger

from pipecat_localtts.engine.codec_worker import CodecWorker
from pipecat_localtts.engine.lm import CausalLM
from pipecat_localtts.engine.request import AudioSink, BlockingSink, NullSink, Request
from pipecat_localtts.engine.sampling import (
    GenerationParams,
    apply_repetition_penalty,
    make_generator,
    sample_token,
)
from pipecat_localtts.errors import EngineClosedError, GenerationError
from pipecat_localtts.models.orpheus import OrpheusModel, slot_token_range

# Request and the sinks live in request.py; they are re-exported here for callers.
__all__ = ["PROMPT_BUDGET", "AudioSink", "BlockingSink", "NullSink", "Request", "TTSEngine"]

PROMPT_BUDGET = 512  # cache room reserved for the prompt, in tokens


class TTSEngine:
    """Runs an Orpheus-style speech model on a dedicated thread.

    Args:
        model: The loaded model (LM, tokenizer, codec).
        max_tokens: Cache room for generated tokens; requests are capped to it.
        frames_per_decode: Codec frames decoded per window after the first audio.
        compile: Compile the one-token step (``None``: on CUDA only).
        compile_backend: ``torch.compile`` backend ("inductor"; "eager" for tracing tests).
        restrict_head: With constrained sampling, compute only the logits of the tokens valid
            at the frame slot (the same values, a fraction of the work). False runs the
            model's full output layer every step.
        codec_threads: CPU threads of the codec thread (``None``: PyTorch's default).
    """

    def __init__(
        self,
        model: OrpheusModel,
        *,
        max_tokens: int = 2048,
        frames_per_decode: int = 1,
        compile: bool | None = None,
        compile_backend: str = "inductor",
        restrict_head: bool = True,
        codec_threads: int | None = None,
    ) -> None:
        self.model = model
        self.restrict_head = restrict_head
        self.codec_threads = codec_threads
        self._codec: CodecWorker | None = None
        self.max_tokens = max_tokens
        self.frames_per_decode = frames_per_decode
        self._lm = CausalLM(
            model.lm,
            max_len=PROMPT_BUDGET + max_tokens,
            compile=compile,
            compile_backend=compile_backend,
        )
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._active: Request | None = None
        self._closed = False
        self.history: deque[Request] = deque(maxlen=64)  # recently finished requests
        self._lock = threading.Lock()
        self._warm = threading.Event()
        self._warm_error: BaseException | None = None
        device = self._lm.device
        self._seen = torch.zeros(self._lm.vocab_size, dtype=torch.bool, device=device)  # [V]
        self._stop_ids = torch.tensor(sorted(model.stop_tokens), device=device)  # [S]
        self._tokens_per_frame = model.codec.codes_per_frame
        # Per frame slot: the output-projection rows of its valid tokens (the stop token joins
        # slot 0, a frame boundary). Views for slots 1.., one small copy for slot 0.
        self._slot_ranges = [slot_token_range(slot) for slot in range(self._tokens_per_frame)]
        self._slot_heads = []
        for slot, (lo, hi) in enumerate(self._slot_ranges):
            if slot == 0:
                rows = torch.cat((torch.arange(lo, hi, device=device), self._stop_ids))
                self._slot_heads.append(self._lm.head_rows(rows))
            else:
                self._slot_heads.append(self._lm.head_rows(slice(lo, hi)))

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, warm_up: bool = True) -> None:
        """Start the engine thread (idempotent) and wait for its warm-up.

        The warm-up runs on the engine thread before any request: it checks the split LM
        head against the model's own forward and generates a short utterance, so kernel
        selection, compilation and CUDA-graph capture happen now, not in the first turn.
        Blocks: call it off the event loop.
        """
        with self._lock:
            if self._closed:
                raise EngineClosedError("engine was closed")
            if self._thread is None:
                self._codec = CodecWorker(
                    self.model.codec,
                    frames_per_decode=self.frames_per_decode,
                    emit=self._emit,
                    finish=self._finish,
                    threads=self.codec_threads,
                    name=f"localtts-codec-{self.model.name}",
                )
                self._thread = threading.Thread(
                    target=self._run,
                    args=(warm_up,),
                    name=f"localtts-engine-{self.model.name}",
                    daemon=True,
                )
                self._thread.start()
        self._warm.wait()
        if self._warm_error is not None:
            raise GenerationError(f"engine warm-up failed: {self._warm_error}") from self._warm_error

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything, stop the thread and wait for it (idempotent)."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        active = self._active
        if active is not None:
            active.cancel()
        self._queue.put(None)
        if thread is not None:
            thread.join(timeout)
        if self._codec is not None:
            self._codec.close(timeout)
        # Anything still queued will never run: end it so no consumer waits forever.
        while True:
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                break
            if req is not None:
                req.cancel()
                self._finish(req, "cancelled")

    @property
    def running(self) -> bool:
        """Whether the engine thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def idle(self) -> bool:
        """No request generating or queued, and no audio left to decode."""
        codec_idle = self._codec is None or self._codec.idle
        return self._active is None and self._queue.empty() and codec_idle

    # ------------------------------------------------------------------ requests

    def submit(
        self, text: str, voice: str, params: GenerationParams, sink: AudioSink
    ) -> Request:
        """Queue an utterance. Raises ``UnknownVoiceError`` at once for an unknown voice."""
        if self._closed or self._thread is None:
            raise EngineClosedError("engine is not running; call start() first")
        prompt = self.model.build_prompt(text, voice)
        budget = self.model.token_budget(
            text,
            seconds_per_char=params.guard_seconds_per_char,
            min_seconds=params.guard_min_seconds,
            max_tokens=min(params.max_tokens, self.max_tokens),
        )
        req = Request(text=text, prompt_ids=prompt, max_new_tokens=budget, params=params, sink=sink)
        self._queue.put(req)
        return req

    # ------------------------------------------------------------------ engine thread

    @torch.inference_mode()
    def _warm_up(self) -> None:
        t0 = time.perf_counter()
        model = self.model
        logger.info(f"engine: warming up {model.name} on {self._lm.device}")
        prompt = model.build_prompt("Warming up.", model.voices[0])
        self._lm.check_head(prompt)
        frames = 2 * model.codec.context_frames + 2
        params = GenerationParams(seed=0, max_tokens=frames * self._tokens_per_frame)
        passes = 3 if self._lm.compiled else 1  # compile, then capture, then replay
        for i in range(passes):
            req = Request(
                text="Warming up.",
                prompt_ids=prompt,
                max_new_tokens=params.max_tokens,
                params=params,
                sink=NullSink(),
                record=False,
            )
            self._end(req, self._generate(req))
            self._lm.reset()
            req.wait()
            if req.error is not None:
                raise req.error
            logger.info(f"engine: warm-up pass {i + 1}/{passes} done ({time.perf_counter() - t0:.1f} s)")

    def _run(self, warm_up: bool) -> None:
        try:
            if warm_up:
                self._warm_up()
        except Exception as e:
            logger.exception("engine: warm-up failed")
            self._warm_error = e
            self._warm.set()
            return
        self._warm.set()
        while True:
            req = self._queue.get()
            if req is None:
                return
            if req.cancelled or self._closed:
                req.cancel()
                self._end(req, "cancelled")
                continue
            self._active = req
            try:
                reason = self._generate(req)
            except Exception as e:  # the request fails, the engine lives on
                logger.exception(f"engine: request {req.id} failed")
                req.error = GenerationError(f"generation failed: {type(e).__name__}: {e}")
                req.error.__cause__ = e
                reason = "error"
                if self._lm.device.type == "cuda":
                    torch.cuda.empty_cache()
            finally:
                self._lm.reset()
                self._active = None
            self._end(req, reason)

    def _end(self, req: Request, reason: str) -> None:
        """The LM is done with ``req``: the codec thread ends it after its audio."""
        req.t_lm_done = time.perf_counter()
        assert self._codec is not None
        self._codec.end(req, reason)

    def _finish(self, req: Request, reason: str) -> None:
        req.finish_reason = reason
        req.t_done = time.perf_counter()
        if req.record:
            self.history.append(req)
        req._done.set()
        try:
            req.sink.on_done(req)
        except Exception:
            logger.exception(f"engine: sink of request {req.id} failed in on_done")

    def _emit(self, req: Request, pcm: np.ndarray) -> None:
        if pcm.size == 0:
            return
        if req.t_first_audio is None:
            req.t_first_audio = time.perf_counter()
        req.audio_samples += pcm.size
        req.sink.on_audio(pcm)

    @torch.inference_mode()
    def _generate(self, req: Request) -> str:
        """Prefill, then decode step by step until stop, budget or cancel."""
        req.t_start = time.perf_counter()
        params = req.params
        model = self.model
        lm = self._lm
        if req.cancelled:
            return "cancelled"
        # 1. prefill
        hidden = lm.prefill(req.prompt_ids)  # [H]
        req.steps += 1
        req.t_prefilled = time.perf_counter()
        generator = make_generator(params.seed, lm.device)
        seen = self._seen
        seen.zero_()
        seen[torch.tensor(req.prompt_ids, device=lm.device)] = True
        parser = model.new_parser()
        codec = self._codec
        assert codec is not None
        max_new = min(req.max_new_tokens, lm.room)
        t_lm = time.perf_counter()
        # 2. one token per step; complete frames go to the codec thread
        for position in range(max_new):
            if req.cancelled:  # checked before every model step
                break
            token = self._sample(hidden, position, seen, params, generator)
            req.tokens.append(token)
            if token in model.stop_tokens:
                break
            seen[token] = True
            frame = parser.push(token)
            if frame is not None:
                codec.frame(req, frame)
            if position == max_new - 1 or req.cancelled:
                break
            hidden = lm.step(token)  # [H]
            req.steps += 1
        req.lm_seconds = time.perf_counter() - t_lm
        req.dropped_frames = parser.dropped_frames
        if req.cancelled:
            return "cancelled"
        return "stop" if req.tokens and req.tokens[-1] in model.stop_tokens else "length"

    def _sample(
        self,
        hidden: torch.Tensor,
        position: int,
        seen: torch.Tensor,
        params: GenerationParams,
        generator: torch.Generator,
    ) -> int:
        """Sample the token at audio ``position`` (0 = first token after start_of_speech)."""
        lm = self._lm
        if not params.constrain_audio_tokens:
            logits = apply_repetition_penalty(lm.full_logits(hidden), seen, params.repetition_penalty)
            return int(sample_token(logits, params, generator))
        # Only the codes of this frame slot, plus the stop token at a frame boundary.
        slot = position % self._tokens_per_frame
        lo, hi = self._slot_ranges[slot]
        if self.restrict_head and lm.head_is_linear:
            candidates = lm.logits(hidden, *self._slot_heads[slot])  # [4096 (+ S)]
        else:
            full = lm.full_logits(hidden)  # [V]
            candidates = torch.cat((full[lo:hi], full[self._stop_ids])) if slot == 0 else full[lo:hi]
        cand_seen = torch.cat((seen[lo:hi], seen[self._stop_ids])) if slot == 0 else seen[lo:hi]
        candidates = apply_repetition_penalty(candidates, cand_seen, params.repetition_penalty)
        index = int(sample_token(candidates, params, generator))
        if index < hi - lo:
            return lo + index
        return int(self._stop_ids[index - (hi - lo)])
