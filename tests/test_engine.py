"""The engine one request at a time: valid tokens, exact streamed audio, seeds, stop, guard,
cancellation from another thread, warm-up, timings; and the generation parameters.

The engine is :class:`BatchedEngine` (batching itself: ``test_batched_engine.py``). The engine
uses the output layer as a matrix, so a hook on ``lm_head`` would not be seen: the model is
steered by wrapping ``LlamaRunner.prefill`` / ``decode`` (patched on the class, after the
engine has started) instead.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from reference import slot_allowed

from pipecat_localtts.engine.batched import BatchedEngine
from pipecat_localtts.engine.llama import LlamaRunner
from pipecat_localtts.engine.request import BlockingSink, Request
from pipecat_localtts.engine.sampling import (
    GenerationParams,
    apply_repetition_penalty,
    sample_token,
)
from pipecat_localtts.errors import GenerationError, UnknownVoiceError
from pipecat_localtts.models import orpheus as o
from pipecat_localtts.testing import tiny_orpheus

GREEDY = GenerationParams(temperature=0.0, repetition_penalty=1.0, max_tokens=42)


@pytest.fixture(scope="module")
def model():
    return tiny_orpheus(seed=0)


@pytest.fixture
def engine(model):
    eng = BatchedEngine(model, max_tokens=512)
    eng.start()
    yield eng
    eng.close()


def run(engine: BatchedEngine, text: str, params: GenerationParams, voice: str = "tara"):
    sink = BlockingSink()
    req = engine.submit(text, voice, params, sink)
    audio = list(sink)
    assert req.wait(5)
    return req, (np.concatenate(audio) if audio else np.zeros(0, np.float32))


class Recorder:
    """A sink that records audio and calls ``hook`` on every piece (codec thread)."""

    def __init__(self, hook=None):
        self.pieces: list[np.ndarray] = []
        self.hook = hook
        self.finished = threading.Event()

    def on_audio(self, pcm):
        self.pieces.append(pcm)
        if self.hook:
            self.hook(self)

    def on_done(self, request: Request):
        self.finished.set()


@pytest.fixture(scope="module")
def steerable():
    """The tiny model with an output layer of its own in which only the stop token reads hidden
    dimension 0 (the other rows are zero there): setting that dimension of the hidden states
    the runner returns moves the stop token's logit and nothing else."""
    m = tiny_orpheus(seed=0)
    weight = m.lm.lm_head.weight.detach().clone()  # [V, H]
    weight[:, 0] = 0.0
    weight[o.END_OF_SPEECH, 0] = 1.0
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    head.weight = torch.nn.Parameter(weight, requires_grad=False)
    m.lm.lm_head = head
    return m


