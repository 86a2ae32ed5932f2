"""The batched engine: one model, many requests advanced together, one token per step.

One thread owns the language model. Each iteration of its loop is step-major, as in
nano-vllm: (1) admit waiting requests into free cache slots, FIFO, and prefill each of them
at once (a new request's prefill runs before the next batched step, so its first audio is
not held up by the others' utterances); (2) run ONE batched decode step that advances every
active request by one token, each row at its own position; (3) per row: sample with the
row's own parameters and its own seeded noise, parse the token into codec frames, and let a
row leave when it stops, exhausts its budget or is cancelled. Requests beyond ``max_batch``
wait in order and stay cancellable; their wait is recorded (``t_submit`` → ``t_admitted``).

The KV cache is :class:`~pipecat_localtts.engine.kv_cache.SlotKVCache` (slots of fixed
length, allocated once; freeing a slot is bookkeeping). The decode forward is our own
(:class:`~pipecat_localtts.engine.llama.LlamaRunner`) over the checkpoint's weights.
Sampling is :mod:`~pipecat_localtts.engine.batch_sampling`: a row's tokens depend on its own
seed and step counter only, so a seeded request gives the same tokens alone and in a batch
(up to the float rounding of a batched matmul, which can only flip a near-tie). Frames go
to the codec thread (:class:`~pipecat_localtts.engine.codec_worker.CodecWorker`), which ends
each request after its audio.

It knows nothing about asyncio or Pipecat (a sink decides how audio reaches its consumer),
and it keeps no text of finished requests.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from loguru import logger

from pipecat_localtts.engine import batch_sampling as bs
from pipecat_localtts.engine.codec_worker import CodecWorker
from pipecat_localtts.engine.llama import LlamaRunner
from pipecat_localtts.engine.request import AudioSink, NullSink, Request
from pipecat_localtts.engine.sampling import (
    GenerationParams,
    apply_repetition_penalty,
    make_generator,
    sample_token,
)
from pipecat_localtts.errors import EngineClosedError, GenerationError
from pipecat_localtts.models.orpheus import TOKENS_PER_FRAME, OrpheusFrameParser, OrpheusModel

__all__ = ["DEFAULT_MAX_BATCH", "PROMPT_BUDGET", "BatchedEngine"]

PROMPT_BUDGET = 512  # cache room reserved for the prompt, in tokens
#: Slots per engine when not given: enough for a busy CPU box, small enough to allocate
#: anywhere (``max_batch * (PROMPT_BUDGET + max_tokens)`` cache positions).
DEFAULT_MAX_BATCH = {"cpu": 8, "cuda": 64}


@dataclass(eq=False)
class _Row:
    """An admitted request: its slot and decoding state."""

    req: Request
    slot: int
    parser: OrpheusFrameParser
    max_new: int  # tokens it may generate
    next_token: int = -1  # the token to feed at the next decode step
    # Unconstrained sampling only (constrain_audio_tokens=False): over the whole vocabulary.
    generator: torch.Generator | None = None
    seen_all: torch.Tensor | None = None  # [V] bool


class BatchedEngine:
    """Runs an Orpheus-style speech model for many requests at once.

    Args:
        model: The loaded model (LM, tokenizer, codec).
        max_batch: Cache slots, i.e. requests decoded together (``None``: per device, see
            :data:`DEFAULT_MAX_BATCH`); more wait in FIFO order.
        max_tokens: Cache room for generated tokens per slot; requests are capped to it.
        frames_per_decode: Codec frames decoded per window after the first audio.
        codec_threads: CPU threads of the codec thread (``None``: PyTorch's default).
    """

    def __init__(
        self,
        model: OrpheusModel,
        *,
        max_batch: int | None = None,
        max_tokens: int = 2048,
        frames_per_decode: int = 1,
        codec_threads: int | None = None,
    ) -> None:
        self.model = model
        device = model.device
        self.max_batch = max_batch or DEFAULT_MAX_BATCH.get(device.type, 8)
        self.max_tokens = max_tokens
        self.frames_per_decode = frames_per_decode
        self.codec_threads = codec_threads
        self._runner = LlamaRunner(model.lm, n_slots=self.max_batch, max_len=PROMPT_BUDGET + max_tokens)
        self._device = device
        self._seen = bs.new_seen(self.max_batch, device)  # [S, UNION_SIZE]: tokens each slot has made
        self._free = list(range(self.max_batch))  # lowest first: busy slots stay packed low
        self._waiting: deque[Request] = deque()
        self._rows: list[_Row] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._codec: CodecWorker | None = None
        self._closed = False
        self.steps = 0  # batched decode steps run
        self.batch_sizes: deque[int] = deque(maxlen=4096)  # rows of recent steps

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, warm_up: bool = True) -> None:
        """Start the engine and codec threads (idempotent); blocking: call it off the loop.

        The warm-up runs one short utterance through prefill, the batched step, the sampler
        and the codec, so one-time kernel and allocator costs are paid now, not in the
        first call's time to first audio.
        """
        started = self._start_threads()
        if started and warm_up:
            t0 = time.perf_counter()
            frames = 2 * self.model.codec.lookahead_frames + 2
            params = GenerationParams(seed=0, max_tokens=frames * TOKENS_PER_FRAME)
            req = self.submit("Warming up.", self.model.voices[0], params, NullSink())
            req.wait()
            if req.error is not None:
                raise GenerationError(f"engine warm-up failed: {req.error}") from req.error
            logger.info(f"engine: {self.model.name} warm ({time.perf_counter() - t0:.2f} s)")

    def _start_threads(self) -> bool:
        with self._cv:
            if self._closed:
                raise EngineClosedError("engine was closed")
            if self._thread is not None:
                return False
            self._codec = CodecWorker(
                self.model.codec,
                frames_per_decode=self.frames_per_decode,
                emit=self._emit,
                finish=self._finish,
                threads=self.codec_threads,
                name=f"localtts-codec-{self.model.name}",
            )
            self._thread = threading.Thread(target=self._run, name=f"localtts-batch-{self.model.name}", daemon=True)
            self._thread.start()
            return True

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything, stop the threads; every request still open is ended."""
        with self._cv:
            self._closed = True
            thread, self._thread = self._thread, None
            for req in list(self._waiting) + [row.req for row in self._rows]:
                req.cancel()
            self._cv.notify_all()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("engine: the engine thread did not stop in time; ending its requests")
        with self._cv:
            leftovers = list(self._waiting) + [row.req for row in self._rows]
            self._waiting.clear()
            self._rows.clear()
        for req in leftovers:  # what the thread did not end will never run: no one may wait forever
            if not req.done:
                self._finish(req, "cancelled")
        if self._codec is not None:
            self._codec.close(timeout)

    @property
    def running(self) -> bool:
        """Whether the engine thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def idle(self) -> bool:
        """Nothing generating or waiting, and no audio left to decode."""
        with self._cv:
            busy = bool(self._waiting or self._rows)
        return not busy and (self._codec is None or self._codec.idle)

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiting)

    @property
    def active(self) -> int:
        """Requests holding a slot."""
        return len(self._rows)

    # ------------------------------------------------------------------ requests

    def submit(self, text: str, voice: str, params: GenerationParams, sink: AudioSink) -> Request:
        """Queue an utterance; it starts as soon as a slot is free.

        Raises:
            UnknownVoiceError: The model does not know ``voice``.
            ValueError: The prompt does not fit :data:`PROMPT_BUDGET`.
            EngineClosedError: The engine is not running.
        """
        prompt = self.model.build_prompt(text, voice)
        if len(prompt) > PROMPT_BUDGET:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds the {PROMPT_BUDGET}-token budget")
        budget = self.model.token_budget(
            text,
            seconds_per_char=params.guard_seconds_per_char,
            min_seconds=params.guard_min_seconds,
            max_tokens=min(params.max_tokens, self.max_tokens),
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
        with self._cv:
            if self._closed or self._thread is None:
                raise EngineClosedError("engine is not running; call start() first")
            self._waiting.append(req)
            self._cv.notify()
        return req

    # ------------------------------------------------------------------ engine thread

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._closed or self._waiting or self._rows):
                    self._cv.wait()
                if self._closed:
                    return
            try:
                self._step()
            except Exception:  # a bug in the loop itself: fail what is active, live on
                logger.exception("engine: scheduler step failed")
                self._fail([row for row in self._rows], "scheduler step failed")

    @torch.inference_mode()
    def _step(self) -> None:
        """One iteration: admit + prefill, one batched decode step, update each row."""
        # 1. leave: cancelled rows go before the step; cancelled waiting requests end now
        for row in [r for r in self._rows if r.req.cancelled]:
            self._leave(row, "cancelled")
        with self._cv:
            gone = [req for req in self._waiting if req.cancelled]
            for req in gone:
                self._waiting.remove(req)
        for req in gone:
            self._end(req, "cancelled")
        # 2. admit in FIFO order while slots are free; prefill each at once
        while True:
            with self._cv:
                if not self._waiting or not self._free:
                    break
                req = self._waiting.popleft()
                if req.cancelled:
                    self._end(req, "cancelled")
                    continue
                slot = self._free.pop(0)
            self._prefill(req, slot)
        if not self._rows:
            return
        # 3. one batched decode step over every active row
        rows = sorted(self._rows, key=lambda r: r.slot)
        tokens = torch.tensor([r.next_token for r in rows], dtype=torch.long, device=self._device)
        t0 = time.perf_counter()
        try:
            hidden = self._runner.decode([r.slot for r in rows], tokens)  # [B, H]
            sampled = self._sample(hidden, rows)
        except Exception as e:
            logger.exception(f"engine: batched step of {len(rows)} rows failed")
            self._fail(rows, f"decode step failed: {type(e).__name__}: {e}", cause=e)
            return
        seconds = time.perf_counter() - t0
        self.steps += 1
        self.batch_sizes.append(len(rows))
        # 4. per row: the token, its frame, and whether it goes on
        for row, token in zip(rows, sampled, strict=True):
            row.req.steps += 1
            row.req.lm_seconds += seconds
            self._accept(row, token)

    def _prefill(self, req: Request, slot: int) -> None:
        req.t_admitted = req.t_start = time.perf_counter()
        max_new = min(req.max_new_tokens, self.max_tokens)
        row = _Row(req=req, slot=slot, parser=self.model.new_parser(), max_new=max_new)
        self._seen[slot].zero_()
        try:
            hidden = self._runner.prefill(slot, req.prompt_ids)  # [H]
            token = self._sample(hidden[None], [row])[0]
        except Exception as e:
            logger.exception(f"engine: prefill of request {req.id} failed")
            self._runner.free(slot)
            self._free_slot(slot)
            self._error(req, f"prefill failed: {type(e).__name__}: {e}", e)
            if self._device.type == "cuda":
                torch.cuda.empty_cache()
            return
        req.steps += 1
        req.t_prefilled = time.perf_counter()
        self._rows.append(row)
        self._accept(row, token)

    def _sample(self, hidden: torch.Tensor, rows: list[_Row]) -> list[int]:
        """Tokens for ``rows`` from their hidden states ([B, H]), each with its own noise."""
        free = [i for i, r in enumerate(rows) if not r.req.params.constrain_audio_tokens]
        if not free:
            return self._sample_constrained(hidden, rows)
        # Rare: rows that may sample any token of the vocabulary go one by one.
        tokens = [0] * len(rows)
        kept = [i for i in range(len(rows)) if i not in free]
        if kept:
            for i, t in zip(kept, self._sample_constrained(hidden[kept], [rows[i] for i in kept]), strict=True):
                tokens[i] = t
        for i in free:
            tokens[i] = self._sample_free(hidden[i], rows[i])
        return tokens

    def _sample_free(self, hidden: torch.Tensor, row: _Row) -> int:
        """One token over the whole vocabulary (the single-request sampler's way)."""
        params = row.req.params
        if row.generator is None:
            row.generator = make_generator(row.req.sample_seed % 2**63, self._device)
            row.seen_all = torch.zeros(self._runner.head_weight.shape[0], dtype=torch.bool, device=self._device)
            row.seen_all[torch.tensor(row.req.prompt_ids, device=self._device)] = True
        assert row.seen_all is not None
        logits = apply_repetition_penalty(self._runner.logits(hidden), row.seen_all, params.repetition_penalty)
        token = int(sample_token(logits, params, row.generator))
        row.seen_all[token] = True
        return token

    def _sample_constrained(self, hidden: torch.Tensor, rows: list[_Row]) -> list[int]:
        """Audio tokens valid at each row's frame slot (+ stop at a frame boundary), batched."""
        positions = [r.parser.position for r in rows]
        slot = torch.tensor([p % TOKENS_PER_FRAME for p in positions], device=self._device)  # [B]
        params = bs.RowParams.build(
            [r.req.params for r in rows], [r.req.sample_seed for r in rows], positions, self._device
        )
        seen = self._seen[[r.slot for r in rows]]  # [B, UNION_SIZE]
        runner = self._runner
        out = bs.sample_step(hidden, runner.head_weight, runner.head_bias, slot, seen, params)  # [B]
        tokens = out.tolist()  # the one host read per step
        bs.mark_seen(self._seen, torch.tensor([r.slot for r in rows], device=self._device), out)
        return tokens

    def _accept(self, row: _Row, token: int) -> None:
        """Record ``token`` for ``row``; hand a finished frame to the codec; maybe leave."""
        req = row.req
        req.tokens.append(token)
        if token in self.model.stop_tokens:
            self._leave(row, "stop")
            return
        frame = row.parser.push(token)
        if frame is not None:
            assert self._codec is not None
            self._codec.frame(req, frame)
        if len(req.tokens) >= row.max_new or self._runner.length(row.slot) >= self._runner.max_len:
            self._leave(row, "length")
        elif req.cancelled:
            self._leave(row, "cancelled")
        else:
            row.next_token = token

    # ------------------------------------------------------------------ leaving

    def _free_slot(self, slot: int) -> None:
        with self._cv:
            self._free.append(slot)
            self._free.sort()

    def _leave(self, row: _Row, reason: str) -> None:
        self._rows.remove(row)
        self._runner.free(row.slot)
        self._free_slot(row.slot)
        row.req.dropped_frames = row.parser.dropped_frames
        self._end(row.req, reason)

    def _fail(self, rows: list[_Row], message: str, cause: BaseException | None = None) -> None:
        for row in rows:
            if row in self._rows:
                self._rows.remove(row)
                self._runner.free(row.slot)
                self._free_slot(row.slot)
            self._error(row.req, message, cause)
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    def _error(self, req: Request, message: str, cause: BaseException | None) -> None:
        req.error = GenerationError(message)
        req.error.__cause__ = cause
        self._end(req, "error")

    def _end(self, req: Request, reason: str) -> None:
        """The LM is done with ``req``: the codec thread ends it after its audio."""
        req.t_lm_done = time.perf_counter()
        assert self._codec is not None
        self._codec.end(req, reason)

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
