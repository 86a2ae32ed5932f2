"""Batched per-row sampling: row independence, seeds, greedy, top-p, stop slot, penalty."""

from __future__ import annotations

import pytest
import torch
from reference import slot_allowed

from pipecat_localtts.engine import batch_sampling as bs
from pipecat_localtts.engine.sampling import (
    GenerationParams,
    apply_repetition_penalty,
    sample_token,
)
from pipecat_localtts.models import orpheus as o
from pipecat_localtts.models.base import TokenLayout
from pipecat_localtts.testing import tiny_llama

# Orpheus's layout, written out from its constants (the model object builds the same one).
LAYOUT = TokenLayout.contiguous(o.AUDIO_TOKEN_BASE, o.CODEBOOK_SIZE, o.TOKENS_PER_FRAME, [o.END_OF_SPEECH])
N = o.CODEBOOK_SIZE + 1  # a row's codes + the stop column
STOP_COLUMN = o.CODEBOOK_SIZE
UNION_LO = o.END_OF_SPEECH  # the stop token sits just below the audio tokens


def head_of(weight, bias=None) -> bs.CandidateHead:
    return bs.CandidateHead(LAYOUT, weight, bias)


def step(hidden, weight, bias, slot, seen, r):
    """``sample_step`` with the head and host slots built from tensors."""
    return bs.sample_step(hidden, head_of(weight, bias), slot.tolist(), seen, r)
WORD = (1 << 64) - 1


