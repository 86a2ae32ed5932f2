"""Per-row sampling for a batched decode step: B requests, one token each.

Each row has its own sampling parameters, its own frame slot and its own randomness. The
noise of a row is a counter-based hash of (request seed, request step, candidate index), so a
seeded request samples the same tokens alone and in any batch (``torch.multinomial`` takes one
generator for the whole batch and cannot do that). Rows are sampled at once with Gumbel-max.
:func:`sample_rows` is exactly row-independent; the head matmul is not bit-for-bit (BLAS
blocks a batch of 1 and of 8 differently, ~1e-6 apart), so only a near-tie can flip a token.

What may be sampled comes from the model's :class:`~pipecat_localtts.models.base.TokenLayout`
(no model family is imported here). Candidate layout (``[B, n_candidates]``): column
``c < width`` is the ``c``-th valid token of the row's frame slot; the last columns are the
stop tokens, ``-inf`` on rows not at slot 0 (a stop closes a frame).
:meth:`CandidateHead.to_token` maps a column back to its token id.

The logits come from the head rows of the slots the rows are at: one matmul per distinct
slot (a view of the head, no copy), plus the stop rows for rows at slot 0. The engine keeps
its rows at the same slot (it admits new requests at a frame boundary), so a step reads
one slot's ``width`` head rows whatever B is, a seventh of the union of all slots (for
Orpheus at H = 512: 8 MB instead of 58 MB a step on a CPU that reads ~10 GB/s).

The repetition penalty's ``seen`` mask is per request, in the union layout (``[B, union]``
bool, 28 KB a row for Orpheus instead of 157 KB for the full vocabulary): the same column
index gathers logits and ``seen``, and tokens outside the union can never be candidates.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.models.base import TokenLayout

# ------------------------------------------------------------------ counter-based noise

_BITS = 64
# (k + 0.5) / 2**23 is exact in float32 and inside (0, 1), so the Gumbel noise lies in
# [-2.8, 16.6]: a candidate more than ~19 below the best (in logits / T) is never drawn (p < 4e-9).
_UNIFORM_BITS = 23


def _int64(value: int) -> int:
    """A 64-bit word as the signed int64 with the same bits."""
    value &= (1 << _BITS) - 1
    return value - (1 << _BITS) if value >= 1 << (_BITS - 1) else value


_GOLDEN = _int64(0x9E3779B97F4A7C15)  # splitmix64's increment
_MUL1 = _int64(0xBF58476D1CE4E5B9)
_MUL2 = _int64(0x94D049BB133111EB)


def _shr(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Logical right shift of int64 words (torch's ``>>`` is arithmetic)."""
    return (x >> shift) & ((1 << (_BITS - shift)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser, a bijection of 64-bit words, in wrapping int64 arithmetic."""
    x = (x ^ _shr(x, 30)) * _MUL1
    x = (x ^ _shr(x, 27)) * _MUL2
    return x ^ _shr(x, 31)


def uniform_noise(seed: torch.Tensor, step: torch.Tensor, n: int) -> torch.Tensor:
    """Uniforms in (0, 1), one per (row, index): a function of (seed, step, index) only.

    Args:
        seed: [B] int64, the request's seed.
        step: [B] int64, the request's own step counter.
        n: Candidates per row.

    Returns:
        [B, n] float32.
    """
    key = mix64(mix64(seed) ^ step)  # [B]: one splitmix64 stream per (request, step)
    counter = torch.arange(1, n + 1, device=seed.device) * _GOLDEN  # [n]
    bits = mix64(key[:, None] + counter)  # [B, n]: the stream's index-th output
    return (_shr(bits, _BITS - _UNIFORM_BITS).float() + 0.5) * 2.0**-_UNIFORM_BITS


# ------------------------------------------------------------------ per-row parameters


def request_seed(params: GenerationParams) -> int:
    """The seed of a request: its own, or 64 fresh random bits (draw once, at submit)."""
    return params.seed if params.seed is not None else secrets.randbits(_BITS)


@dataclass(frozen=True)
class RowParams:
    """Sampling parameters of the B rows of a step, as device tensors."""

    temperature: torch.Tensor  # [B] float32, 0 = greedy
    top_p: torch.Tensor  # [B] float32 in (0, 1]
    repetition_penalty: torch.Tensor  # [B] float32 >= 1
    seed: torch.Tensor  # [B] int64 (the seed's 64 bits, two's complement)
    step: torch.Tensor  # [B] int64, each request's own step counter
    top_k: torch.Tensor | None = None  # [B] int64, 0 = no limit; None: no row limits

    @classmethod
    def build(
        cls,
        params: Sequence[GenerationParams],
        seeds: Sequence[int],
        steps: Sequence[int],
        device: torch.device | str = "cpu",
    ) -> RowParams:
        """Rows from each request's parameters, seed (:func:`request_seed`) and step."""
        if not len(params) == len(seeds) == len(steps):
            raise ValueError(
                f"one seed and one step per row: got {len(params)} params, "
                f"{len(seeds)} seeds, {len(steps)} steps"
            )
        if not all(p.constrain_audio_tokens for p in params):
            raise ValueError("batched sampling covers constrain_audio_tokens=True rows only")

        def floats(name: str) -> torch.Tensor:
            values = [getattr(p, name) for p in params]
            return torch.tensor(values, dtype=torch.float32, device=device)

        def ints(values: Sequence[int]) -> torch.Tensor:
            return torch.tensor([_int64(v) for v in values], dtype=torch.int64, device=device)

        return cls(
            temperature=floats("temperature"),
            top_p=floats("top_p"),
            repetition_penalty=floats("repetition_penalty"),
            seed=ints(seeds),
            step=ints(steps),
            top_k=ints([p.top_k for p in params]) if any(p.top_k for p in params) else None,
        )


# ------------------------------------------------------------------ candidates


class CandidateHead:
    """The output-layer rows a constrained sampler reads, per frame slot, for one layout.

    Args:
        layout: What may be sampled at each slot.
        head_weight: [V, H] the LM's output projection (slot rows are views of it).
        head_bias: [V] or None.
    """

    def __init__(self, layout: TokenLayout, head_weight: torch.Tensor, head_bias: torch.Tensor | None) -> None:
        if layout.union_hi > head_weight.shape[0]:
            raise ValueError(f"the token layout reaches id {layout.union_hi - 1}, the head has {head_weight.shape[0]} rows")
        self.layout = layout
        self.width = layout.width
        self.n_candidates = layout.width + len(layout.stop_tokens)
        self.union_lo, self.union_size = layout.union_lo, layout.union_hi - layout.union_lo
        device = head_weight.device
        self.device = device

        def rows(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            return head_weight[lo:hi], None if head_bias is None else head_bias[lo:hi]

        self._slots = [rows(*layout.slot_range(s)) for s in range(layout.tokens_per_frame)]
        stops = torch.tensor(layout.stop_tokens, device=device)
        self._stop = head_weight[stops], None if head_bias is None else head_bias[stops]  # small copies
        starts = torch.tensor(layout.slot_starts, device=device)  # [S]
        self._starts = starts
        self._stop_ids = stops
        codes = torch.arange(self.width, device=device)
        # Union column of every candidate at every slot: [S, n_candidates].
        stop_cols = (stops - self.union_lo)[None].expand(len(layout.slot_starts), -1)
        self._columns = torch.cat(((starts - self.union_lo)[:, None] + codes, stop_cols), dim=1)
        self._is_stop = torch.arange(self.n_candidates, device=device) >= self.width  # [n]

    def logits(self, hidden: torch.Tensor, slots: Sequence[int]) -> torch.Tensor:
        """Each row's candidate logits: hidden [B, H], slots (host ints, [B]) -> [B, n_candidates].

        One matmul per distinct slot; stop columns are computed for rows at slot 0 and
        ``-inf`` elsewhere.
        """
        b = hidden.shape[0]
        distinct = sorted(set(slots))
        if len(distinct) == 1:  # the usual case: every row at the same slot, no gathers
            slot = distinct[0]
            codes = F.linear(hidden, *self._slots[slot])  # [B, width]
            if slot == 0:
                stop = F.linear(hidden, *self._stop)  # [B, n_stop]
            else:
                stop = codes.new_full((b, self.n_candidates - self.width), float("-inf"))
            return torch.cat((codes, stop), dim=1)
        out = hidden.new_full((b, self.n_candidates), float("-inf"))
        for slot in distinct:
            idx = torch.tensor([i for i, s in enumerate(slots) if s == slot], device=hidden.device)
            h = hidden.index_select(0, idx)
            out[idx, : self.width] = F.linear(h, *self._slots[slot]).to(out.dtype)
            if slot == 0:
                out[idx, self.width :] = F.linear(h, *self._stop).to(out.dtype)
        return out

    def columns(self, slot: torch.Tensor) -> torch.Tensor:
        """Union column of each row's candidates: slot [B] long -> [B, n_candidates] long."""
        return self._columns[slot]

    def to_token(self, index: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Token ids of sampled candidates: index [B], slot [B] -> [B] long."""
        audio = self._starts[slot] + index
        stop = self._stop_ids[(index - self.width).clamp(0, self._stop_ids.numel() - 1)]
        return torch.where(index >= self.width, stop, audio)

    def new_seen(self, batch: int) -> torch.Tensor:
        """An empty per-row ``seen`` mask: [B, union] bool."""
        return torch.zeros((batch, self.union_size), dtype=torch.bool, device=self.device)

    def mark_seen(self, seen: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """Mark ``tokens`` [K] as seen by ``rows`` [K] (tokens outside the union are ignored).

        No host sync: an outside token rewrites a clamped cell with its own value.
        """
        local = tokens - self.union_lo
        inside = (local >= 0) & (local < self.union_size)  # [K]
        cols = local.clamp(0, self.union_size - 1)  # [K]
        seen.index_put_((rows, cols), seen[rows, cols] | inside)

    def candidate_seen(self, seen: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Each row's ``seen`` in the candidate layout: [B, union] -> [B, n_candidates]."""
        return seen.gather(1, self.columns(slot))


# ------------------------------------------------------------------ sampling


def apply_repetition_penalty_rows(
    logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    """Divide positive, multiply negative logits of seen tokens by the row's penalty.

    logits: [B, N], seen: [B, N] bool, penalty: [B] -> [B, N].
    """
    # In float32, rounded back once: what ``logits / penalty`` with a Python float does.
    x, p = logits.float(), penalty.float()[:, None]  # [B, N], [B, 1]
    penalised = torch.where(x > 0, x / p, x * p).to(logits.dtype)
    return torch.where(seen, penalised, logits)


def top_p_mask(probs: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor | None = None) -> torch.Tensor:
    """Nucleus of each row: keep a token while the mass before it is < top_p (first always),
    and, where ``top_k`` > 0, only among the row's ``top_k`` most likely.

    probs: [B, N], top_p: [B], top_k: [B] int or None -> keep [B, N] bool (all kept where
    top_p >= 1 and top_k is 0).
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)  # [B, N]
    before = sorted_probs.cumsum(-1) - sorted_probs
    keep_sorted = (before < top_p[:, None]) | (top_p >= 1)[:, None]
    if top_k is not None:
        rank = torch.arange(probs.shape[-1], device=probs.device)[None]  # [1, N]
        keep_sorted &= (rank < top_k[:, None]) | (top_k == 0)[:, None]
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def sample_rows(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
    top_k: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample one index per row; a row's result depends on that row's inputs only.

    Args:
        logits: [B, N], penalty already applied (``-inf`` = never sampled).
        temperature: [B]; rows at 0 take the argmax.
        top_p: [B] in (0, 1].
        seed: [B] int64.
        step: [B] int64.
        top_k: [B] int64 (0 = no limit) or ``None``.

    Returns:
        [B] long, indices into N.
    """
    greedy = temperature == 0  # [B]
    scaled = logits.float() / torch.where(greedy, 1.0, temperature)[:, None]  # [B, N]
    keep = top_p_mask(torch.softmax(scaled, dim=-1), top_p, top_k)  # [B, N]
    gumbel = -torch.log(-torch.log(uniform_noise(seed, step, logits.shape[-1])))  # [B, N]
    # Gumbel-max: argmax(log p + g) samples p; logits/T differ from log p by a row constant.
    sampled = scaled.masked_fill(~keep, float("-inf")).add_(gumbel).argmax(-1)
    return torch.where(greedy, logits.argmax(-1), sampled)


def sample_step(
    hidden: torch.Tensor,
    head: CandidateHead,
    slots: Sequence[int],
    seen: torch.Tensor,
    rows: RowParams,
    no_stop: Sequence[bool] | None = None,
) -> torch.Tensor:
    """One batched sampling step: hidden [B, H] -> token ids [B] (``seen`` is not updated).

    ``slots`` are the rows' frame slots as host ints; ``seen`` is [B, union] (the rows' masks);
    rows where ``no_stop`` is true may not stop yet (the layout's ``min_tokens``).
    """
    slot = torch.tensor(list(slots), device=hidden.device)  # [B]
    logits = head.logits(hidden, slots)  # [B, n_candidates]
    if no_stop is not None and any(no_stop):
        early = torch.tensor(list(no_stop), device=hidden.device)
        logits[early, head.width :] = float("-inf")
    seen_rows = head.candidate_seen(seen, slot)  # [B, n_candidates]
    logits = apply_repetition_penalty_rows(logits, seen_rows, rows.repetition_penalty)
    index = sample_rows(logits, rows.temperature, rows.top_p, rows.seed, rows.step, rows.top_k)  # [B]
    return head.to_token(index, slot)
