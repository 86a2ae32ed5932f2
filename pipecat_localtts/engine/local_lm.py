"""The local batched LM: one model, many jobs advanced together, one token per step.

One thread owns the language model. Each iteration of its loop is step-major, as in
nano-vllm: (1) admit waiting jobs into free cache slots, FIFO, and prefill them at once, the
short prompts admitted together in one forward pass (a new job's prefill runs before the next
batched step, so its first audio is not held up by the others' utterances); (2) run ONE batched decode step that advances every active job
by one token, each row at its own position; (3) per row: sample with the row's own parameters
and its own seeded noise and hand the token to the engine's sink, which says whether the row
goes on. Jobs beyond ``max_batch`` wait in order and stay cancellable; their wait is recorded
(``t_submit`` -> ``t_admitted``).

**Chunked prefill.** A prompt longer than ``prefill_chunk`` tokens goes into its slot one
chunk per iteration, between the batch's decode steps, so a long prompt delays the others by
one chunk at a time, not by its whole length.

**Frame alignment.** With several rows active, a new job is admitted at a frame boundary of
the batch (when the rows' next token is at the slot a freshly prefilled row is at), so all
rows stay at the same frame slot and a sampling step reads one slot's rows of the output
layer instead of all seven (see :mod:`~pipecat_localtts.engine.batch_sampling`). That delays
a job by less than one frame of steps, only when others are running.

The KV cache is :class:`~pipecat_localtts.engine.kv_cache.SlotKVCache` (slots of fixed
length, allocated once; freeing a slot is bookkeeping). The decode forward is our own
(:class:`~pipecat_localtts.engine.llama.LlamaRunner`) over the checkpoint's weights. A row's
tokens depend on its own seed and step counter only, so a seeded job gives the same tokens
alone and in a batch (up to the float rounding of a batched matmul, which can only flip a
near-tie). A failed prefill fails its own job, a failed step the jobs in it; the loop lives on.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import torch
from loguru import logger

from pipecat_localtts.engine import batch_sampling as bs
from pipecat_localtts.engine.llama import LlamaRunner
from pipecat_localtts.engine.sampling import apply_repetition_penalty, make_generator, sample_token
from pipecat_localtts.engine.source import Job, TokenSink
from pipecat_localtts.errors import EngineClosedError, GenerationError
from pipecat_localtts.models.base import TokenLayout

__all__ = ["LocalBatchedLM"]


@dataclass(eq=False)
class _Row:
    """An admitted job: its slot and decoding state."""

    job: Job
    slot: int
    next_token: int = -1  # the token to feed at the next decode step
    prefilled: int = 0  # prompt tokens in the cache (a long prompt goes in chunks)
    # Unconstrained sampling only (constrain_audio_tokens=False): over the whole vocabulary.
    generator: torch.Generator | None = None
    seen_all: torch.Tensor | None = None  # [V] bool


class LocalBatchedLM:
    """A token source running the speech LM in this process, batched.

    Args:
        lm: The transformers causal LM (Llama architecture), on its device.
        layout: The tokens valid at each frame slot (the model's ``token_layout``).
        max_batch: Cache slots, i.e. jobs decoded together; more wait in FIFO order.
        max_len: Cache positions per slot (prompt + generated tokens).
        name: For thread names and logs.
        align_frames: Admit new jobs at the batch's frame boundary (see the module docstring).
        prefill_chunk: Prompts longer than this are prefilled in chunks of it, one chunk per
            iteration between decode steps, so a long prompt does not stall the others.
        cuda_graphs: Capture one CUDA graph of the decode step per batch-size bucket
            (:data:`~pipecat_localtts.engine.llama.GRAPH_BUCKETS` up to ``max_batch``) at
            start; a step is padded up to its bucket. ``None``: on CUDA. A failed capture
            logs a warning and decodes eagerly.
    """

    def __init__(
        self,
        lm: torch.nn.Module,
        layout: TokenLayout,
        *,
        max_batch: int,
        max_len: int,
        name: str = "lm",
        align_frames: bool = True,
        prefill_chunk: int = 128,
        cuda_graphs: bool | None = None,
    ) -> None:
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.prefill_chunk = prefill_chunk
        self.layout = layout
        self.max_batch = max_batch
        self.name = name
        self.align_frames = align_frames
        self._runner = LlamaRunner(lm, n_slots=max_batch, max_len=max_len)
        self._head = bs.CandidateHead(layout, self._runner.head_weight, self._runner.head_bias)
        self._device = self._runner.device
        self.cuda_graphs = self._device.type == "cuda" if cuda_graphs is None else bool(cuda_graphs)
        self._seen = self._head.new_seen(max_batch)  # [S, union]: tokens each slot has made
        self._free = list(range(max_batch))  # lowest first: busy slots stay packed low
        self._waiting: deque[Job] = deque()
        self._rows: list[_Row] = []  # decoding
        self._prefilling: list[_Row] = []  # long prompts going into the cache chunk by chunk
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._sink: TokenSink | None = None
        self._closed = False
        self.steps = 0  # batched decode steps run
        self.batch_sizes: deque[int] = deque(maxlen=4096)  # rows of recent steps
        self.slot_groups: deque[int] = deque(maxlen=4096)  # distinct frame slots of recent steps

    @property
    def max_len(self) -> int:
        """Cache positions per slot."""
        return self._runner.max_len

    @property
    def runner(self) -> LlamaRunner:
        """The decoder forward over the slot cache."""
        return self._runner

    # ------------------------------------------------------------------ TokenSource

    def start(self, sink: TokenSink) -> None:
        with self._cv:
            if self._closed:
                raise EngineClosedError("engine was closed")
            if self._thread is not None:
                return
            if self.cuda_graphs:
                t0 = time.perf_counter()
                if self._runner.capture(cuda_graphs=True):
                    logger.info(
                        f"engine: {self.name}: CUDA graphs for batch sizes {self._runner.static_buckets} "
                        f"({time.perf_counter() - t0:.1f} s)"
                    )
            self._sink = sink
            self._thread = threading.Thread(target=self._run, name=f"localtts-lm-{self.name}", daemon=True)
            self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._closed or self._thread is None:
                raise EngineClosedError("engine is not running; call start() first")
            self._waiting.append(job)
            self._cv.notify()

    def close(self, timeout: float = 10.0) -> list[Job]:
        with self._cv:
            self._closed = True
            thread, self._thread = self._thread, None
            for job in self._jobs():
                job.req.cancel()
            self._cv.notify_all()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("engine: the LM thread did not stop in time; ending its requests")
        with self._cv:
            leftovers = self._jobs()
            self._waiting.clear()
            self._rows.clear()
            self._prefilling.clear()
        return leftovers

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        with self._cv:
            return bool(self._waiting or self._rows or self._prefilling)

    @property
    def active(self) -> int:
        return len(self._rows) + len(self._prefilling)

    def _jobs(self) -> list[Job]:
        return list(self._waiting) + [row.job for row in self._prefilling + self._rows]

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._closed or self._waiting or self._rows or self._prefilling):
                    self._cv.wait()
                if self._closed:
                    return
            try:
                self._step()
            except Exception:  # a bug in the loop itself: fail what is active, live on
                logger.exception("engine: scheduler step failed")
                self._fail(self._prefilling + self._rows, "scheduler step failed")

    def _may_admit(self) -> bool:
        """Whether a new job may join before this step (frame alignment)."""
        if not self.align_frames or not self._rows:
            return True
        slots = {self.layout.slot(r.job.parser.position) for r in self._rows}
        # A freshly prefilled row has made one token: its next one is at slot(1).
        return len(slots) != 1 or slots.pop() == self.layout.slot(1)

    @torch.inference_mode()
    def _step(self) -> None:
        """One iteration: leave, admit + prefill, one batched decode step, hand out tokens."""
        assert self._sink is not None
        # 1. leave: cancelled rows go before the step; cancelled waiting jobs end now
        for row in [r for r in self._rows + self._prefilling if r.job.req.cancelled]:
            self._leave(row)
            self._sink.on_end(row.job, "cancelled")
        with self._cv:
            gone = [job for job in self._waiting if job.req.cancelled]
            for job in gone:
                self._waiting.remove(job)
        for job in gone:
            self._sink.on_end(job, "cancelled")
        # 2. admit in FIFO order while slots are free; prefill each at once
        if self._may_admit():
            admitted: list[_Row] = []
            while True:
                with self._cv:
                    if not self._waiting or not self._free:
                        break
                    job = self._waiting.popleft()
                    if job.req.cancelled:
                        self._sink.on_end(job, "cancelled")
                        continue
                    slot = self._free.pop(0)
                row = self._admit(job, slot)
                if row is not None:
                    admitted.append(row)
            if len(admitted) == 1:
                self._prefill(admitted[0])
            elif admitted:
                self._prefill_together(admitted)
        # 2b. one more chunk of the oldest long prompt (its last one at a frame boundary)
        if self._prefilling:
            row = self._prefilling[0]
            if len(row.job.req.prompt_ids) - row.prefilled > self.prefill_chunk or self._may_admit():
                self._prefill(row)
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
        # 4. per row: hand the token to the sink; it says whether the row goes on
        for row, token in zip(rows, sampled, strict=True):
            row.job.req.steps += 1
            row.job.req.lm_seconds += seconds
            self._hand_out(row, token)

    def _admit(self, job: Job, slot: int) -> _Row | None:
        """Give ``job`` its slot; a long prompt starts its chunked prefill now, a short one is
        returned to be prefilled with the others admitted in this iteration."""
        req = job.req
        req.t_admitted = req.t_start = time.perf_counter()
        row = _Row(job=job, slot=slot)
        self._seen[slot].zero_()
        if len(req.prompt_ids) > self.prefill_chunk:
            self._prefilling.append(row)
            self._prefill(row)
            return None
        return row

    def _prefill_together(self, rows: list[_Row]) -> None:
        """Short prompts admitted together: one forward pass, one sampling call."""
        try:
            hidden = self._runner.prefill_many([r.slot for r in rows], [r.job.req.prompt_ids for r in rows])
            tokens = self._sample(hidden, rows)
        except Exception:
            logger.opt(exception=True).debug("engine: batched prefill failed; prefilling one by one")
            for row in rows:  # finds the culprit: each fails or succeeds on its own
                self._prefill(row)
            return
        now = time.perf_counter()
        for row, token in zip(rows, tokens, strict=True):
            row.prefilled = len(row.job.req.prompt_ids)
            row.job.req.steps += 1
            row.job.req.t_prefilled = now
            self._rows.append(row)
            self._hand_out(row, token)

    def _prefill(self, row: _Row) -> None:
        """Prefill the row's prompt, or its next chunk; after the last, its first token."""
        req, slot = row.job.req, row.slot
        ids = req.prompt_ids
        end = min(len(ids), row.prefilled + self.prefill_chunk) if row in self._prefilling else len(ids)
        try:
            hidden = self._runner.prefill(slot, ids[row.prefilled : end], row.prefilled)  # [H]
            row.prefilled = end
            token = self._sample(hidden[None], [row])[0] if end == len(ids) else None
        except Exception as e:
            logger.exception(f"engine: prefill of request {req.id} failed")
            if row in self._prefilling:
                self._prefilling.remove(row)
            self._runner.free(slot)
            self._free_slot(slot)
            self._error(row.job, f"prefill failed: {type(e).__name__}: {e}", e)
            if self._device.type == "cuda":
                torch.cuda.empty_cache()
            return
        if token is None:
            return  # more chunks to come
        if row in self._prefilling:
            self._prefilling.remove(row)
        req.steps += 1
        req.t_prefilled = time.perf_counter()
        self._rows.append(row)
        self._hand_out(row, token)

    def _hand_out(self, row: _Row, token: int) -> None:
        assert self._sink is not None
        if not self._sink.on_token(row.job, token):
            self._leave(row)
        elif self._runner.length(row.slot) >= self._runner.max_len:
            self._leave(row)
            self._sink.on_end(row.job, "length")
        else:
            row.next_token = token

    # ------------------------------------------------------------------ sampling

    def _sample(self, hidden: torch.Tensor, rows: list[_Row]) -> list[int]:
        """Tokens for ``rows`` from their hidden states ([B, H]), each with its own noise."""
        free = [i for i, r in enumerate(rows) if not r.job.req.params.constrain_audio_tokens]
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
        req = row.job.req
        if row.generator is None:
            row.generator = make_generator(req.sample_seed % 2**63, self._device)
            row.seen_all = torch.zeros(self._runner.head_weight.shape[0], dtype=torch.bool, device=self._device)
            row.seen_all[torch.tensor(req.prompt_ids, device=self._device)] = True
        assert row.seen_all is not None
        logits = apply_repetition_penalty(self._runner.logits(hidden), row.seen_all, req.params.repetition_penalty)
        if row.job.parser.position < self.layout.min_tokens:  # too early to stop
            logits[list(self.layout.stop_tokens)] = float("-inf")
        token = int(sample_token(logits, req.params, row.generator))
        row.seen_all[token] = True
        return token

    def _sample_constrained(self, hidden: torch.Tensor, rows: list[_Row]) -> list[int]:
        """Tokens valid at each row's frame slot (+ stop at a frame boundary), batched."""
        positions = [r.job.parser.position for r in rows]
        slots = [self.layout.slot(p) for p in positions]
        params = bs.RowParams.build(
            [r.job.req.params for r in rows], [r.job.req.sample_seed for r in rows], positions, self._device
        )
        cache_rows = torch.tensor([r.slot for r in rows], device=self._device)
        seen = self._seen[cache_rows]  # [B, union]
        no_stop = [p < self.layout.min_tokens for p in positions]
        out = bs.sample_step(hidden, self._head, slots, seen, params, no_stop)  # [B]
        tokens = out.tolist()  # the one host read per step
        self._head.mark_seen(self._seen, cache_rows, out)
        self.slot_groups.append(len(set(slots)))
        return tokens

    # ------------------------------------------------------------------ leaving

    def _free_slot(self, slot: int) -> None:
        with self._cv:
            self._free.append(slot)
            self._free.sort()

    def _leave(self, row: _Row) -> None:
        for rows in (self._rows, self._prefilling):
            if row in rows:
                rows.remove(row)
                self._runner.free(row.slot)
                self._free_slot(row.slot)

    def _fail(self, rows: list[_Row], message: str, cause: BaseException | None = None) -> None:
        for row in rows:
            self._leave(row)
            self._error(row.job, message, cause)
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    def _error(self, job: Job, message: str, cause: BaseException | None) -> None:
        assert self._sink is not None
        error = GenerationError(message)
        error.__cause__ = cause
        self._sink.on_end(job, "error", error)