def splitmix64(z: int) -> int:
    """The reference finaliser, in Python's unbounded ints."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & WORD
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & WORD
    return z ^ (z >> 31)


def rows(b: int, temperature=0.8, top_p=0.9, penalty=1.0, seed=0, step=0) -> bs.RowParams:
    """B rows of the same parameters (each field may also be a list)."""

    def column(value, dtype):
        values = value if isinstance(value, list) else [value] * b
        return torch.tensor(values, dtype=dtype)

    return bs.RowParams(
        temperature=column(temperature, torch.float32),
        top_p=column(top_p, torch.float32),
        repetition_penalty=column(penalty, torch.float32),
        seed=column(seed, torch.int64),
        step=column(step, torch.int64),
    )


def sample(logits: torch.Tensor, r: bs.RowParams) -> torch.Tensor:
    return bs.sample_rows(logits, r.temperature, r.top_p, r.seed, r.step)


# ------------------------------------------------------------------ noise


def test_noise_is_splitmix64_of_seed_step_and_index_bit_for_bit():
    seeds = [0, 1, -1, 2**63 - 1, -(2**63), 123_456_789]
    steps = [0, 5, 7, 2**40, 3, 99]
    u = bs.uniform_noise(torch.tensor(seeds), torch.tensor(steps), 12)
    expected = []
    for seed, step in zip(seeds, steps):
        key = splitmix64(splitmix64(seed & WORD) ^ step)
        row = [splitmix64((key + (i + 1) * 0x9E3779B97F4A7C15) & WORD) for i in range(12)]
        expected.append([((z >> 41) + 0.5) / 2**23 for z in row])
    assert torch.equal(u.double(), torch.tensor(expected, dtype=torch.float64))
    assert 0 < float(u.min()) and float(u.max()) < 1


# ------------------------------------------------------------------ sample_rows


def test_a_row_samples_the_same_alone_and_in_batches_of_2_5_16_with_other_neighbours():
    gen = torch.Generator().manual_seed(0)
    target = rows(1, temperature=0.7, top_p=0.85, seed=42)
    for step in range(50):
        logits = torch.randn(1, N, generator=gen) * 3  # the target row's logits this step
        alone = sample(logits, rows(1, 0.7, 0.85, seed=42, step=step))
        for b in (2, 5, 16):
            others = torch.randn(b - 1, N, generator=gen) * 3
            where = step % b  # the target row moves around the batch
            batch = torch.cat((others[:where], logits, others[where:]))
            temps = torch.rand(b, generator=gen).tolist()
            temps[where] = float(target.temperature[0])
            top_ps = (torch.rand(b, generator=gen) * 0.9 + 0.1).tolist()
            top_ps[where] = float(target.top_p[0])
            seeds = torch.randint(0, 2**62, (b,), generator=gen).tolist()
            seeds[where] = 42
            steps = torch.randint(0, 1000, (b,), generator=gen).tolist()
            steps[where] = step
            out = sample(batch, rows(b, temps, top_ps, seed=seeds, step=steps))
            assert out[where] == alone[0], (step, b)


def test_seeded_rows_are_reproducible_and_ignore_the_global_rng():
    logits = torch.randn(8, N, generator=torch.Generator().manual_seed(1))
    r = rows(8, seed=list(range(8)), step=[3] * 8)
    torch.manual_seed(0)
    a = sample(logits, r)
    torch.manual_seed(1)
    torch.rand(100)
    b = sample(logits.clone(), r)
    assert torch.equal(a, b)
    other_seeds = sample(logits, rows(8, seed=list(range(100, 108)), step=[3] * 8))
    other_step = sample(logits, rows(8, seed=list(range(8)), step=[4] * 8))
    assert not torch.equal(a, other_seeds) and not torch.equal(a, other_step)


def test_greedy_rows_take_the_argmax_whatever_their_seed_and_step():
    logits = torch.randn(4, N, generator=torch.Generator().manual_seed(2))
    picks = {
        tuple(sample(logits, rows(4, 0.0, seed=s, step=t)).tolist())
        for s in range(5)
        for t in range(5)
    }
    assert picks == {tuple(logits.argmax(-1).tolist())}


def test_a_small_top_p_keeps_only_the_top_token():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.5]] * 200)
    out = sample(logits, rows(200, temperature=1.0, top_p=0.1, step=list(range(200))))
    assert set(out.tolist()) == {1}
    out = sample(logits, rows(200, temperature=5.0, top_p=1.0, step=list(range(200))))
    assert set(out.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("top_p", [0.8, 0.95])
def test_the_top_p_mask_is_the_set_sample_token_keeps(monkeypatch, top_p):
    logits = torch.randn(6, N, generator=torch.Generator().manual_seed(3)) * 2
    params = GenerationParams(temperature=0.6, top_p=top_p)
    ours = bs.top_p_mask(torch.softmax(logits / params.temperature, -1), torch.full((6,), top_p))
    multinomial = torch.multinomial
    for row, keep in zip(logits, ours):
        seen = {}

        def spy(probs, n, generator=None):
            seen["probs"] = probs.clone()
            return multinomial(probs, n, generator=generator)

        monkeypatch.setattr(torch, "multinomial", spy)
        sample_token(row, params, torch.Generator().manual_seed(0))
        monkeypatch.setattr(torch, "multinomial", multinomial)
        order = row.sort(descending=True).indices
        theirs = set(order[seen["probs"] > 0].tolist())
        assert theirs == set(keep.nonzero().flatten().tolist())


@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_empirical_frequencies_match_the_nucleus_softmax(top_p):
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 2.0, 0.2, -2.0])
    draws, temperature = 20_000, 0.8
    batch = logits.expand(draws, -1)
    out = sample(batch, rows(draws, temperature, top_p, seed=7, step=list(range(draws))))
    probs = torch.softmax(logits / temperature, -1)
    probs = probs * bs.top_p_mask(probs[None], torch.tensor([top_p]))[0]
    expected = probs / probs.sum() * draws
    observed = torch.bincount(out, minlength=len(logits)).double()
    assert observed[expected == 0].sum() == 0
    kept = expected > 0
    chi2 = float(((observed[kept] - expected[kept]) ** 2 / expected[kept]).sum())
    assert chi2 < 40  # <= 7 degrees of freedom: mean <= 7, 40 is far in the tail


def test_top_k_keeps_only_the_k_most_likely_per_row_and_zero_keeps_all():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]] * 400)
    k = torch.tensor([2] * 200 + [0] * 200)
    out = bs.sample_rows(logits, torch.full((400,), 5.0), torch.ones(400), torch.zeros(400, dtype=torch.int64),
                         torch.arange(400), k)  # fmt: skip
    assert set(out[:200].tolist()) == {0, 1}  # a hot temperature, still only the top two
    assert set(out[200:].tolist()) == {0, 1, 2, 3, 4}
    keep = bs.top_p_mask(torch.softmax(logits[:2], -1), torch.tensor([0.5, 1.0]), torch.tensor([3, 3]))
    assert keep.tolist() == [[True, False, False, False, False], [True, True, True, False, False]]
    built = bs.RowParams.build([GenerationParams(top_k=50), GenerationParams()], [1, 2], [0, 0])
    assert built.top_k.tolist() == [50, 0]
    assert bs.RowParams.build([GenerationParams()], [1], [0]).top_k is None  # no row limits: no work


def test_sample_token_honours_top_k():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    params = GenerationParams(temperature=5.0, top_p=1.0, top_k=2)
    gen = torch.Generator().manual_seed(0)
    assert {int(sample_token(logits, params, gen)) for _ in range(300)} == {0, 1}


# ------------------------------------------------------------------ candidates


@pytest.fixture(scope="module")
def head_weight():
    return tiny_llama(0).lm_head.weight.detach()  # [V, 16], Orpheus's vocabulary


def test_candidate_logits_are_the_head_rows_of_each_row_slot(head_weight):
    w, bias = head_weight, torch.randn(o.VOCAB_SIZE)
    head = head_of(w, bias)
    slot = torch.arange(o.TOKENS_PER_FRAME)
    hidden = torch.randn(len(slot), w.shape[1], generator=torch.Generator().manual_seed(4))
    out = head.logits(hidden, slot.tolist())  # every row at another slot: the mixed path
    full = hidden @ w.T + bias  # [TOKENS_PER_FRAME, V]
    for b in range(o.TOKENS_PER_FRAME):
        lo, hi = o.slot_token_range(b)
        torch.testing.assert_close(out[b, : o.CODEBOOK_SIZE], full[b, lo:hi])
        stop = full[b, o.END_OF_SPEECH] if b == 0 else torch.tensor(float("-inf"))
        torch.testing.assert_close(out[b, STOP_COLUMN], stop)
    alone = head.logits(hidden[3:4], [3])
    torch.testing.assert_close(alone[0], out[3])  # BLAS may differ in the last bits
    same = head.logits(hidden, [0] * len(slot))  # all rows at one slot: one matmul
    torch.testing.assert_close(same[:, : o.CODEBOOK_SIZE], full[:, slice(*o.slot_token_range(0))])
    torch.testing.assert_close(same[:, STOP_COLUMN], full[:, o.END_OF_SPEECH])


def test_candidate_to_token_maps_back_to_the_slot_ranges_and_the_stop_id(head_weight):
    head = head_of(head_weight)
    slot = torch.arange(o.TOKENS_PER_FRAME).repeat_interleave(3)
    index = torch.tensor([0, o.CODEBOOK_SIZE - 1, STOP_COLUMN] * o.TOKENS_PER_FRAME)
    tokens = head.to_token(index, slot).tolist()
    for s, i, t in zip(slot.tolist(), index.tolist(), tokens):
        assert t == (o.END_OF_SPEECH if i == STOP_COLUMN else o.audio_token(s, i))
    # The union column of a candidate is its token id minus the union's first id.
    cols = head.columns(slot).gather(1, index[:, None])[:, 0]
    assert head.union_lo == UNION_LO
    assert (cols + UNION_LO).tolist() == tokens


def test_the_stop_token_is_only_sampled_at_slot_0():
    w = torch.randn(o.VOCAB_SIZE, 16, generator=torch.Generator().manual_seed(6)) * 0.1
    w[o.END_OF_SPEECH] = 0.0
    w[o.END_OF_SPEECH, 0] = 10.0
    hidden = torch.zeros(700, 16)
    hidden[:, 0] = 10.0  # every row wants to stop: its logit is 100, the codes' about 0
    slot = torch.arange(700) % o.TOKENS_PER_FRAME
    seen = head_of(w).new_seen(700)
    tokens = step(hidden, w, None, slot, seen, rows(700, 1.5, 1.0, step=list(range(700))))
    is_stop = tokens == o.END_OF_SPEECH
    assert is_stop[slot == 0].all() and not is_stop[slot != 0].any()


def test_rows_marked_no_stop_never_stop_and_the_others_do():
    w = torch.randn(o.VOCAB_SIZE, 16, generator=torch.Generator().manual_seed(6)) * 0.1
    w[o.END_OF_SPEECH] = 0.0
    w[o.END_OF_SPEECH, 0] = 10.0
    hidden = torch.zeros(8, 16)
    hidden[:, 0] = 10.0  # every row wants to stop
    head = head_of(w)
    no_stop = [True, False] * 4  # e.g. rows before the layout's min_tokens
    tokens = bs.sample_step(hidden, head, [0] * 8, head.new_seen(8), rows(8, 1.0, 1.0), no_stop)
    assert [t == o.END_OF_SPEECH for t in tokens.tolist()] == [not x for x in no_stop]


def test_repetition_penalty_is_applied_per_row_like_the_single_row_version():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]] * 3)
    seen = torch.tensor([[True, True, False, False]] * 3)
    penalty = torch.tensor([1.0, 2.0, 1.3])
    for dtype in (torch.float32, torch.bfloat16):
        out = bs.apply_repetition_penalty_rows(logits.to(dtype), seen, penalty)
        for b, p in enumerate(penalty.tolist()):
            assert torch.equal(out[b], apply_repetition_penalty(logits[b].to(dtype), seen[b], p))


def test_seen_marks_are_per_row_in_the_candidate_layout(head_weight):
    head = head_of(head_weight)
    seen = head.new_seen(2)
    ids = [o.audio_token(1, 5), o.audio_token(0, 9), o.END_OF_TEXT, o.END_OF_SPEECH]
    tokens = torch.tensor(ids)
    head.mark_seen(seen, torch.tensor([0, 1, 0, 1]), tokens)
    assert int(seen.sum()) == 3  # END_OF_TEXT is outside the union, never a candidate
    cand = head.candidate_seen(seen, torch.tensor([1, 0]))
    assert cand[0].nonzero().flatten().tolist() == [5]
    assert cand[1].nonzero().flatten().tolist() == [9, STOP_COLUMN]


def reference_pick(hidden, weight, bias, position, seen_full, params, seed) -> int:
    """One token the long way: full logits, the penalty over the whole vocabulary, the valid
    tokens of the slot, then argmax (greedy) or Gumbel-max over the nucleus with the noise the
    batch sampler uses (one uniform per candidate: code c -> column c, stop -> STOP_COLUMN)."""
    logits = weight @ hidden + bias  # [V]
    p = params.repetition_penalty
    logits = torch.where(seen_full, torch.where(logits > 0, logits / p, logits * p), logits)
    valid = slot_allowed(position).nonzero().flatten()  # token ids, ascending
    cand = logits[valid]
    if params.temperature == 0:
        return int(valid[cand.argmax()])
    lo = o.AUDIO_TOKEN_BASE + o.CODEBOOK_SIZE * (position % 7)
    column = torch.where(valid == o.END_OF_SPEECH, torch.tensor(STOP_COLUMN), valid - lo)
    u = bs.uniform_noise(torch.tensor([seed]), torch.tensor([position]), N)[0]
    gumbel = -torch.log(-torch.log(u[column]))
    scaled = cand.float() / params.temperature
    probs = torch.softmax(scaled, -1)
    order = probs.argsort(descending=True)
    before = probs[order].cumsum(0) - probs[order]
    nucleus = order[before < params.top_p]
    best = nucleus[(scaled[nucleus] + gumbel[nucleus]).argmax()]
    return int(valid[best])


@pytest.mark.parametrize(
    "params",
    [
        GenerationParams(temperature=0.0, repetition_penalty=1.3, seed=0),
        GenerationParams(temperature=0.8, top_p=0.9, repetition_penalty=1.3, seed=77),
        GenerationParams(temperature=1.2, top_p=1.0, repetition_penalty=1.0, seed=5),
    ],
    ids=["greedy", "top-p", "full-softmax"],
)
def test_the_batch_picks_what_a_full_vocabulary_reference_picks(params):
    gen = torch.Generator().manual_seed(5)
    h = 32
    weight = torch.randn(o.VOCAB_SIZE, h, generator=gen) * 0.5
    weight[:, 0] = 0.0
    weight[o.END_OF_SPEECH, 0] = 1.0  # only the stop token reads dimension 0
    bias = torch.randn(o.VOCAB_SIZE, generator=gen) * 0.5
    b = 21
    hidden = torch.randn(b, h, generator=gen)
    hidden[:, 0] = 0.0
    hidden[:2, 0] = 100.0  # rows 0 and 1 want to stop: row 0 (slot 0) may, row 1 (slot 1) not
    position = torch.arange(b) + o.TOKENS_PER_FRAME * torch.randint(0, 5, (b,), generator=gen)
    slot = position % o.TOKENS_PER_FRAME
    seen_tokens = [o.PAD]  # inside the union block, never a candidate
    for s in range(o.TOKENS_PER_FRAME):
        seen_tokens += [o.audio_token(s, c) for c in range(0, o.CODEBOOK_SIZE, 3)]
    seen_full = torch.zeros(o.VOCAB_SIZE, dtype=torch.bool)
    seen_full[seen_tokens] = True
    head = head_of(weight, bias)
    seen = head.new_seen(b)
    for row in range(b):
        head.mark_seen(seen, torch.full((len(seen_tokens),), row), torch.tensor(seen_tokens))
    seed = bs.request_seed(params)
    r = bs.RowParams.build([params] * b, [seed] * b, position.tolist())
    ours = step(hidden, weight, bias, slot, seen, r).tolist()
    theirs = [
        reference_pick(hidden[i], weight, bias, int(position[i]), seen_full, params, seed) for i in range(b)
    ]
    assert ours == theirs
    assert ours[0] == o.END_OF_SPEECH and ours[1] != o.END_OF_SPEECH
    assert all(slot_allowed(int(p))[t] for p, t in zip(position, ours))
    # A row alone (the one-row head path) picks the same.
    for i in (0, 1, 9):
        one = bs.RowParams.build([params], [seed], [int(position[i])])
        row = slice(i, i + 1)
        assert step(hidden[row], weight, bias, slot[row], seen[row], one).tolist() == [theirs[i]]
    if params.temperature > 0:  # the noise matters: the picks are not simply the argmax
        argmax = GenerationParams(temperature=0.0, repetition_penalty=params.repetition_penalty)
        greedy = [
            reference_pick(hidden[i], weight, bias, int(position[i]), seen_full, argmax, seed) for i in range(b)
        ]
        assert greedy != theirs


# ------------------------------------------------------------------ parameters


def test_row_params_carry_each_request_and_its_64_bit_seed():
    a = GenerationParams(temperature=0.5, top_p=0.9, repetition_penalty=1.1, seed=2**64 - 1)
    b = GenerationParams(temperature=0.0, seed=None)
    seed_b = bs.request_seed(b)
    assert 0 <= seed_b < 2**64 and bs.request_seed(a) == 2**64 - 1
    r = bs.RowParams.build([a, b], [bs.request_seed(a), seed_b], [0, 9])
    assert r.temperature.tolist() == [0.5, 0.0] and r.step.tolist() == [0, 9]
    assert r.seed[0] == -1 and r.seed.dtype == torch.int64  # the same 64 bits
    with pytest.raises(ValueError, match="one seed and one step per row"):
        bs.RowParams.build([a, b], [1], [0, 0])
    with pytest.raises(ValueError, match="constrain_audio_tokens"):
        bs.RowParams.build([GenerationParams(constrain_audio_tokens=False)], [1], [0])


def test_the_orpheus_model_builds_this_layout():
    from pipecat_localtts.testing import tiny_orpheus

    assert tiny_orpheus().token_layout == LAYOUT
    assert LAYOUT.slot_range(3) == o.slot_token_range(3)
