"""The batched engine: many requests in one decode step, each as if it ran alone."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch
from reference import slot_allowed

from pipecat_localtts.engine.batched import BatchedEngine
from pipecat_localtts.engine.request import BlockingSink, NullSink
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.errors import EngineClosedError, GenerationError
from pipecat_localtts.models import orpheus as o
from pipecat_localtts.testing import tiny_llama, tiny_orpheus

TEXTS = [
    "Hello there.",
    "The weather is fine today, bring a hat.",
    "One two three.",
    "Your order ships tomorrow morning.",
    "Okay.",
    "Let me check the schedule for you.",
]


@pytest.fixture(scope="module")
def model():
    return tiny_orpheus()


def _params(i: int, **kw) -> GenerationParams:
    base = dict(seed=100 + i, guard_seconds_per_char=0.02, guard_min_seconds=0.6)
    return GenerationParams(**{**base, **kw})


def _engine(model, **kw) -> BatchedEngine:
    engine = BatchedEngine(model, max_tokens=256, **kw)
    engine.start()
    return engine


def _collect(req, sink: BlockingSink) -> np.ndarray:
    pieces = list(sink)
    assert req.wait(30)
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def _solo(model, i: int, **kw) -> tuple[list[int], np.ndarray]:
    engine = _engine(model, max_batch=1)
    try:
        sink = BlockingSink()
        req = engine.submit(TEXTS[i], "tara", _params(i, **kw), sink)
        audio = _collect(req, sink)
        return req.tokens, audio
    finally:
        engine.close()


def _int16(pcm: np.ndarray) -> np.ndarray:
    return (np.clip(pcm, -1, 1) * 32767).astype(np.int16).astype(np.int32)


def test_each_request_in_a_batch_equals_its_solo_run(model):
    solo = [_solo(model, i) for i in range(len(TEXTS))]
    engine = _engine(model, max_batch=4)  # 6 requests: two wait for a slot
    try:
        sinks, reqs = [], []
        for i, text in enumerate(TEXTS):
            sink = BlockingSink()
            reqs.append(engine.submit(text, "tara", _params(i), sink))
            sinks.append(sink)
            if i == 2:
                time.sleep(0.05)  # later ones join a batch already running
        audio = [_collect(r, s) for r, s in zip(reqs, sinks, strict=True)]
    finally:
        engine.close()
    assert max(engine.batch_sizes) > 1  # they really shared steps
    for i, req in enumerate(reqs):
        tokens, solo_audio = solo[i]
        assert req.finish_reason == "length"
        assert req.tokens == tokens, i
        assert audio[i].size == solo_audio.size > 0
        assert np.abs(_int16(audio[i]) - _int16(solo_audio)).max() <= 4


@torch.inference_mode()
def uncached_greedy(model, prompt: list[int], max_new: int, params: GenerationParams) -> list[int]:
    """Greedy decoding with the transformers model's own forward over the whole sequence for
    every token (no cache, full logits), the repetition penalty over every token so far, and,
    when constrained, only the tokens valid at the frame slot."""
    seq = list(prompt)
    seen = torch.zeros(o.VOCAB_SIZE, dtype=torch.bool)
    seen[seq] = True
    p = params.repetition_penalty
    for position in range(max_new):
        logits = model.lm(input_ids=torch.tensor([seq]), logits_to_keep=1).logits[0, -1]
        logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
        if params.constrain_audio_tokens:
            logits = logits.masked_fill(~slot_allowed(position), float("-inf"))
        token = int(logits.argmax())
        seq.append(token)
        seen[token] = True
        if token == o.END_OF_SPEECH:
            break
    return seq[len(prompt) :]


@pytest.fixture(scope="module")
def sharp_model(model):
    """The tiny model with larger random weights: its greedy tokens depend on the text and
    repeat, so the repetition penalty changes them."""
    lm = tiny_llama(0, initializer_range=0.3)
    return o.OrpheusModel(lm=lm, tokenizer=model.tokenizer, codec=model.codec, name="tiny-sharp", synthetic=True)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_cached_greedy_rows_equal_the_uncached_transformers_forward(sharp_model, penalty):
    # One batch mixing constrained rows (the batched candidate sampler) and an unconstrained
    # one (the whole vocabulary), each against its own uncached reference.
    model = sharp_model
    base = dict(temperature=0, repetition_penalty=penalty, guard_seconds_per_char=0.02, guard_min_seconds=0.6)
    params = [
        GenerationParams(**base),
        GenerationParams(**base, constrain_audio_tokens=False),
        GenerationParams(**base),
    ]
    engine = _engine(model, max_batch=3)
    try:
        reqs = [engine.submit(TEXTS[i], "tara", params[i], NullSink()) for i in (0, 1, 2)]
        assert all(r.wait(30) for r in reqs)
    finally:
        engine.close()
    assert max(engine.batch_sizes) == 3
    for req, p in zip(reqs, params, strict=True):
        reference = uncached_greedy(model, req.prompt_ids, req.max_new_tokens, p)
        assert req.tokens == reference
        stopped = reference[-1] == o.END_OF_SPEECH
        assert req.finish_reason == ("stop" if stopped else "length")
        assert len(reference) > 40 or stopped
        # One prefill, then one step per further token: the prefix is never run again.
        assert req.steps == len(req.tokens)
        if penalty != 1.0:  # the penalty really changed what was generated
            unpenalised = dataclasses.replace(p, repetition_penalty=1.0)
            assert uncached_greedy(model, req.prompt_ids, req.max_new_tokens, unpenalised) != reference
    assert len({tuple(r.tokens) for r in reqs}) == 3  # each row its own tokens
    assert reqs[0].finish_reason == reqs[2].finish_reason == "length"
    assert all(slot_allowed(i)[t] for r in (reqs[0], reqs[2]) for i, t in enumerate(r.tokens))


def test_cancel_stops_one_row_within_a_step_and_leaves_the_others_alone(model):
    solo = _solo(model, 1)
    engine = _engine(model, max_batch=3)
    try:
        sink_a, sink_b = BlockingSink(), BlockingSink()
        a = engine.submit(TEXTS[0], "tara", _params(0), sink_a)
        b = engine.submit(TEXTS[1], "tara", _params(1), sink_b)
        while len(a.tokens) < 14:
            time.sleep(0.001)
        a.cancel()
        assert a.wait(10) and a.finish_reason == "cancelled"
        assert len(a.tokens) <= a.steps_at_cancel + 1  # at most one more step
        audio_b = _collect(b, sink_b)
    finally:
        engine.close()
    assert b.tokens == solo[0] and np.abs(_int16(audio_b) - _int16(solo[1])).max() <= 4


def test_waiting_requests_are_admitted_in_order_and_can_be_cancelled(model):
    engine = _engine(model, max_batch=2)
    try:
        reqs = [engine.submit(t, "tara", _params(i), NullSink()) for i, t in enumerate(TEXTS[:5])]
        reqs[3].cancel()  # still waiting: it ends without ever running
        assert all(r.wait(30) for r in reqs)
    finally:
        engine.close()
    assert reqs[3].finish_reason == "cancelled" and reqs[3].steps == 0 and reqs[3].t_admitted is None
    admitted = [r for r in reqs if r.t_admitted is not None]
    assert [r.id for r in sorted(admitted, key=lambda r: r.t_admitted)] == [r.id for r in admitted]
    # The fifth waited for a slot: it was admitted only once one of the first two had left.
    assert reqs[4].t_admitted >= min(reqs[0].t_lm_done, reqs[1].t_lm_done)
    assert max(engine.batch_sizes) == 2


def test_a_failed_prefill_fails_only_its_request(model, monkeypatch):
    solo = _solo(model, 2)
    engine = _engine(model, max_batch=3)
    runner = engine.source.runner
    real = runner.prefill
    marker = model.build_prompt(TEXTS[4], "tara")

    def prefill(slot, ids, start=0):
        if list(ids) == marker:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(slot, ids, start)

    real_many = runner.prefill_many

    def prefill_many(slots, prompts):  # two requests admitted together go in one pass
        if any(list(ids) == marker for ids in prompts):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_many(slots, prompts)

    monkeypatch.setattr(runner, "prefill", prefill)
    monkeypatch.setattr(runner, "prefill_many", prefill_many)
    try:
        bad_sink = BlockingSink()
        bad = engine.submit(TEXTS[4], "tara", _params(4), bad_sink)
        sink = BlockingSink()
        good = engine.submit(TEXTS[2], "tara", _params(2), sink)
        audio = _collect(good, sink)
        with pytest.raises(GenerationError, match="out of memory"):  # the consumer gets the error
            list(bad_sink)
        assert bad.wait(10) and bad.finish_reason == "error" and bad.steps == 0
    finally:
        engine.close()
    assert good.tokens == solo[0] and np.abs(_int16(audio) - _int16(solo[1])).max() <= 4


def test_a_failed_batched_step_fails_its_rows_and_the_engine_serves_the_next(model, monkeypatch):
    engine = _engine(model, max_batch=3)
    runner = engine.source.runner
    real = runner.decode
    calls = {"n": 0}

    def decode(slots, tokens):
        if len(slots) == 2 and calls["n"] == 0:  # the first step both requests are in
            calls["n"] += 1
            raise RuntimeError("kernel failure (simulated)")
        return real(slots, tokens)

    monkeypatch.setattr(runner, "decode", decode)
    try:
        first = [engine.submit(t, "tara", _params(i), NullSink()) for i, t in enumerate(TEXTS[:2])]
        assert all(r.wait(30) for r in first)
        assert calls["n"] == 1
        assert [r.finish_reason for r in first] == ["error", "error"]
        assert all("kernel failure" in str(r.error) for r in first)
        sink = BlockingSink()
        after = engine.submit(TEXTS[2], "tara", _params(2), sink)
        audio = _collect(after, sink)
    finally:
        engine.close()
    solo = _solo(model, 2)
    assert after.finish_reason == "length" and after.tokens == solo[0]
    assert np.abs(_int16(audio) - _int16(solo[1])).max() <= 4


def test_close_ends_every_request_so_no_consumer_waits(model):
    engine = _engine(model, max_batch=1)
    reqs = [engine.submit(t, "tara", _params(i, guard_min_seconds=5.0), NullSink()) for i, t in enumerate(TEXTS[:3])]
    engine.close()
    assert all(r.wait(10) for r in reqs)
    assert {r.finish_reason for r in reqs} <= {"cancelled", "length"}
    assert reqs[-1].finish_reason == "cancelled" and reqs[-1].steps == 0  # still waiting: never ran
    assert not engine.running
    with pytest.raises(EngineClosedError, match="not running"):
        engine.submit("Hello.", "tara", _params(0), NullSink())


def test_the_engine_keeps_no_text_and_samples_unconstrained_rows(model):
    engine = _engine(model, max_batch=2)
    try:
        req = engine.submit("A secret sentence.", "tara", _params(0), NullSink())
        assert req.wait(30) and req.text == ""
        # Unconstrained rows (any token of the vocabulary) are sampled beside the others.
        free = engine.submit("Hi.", "tara", _params(1, constrain_audio_tokens=False), NullSink())
        other = engine.submit("Hello there.", "tara", _params(2), NullSink())
        assert free.wait(30) and other.wait(30) and free.error is None and other.error is None
        assert len(free.tokens) >= 1 and other.finish_reason == "length"
        with pytest.raises(ValueError, match="budget"):
            engine.submit("\U0001d400" * 200, "tara", _params(0), NullSink())
    finally:
        engine.close()
    assert threading.active_count() < 50


def test_requests_spread_over_codec_threads_each_get_their_solo_audio(model):
    solo = [_solo(model, i) for i in range(4)]
    engine = BatchedEngine(model, max_tokens=256, max_batch=4, codec_workers=2)
    engine.start()
    try:
        sinks = [BlockingSink() for _ in range(4)]
        reqs = [engine.submit(TEXTS[i], "tara", _params(i), sinks[i]) for i in range(4)]
        audio = [_collect(r, s) for r, s in zip(reqs, sinks, strict=True)]
        windows = [codec.windows for codec in engine._codecs]
    finally:
        engine.close()
    assert len(windows) == 2 and min(windows) > 0  # both codec threads decoded
    for i, req in enumerate(reqs):
        assert req.tokens == solo[i][0]
        assert np.abs(_int16(audio[i]) - _int16(solo[i][1])).max() <= 4