def steer_stop(monkeypatch, *, before: float, after: float, from_position: int):
    """One request at a time: the stop token's logit is ``before`` at the audio positions
    before ``from_position`` and ``after`` from there on (the codes' logits unchanged)."""
    real_prefill, real_decode = LlamaRunner.prefill, LlamaRunner.decode
    position = {"n": 0}

    def steered(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.clone()
        hidden[..., 0] = before if position["n"] < from_position else after
        return hidden

    def prefill(self, slot, ids, start=0):
        position["n"] = 0  # the prefill gives the first audio token
        return steered(real_prefill(self, slot, ids, start))

    def decode(self, slots, tokens):
        position["n"] += 1
        return steered(real_decode(self, slots, tokens))

    monkeypatch.setattr(LlamaRunner, "prefill", prefill)
    monkeypatch.setattr(LlamaRunner, "decode", decode)


def test_constrained_sampling_only_produces_valid_audio_tokens(engine):
    req, audio = run(engine, "Hello there.", GenerationParams(seed=3, max_tokens=70))
    assert req.finish_reason == "length" and len(req.tokens) == 70
    assert all(slot_allowed(i)[t] for i, t in enumerate(req.tokens))
    assert len(set(req.tokens)) > 35  # sampled, not one token over and over
    assert req.dropped_frames == 0
    assert audio.size == 10 * 2048  # every frame decoded, first and last included


def test_streamed_audio_equals_offline_decode_of_the_generated_frames(engine, model):
    req, audio = run(engine, "Streaming check.", GenerationParams(seed=1, max_tokens=84))
    parser = o.OrpheusFrameParser()
    frames = [f for f in map(parser.push, req.tokens) if f is not None]
    assert len(frames) == 12
    np.testing.assert_allclose(audio, model.codec.decode(frames), atol=1e-4, rtol=0)


def test_seeded_sampling_is_reproducible(engine):
    params = GenerationParams(seed=1234, max_tokens=70)
    a, audio_a = run(engine, "Same seed.", params)
    b, audio_b = run(engine, "Same seed.", params)
    c, _ = run(engine, "Same seed.", GenerationParams(seed=99, max_tokens=70))
    unseeded = [run(engine, "Same seed.", GenerationParams(max_tokens=70))[0] for _ in range(2)]
    assert a.tokens == b.tokens
    # Codec windows depend on timing (frames waiting are decoded together): equal to 1e-5.
    np.testing.assert_allclose(audio_a, audio_b, atol=1e-5, rtol=0)
    assert c.tokens != a.tokens
    assert unseeded[0].tokens != unseeded[1].tokens  # no seed: fresh randomness each time


def test_stop_token_ends_the_utterance_and_flushes_the_last_frames(steerable, monkeypatch):
    engine = BatchedEngine(steerable, max_tokens=512)
    engine.start()
    try:
        # From audio position 15 on, the model "wants" to stop.
        steer_stop(monkeypatch, before=-1e3, after=1e3, from_position=15)
        req, audio = run(engine, "Stop me.", GenerationParams(seed=0, max_tokens=700))
    finally:
        engine.close()
    assert req.finish_reason == "stop"
    # The stop is only allowed at a frame boundary: position 21, after 3 whole frames.
    assert req.tokens[-1] == o.END_OF_SPEECH and len(req.tokens) == 22
    assert o.END_OF_SPEECH not in req.tokens[:-1]
    assert audio.size == 3 * 2048


def test_max_token_guard_ends_a_model_that_never_stops(steerable, monkeypatch):
    engine = BatchedEngine(steerable, max_tokens=512)
    engine.start()
    try:
        steer_stop(monkeypatch, before=-1e3, after=-1e3, from_position=0)
        short, audio = run(engine, "Hi.", GenerationParams(seed=0))
        text = "This is a much longer sentence that needs more audio time. " * 2
        longer, _ = run(engine, text, GenerationParams(seed=0))
    finally:
        engine.close()
    assert short.finish_reason == longer.finish_reason == "length"
    assert len(short.tokens) == short.max_new_tokens == 24 * 7  # the 2 s floor, whole frames
    assert len(longer.tokens) == longer.max_new_tokens > 2 * len(short.tokens)
    assert longer.max_new_tokens == 511  # the engine's 512-token room, whole frames
    assert audio.size == 24 * 2048


def test_unknown_voice_raises_at_submit(engine):
    with pytest.raises(UnknownVoiceError):
        engine.submit("Hello", "nobody", GREEDY, BlockingSink())
    assert engine.idle and engine.waiting == 0  # nothing was queued


@pytest.mark.parametrize("cancel_after_pieces", [1, 3])
def test_cancel_from_another_thread_stops_within_one_step_and_the_next_request_runs(
    model, monkeypatch, cancel_after_pieces
):
    engine = BatchedEngine(model, max_batch=1, max_tokens=512)  # the next request needs the slot
    engine.start()
    real = LlamaRunner.decode

    def slow_decode(self, slots, tokens):  # steps a little longer, so the cancel lands mid-step
        time.sleep(0.004)
        return real(self, slots, tokens)

    monkeypatch.setattr(LlamaRunner, "decode", slow_decode)
    try:
        canceller_done = threading.Event()
        holder: dict[str, Request] = {}

        def cancel_from_other_thread(rec: Recorder):
            if len(rec.pieces) == cancel_after_pieces:

                def later():
                    time.sleep(0.003)  # somewhere in the middle of a step
                    holder["req"].cancel()
                    canceller_done.set()

                threading.Thread(target=later).start()

        rec = Recorder(cancel_from_other_thread)
        text = "A long sentence to be interrupted. " * 3
        holder["req"] = req = engine.submit(text, "tara", GenerationParams(seed=0), rec)
        assert canceller_done.wait(10)
        nxt = BlockingSink()
        req2 = engine.submit("Next turn.", "tara", GenerationParams(seed=0, max_tokens=70), nxt)
        audio2 = list(nxt)
        assert req.wait(5) and rec.finished.is_set()
        assert req.finish_reason == "cancelled"
        assert req.steps - req.steps_at_cancel <= 1
        assert len(req.tokens) < req.max_new_tokens
        # The next request ran normally, in the slot the cancelled one left.
        assert req2.finish_reason == "length" and sum(a.size for a in audio2) == 10 * 2048
        assert req2.t_admitted >= req.t_lm_done  # its codec work ends on its own thread
        assert engine.idle
    finally:
        engine.close()


def test_warm_up_runs_before_requests_and_its_failure_is_reported(model, monkeypatch):
    eng = BatchedEngine(model, max_tokens=512)
    eng.start()
    assert eng.steps > 0 and eng.idle  # a short utterance ran through every stage, and ended
    eng.close()

    def explode(self, slots, tokens):
        raise RuntimeError("bad kernel")

    monkeypatch.setattr(LlamaRunner, "decode", explode)
    broken = BatchedEngine(model, max_tokens=512)
    with pytest.raises(GenerationError, match="warm-up failed.*bad kernel"):
        broken.start()
    broken.close()
    assert not broken.running


def test_request_timings_are_recorded(engine):
    req, _ = run(engine, "Timings.", GenerationParams(seed=0, max_tokens=70))
    assert req.t_submit <= req.t_admitted == req.t_start <= req.t_prefilled
    assert req.t_prefilled <= req.t_first_window <= req.t_first_audio <= req.t_done
    # Accounting, not speed: both were measured, and each is a sum of intervals that run one
    # after another inside the request's own wall-clock span (LM steps on the LM thread, decodes
    # on its codec thread, in parallel with each other), so no load can break these.
    assert req.lm_seconds > 0 and req.codec_seconds > 0
    assert req.t_prefilled <= req.t_lm_done <= req.t_done
    assert req.lm_seconds <= req.t_lm_done - req.t_prefilled
    assert req.codec_seconds <= req.t_done - req.t_prefilled


# ---------------------------------------------------------------------------- parameters


def test_repetition_penalty_and_top_p():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    seen = torch.tensor([True, True, False, False])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [1.0, -2.0, 0.5, 3.0]
    # top_p small enough keeps only the argmax.
    gen = torch.Generator().manual_seed(0)
    params = GenerationParams(temperature=1.0, top_p=0.1)
    picks = {int(sample_token(torch.tensor([0.0, 5.0, 1.0]), params, gen)) for _ in range(50)}
    assert picks == {1}
    # top_p = 1 samples from everything.
    params = GenerationParams(temperature=5.0, top_p=1.0)
    picks = {int(sample_token(torch.tensor([0.0, 0.5, 1.0]), params, gen)) for _ in range(200)}
    assert picks == {0, 1, 2}


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(repetition_penalty=0.9), dict(max_tokens=3)],
)
def test_generation_params_validation(kwargs):
    with pytest.raises(ValueError):
        GenerationParams(**kwargs)
