"""Per-row sampling for a batched decode step: B requests, one token each.

Each row has its own sampling parameters, its own frame slot and its own randomness. The
noise of a row is a counter-based hash of (request seed, request step, candidate index), so a
seeded request samples the same tokens alone and in any batch (``torch.multinomial`` takes one
generator for the whole batch and cannot do that). Rows are sampled at once with Gumbel-max.
:func:`sample_rows` is exactly row-independent; the head matmul is not bit-for-bit (BLAS
blocks a batch of 1 and of 8 differently, ~1e-6 apart), so only a near-tie can flip a token.

Candidate layout (``[B, NUM_CANDIDATES]``): column ``c < CODEBOOK_SIZE`` is code ``c`` of the
row's frame slot (token ``AUDIO_TOKEN_BASE + CODEBOOK_SIZE * slot + c``); column
``STOP_COLUMN`` is the stop token, ``-inf`` on rows not at slot 0 (the stop token closes a
frame). This is today's slot-0 layout of :meth:`TTSEngine._sample`, so indices agree.

The logits come from one matmul over the union of the seven slot ranges and the stop token,
a contiguous block of the head (a view, no copy); each row then gathers its window. That
reads ``UNION_SIZE`` head rows once per step whatever B is, and keeps every shape fixed (one
CUDA graph per batch size). Gathering per-row heads (``[B, 4097, H]`` + bmm) copies
``B * 4097`` rows and reads them twice more: cheaper at B = 1 (1.1 vs 3.9 ms on this CPU,
H = 512), 7x dearer at B = 8 (55 vs 7.5 ms). A lone request keeps the engine's slot heads.

The repetition penalty's ``seen`` mask is per request, in the union layout (``[B, UNION_SIZE]``
bool, 28 KB a row instead of 157 KB for the full vocabulary): the same column index gathers
logits and ``seen``, and tokens outside the union can never be candidates anyway.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.models.orpheus import (
    AUDIO_TOKEN_BASE,
    CODEBOOK_SIZE,
    END_OF_SPEECH,
    TOKENS_PER_FRAME,
)

AUDIO_TOKEN_END = AUDIO_TOKEN_BASE + TOKENS_PER_FRAME * CODEBOOK_SIZE  # end of the 7 slot ranges
UNION_LO = min(END_OF_SPEECH, AUDIO_TOKEN_BASE)  # first head row of the union block
UNION_HI = max(END_OF_SPEECH + 1, AUDIO_TOKEN_END)
UNION_SIZE = UNION_HI - UNION_LO  # 28,680: 7 slot ranges, the stop token, the 7 ids between
NUM_CANDIDATES = CODEBOOK_SIZE + 1  # a row's codes + the stop column
STOP_COLUMN = CODEBOOK_SIZE

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
        )


# ------------------------------------------------------------------ candidates


def candidate_columns(slot: torch.Tensor) -> torch.Tensor:
    """Union column of each row's candidates: slot [B] -> [B, NUM_CANDIDATES] long."""
    codes = torch.arange(CODEBOOK_SIZE, device=slot.device)  # [4096]
    code_cols = (AUDIO_TOKEN_BASE - UNION_LO) + CODEBOOK_SIZE * slot[:, None] + codes  # [B, 4096]
    stop_cols = torch.full_like(slot[:, None], END_OF_SPEECH - UNION_LO)  # [B, 1]
    return torch.cat((code_cols, stop_cols), dim=1)


def candidate_logits(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None,
    slot: torch.Tensor,
) -> torch.Tensor:
    """Each row's candidate logits (layout in the module docstring), stop masked off slot 0.

    Args:
        hidden: [B, H] last hidden states.
        head_weight: [V, H] the output projection (only the union block is read).
        head_bias: [V] or None.
        slot: [B] long, each row's frame slot in [0, TOKENS_PER_FRAME).

    Returns:
        [B, NUM_CANDIDATES] in the head's dtype.
    """
    if hidden.shape[0] == 1:
        return _one_row_logits(hidden, head_weight, head_bias, int(slot[0]))
    bias = None if head_bias is None else head_bias[UNION_LO:UNION_HI]
    union = F.linear(hidden, head_weight[UNION_LO:UNION_HI], bias)  # [B, UNION_SIZE]
    logits = union.gather(1, candidate_columns(slot))  # [B, 4097]
    is_stop = torch.arange(NUM_CANDIDATES, device=slot.device) == STOP_COLUMN  # [4097]
    return logits.masked_fill((slot != 0)[:, None] & is_stop, float("-inf"))


def _one_row_logits(
    hidden: torch.Tensor, head_weight: torch.Tensor, head_bias: torch.Tensor | None, slot: int
) -> torch.Tensor:
    """:func:`candidate_logits` of a single row: only its slot's rows of the head are read
    (a quarter of the union's work), with the stop row at slot 0. hidden [1, H] -> [1, 4097]."""
    lo = AUDIO_TOKEN_BASE + CODEBOOK_SIZE * slot
    rows = slice(lo, lo + CODEBOOK_SIZE)
    codes = F.linear(hidden, head_weight[rows], None if head_bias is None else head_bias[rows])  # [1, 4096]
    if slot != 0:
        stop = torch.full_like(codes[:, :1], float("-inf"))
    else:
        stop_rows = slice(END_OF_SPEECH, END_OF_SPEECH + 1)
        stop = F.linear(hidden, head_weight[stop_rows], None if head_bias is None else head_bias[stop_rows])
    return torch.cat((codes, stop), dim=1)


def candidate_to_token(index: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Token ids of sampled candidates: index [B], slot [B] -> [B] long."""
    audio = AUDIO_TOKEN_BASE + CODEBOOK_SIZE * slot + index
    return torch.where(index == STOP_COLUMN, torch.full_like(audio, END_OF_SPEECH), audio)


def new_seen(batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """An empty per-row ``seen`` mask: [B, UNION_SIZE] bool."""
    return torch.zeros((batch, UNION_SIZE), dtype=torch.bool, device=device)


def mark_seen(seen: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor) -> None:
    """Mark ``tokens`` [K] as seen by ``rows`` [K] (tokens outside the union are ignored).

    No host sync: an outside token rewrites a clamped cell with its own value.
    """
    inside = (tokens >= UNION_LO) & (tokens < UNION_HI)  # [K]
    cols = (tokens - UNION_LO).clamp(0, UNION_SIZE - 1)  # [K]
    seen.index_put_((rows, cols), seen[rows, cols] | inside)


def candidate_seen(seen: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Each row's ``seen`` in the candidate layout: [B, UNION_SIZE] -> [B, NUM_CANDIDATES]."""
    return seen.gather(1, candidate_columns(slot))


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


def top_p_mask(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Nucleus of each row: keep a token while the mass before it is < top_p (first always).

    probs: [B, N], top_p: [B] -> keep [B, N] bool (all kept where top_p >= 1).
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)  # [B, N]
    before = sorted_probs.cumsum(-1) - sorted_probs
    keep_sorted = (before < top_p[:, None]) | (top_p >= 1)[:, None]
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def sample_rows(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
) -> torch.Tensor:
    """Sample one index per row; a row's result depends on that row's inputs only.

    Args:
        logits: [B, N], penalty already applied (``-inf`` = never sampled).
        temperature: [B]; rows at 0 take the argmax.
        top_p: [B] in (0, 1].
        seed: [B] int64.
        step: [B] int64.

    Returns:
        [B] long, indices into N.
    """
    greedy = temperature == 0  # [B]
    scaled = logits.float() / torch.where(greedy, 1.0, temperature)[:, None]  # [B, N]
    keep = top_p_mask(torch.softmax(scaled, dim=-1), top_p)  # [B, N]
    gumbel = -torch.log(-torch.log(uniform_noise(seed, step, logits.shape[-1])))  # [B, N]
    # Gumbel-max: argmax(log p + g) samples p; logits/T differ from log p by a row constant.
    sampled = scaled.masked_fill(~keep, float("-inf")).add_(gumbel).argmax(-1)
    return torch.where(greedy, logits.argmax(-1), sampled)


def sample_step(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None,
    slot: torch.Tensor,
    seen: torch.Tensor,
    rows: RowParams,
) -> torch.Tensor:
    """One batched sampling step: hidden [B, H] -> token ids [B] (``seen`` is not updated)."""
    logits = candidate_logits(hidden, head_weight, head_bias, slot)  # [B, 4097]
    seen_rows = candidate_seen(seen, slot)  # [B, 4097]
    logits = apply_repetition_penalty_rows(logits, seen_rows, rows.repetition_penalty)
    index = sample_rows(logits, rows.temperature, rows.top_p, rows.seed, rows.step)  # [B]
    return candidate_to_token(index, slot)
