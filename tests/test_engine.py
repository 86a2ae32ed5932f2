"""Engine: KV-cached decoding, sampling, stop, guard, cancellation, failures."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
import torch

from pipecat_localtts.engine.engine import BlockingSink, Request, TTSEngine
from pipecat_localtts.engine.lm import CausalLM
from pipecat_localtts.engine.sampling import GenerationParams, apply_repetition_penalty, sample_token
from pipecat_localtts.errors import EngineClosedError, GenerationError, UnknownVoiceError
from pipecat_localtts.models import orpheus as o
from pipecat_localtts.testing import tiny_orpheus

GREEDY = GenerationParams(temperature=0.0, repetition_penalty=1.0, max_tokens=42)


@pytest.fixture
def model():
    return tiny_orpheus(seed=0)


@pytest.fixture
def engine(model):
    eng = TTSEngine(model, max_tokens=512)
    eng.start()
    yield eng
    eng.close()


@pytest.fixture
def full_head_engine(model):
    """An engine that runs the model's own output layer, so lm_head hooks see every step."""
    eng = TTSEngine(model, max_tokens=512, restrict_head=False)
    eng.start()
    yield eng
    eng.close()


def run(engine: TTSEngine, text: str, params: GenerationParams, voice: str = "tara"):
    sink = BlockingSink()
    req = engine.submit(text, voice, params, sink)
    audio = list(sink)
    assert req.wait(5)
    return req, (np.concatenate(audio) if audio else np.zeros(0, np.float32))


class Recorder:
    """A sink that records audio and calls ``hook`` on every piece (engine thread)."""

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


def slot_allowed(position: int) -> torch.Tensor:
    """Reference mask of the tokens allowed at an audio position (written independently)."""
    mask = torch.zeros(o.VOCAB_SIZE, dtype=torch.bool)
    slot = position % 7
    mask[128266 + 4096 * slot : 128266 + 4096 * (slot + 1)] = True
    if slot == 0:
        mask[128258] = True
    return mask


@pytest.mark.parametrize("constrained", [True, False])
def test_cached_generation_equals_uncached_greedy(engine, model, constrained):
    params = GenerationParams(
        temperature=0.0, repetition_penalty=1.0, max_tokens=42, constrain_audio_tokens=constrained
    )
    req, _ = run(engine, "Hello there.", params)
    assert req.finish_reason == "length" and len(req.tokens) == 42
    # Uncached reference: re-run the whole sequence for every token.
    seq = list(req.prompt_ids)
    with torch.inference_mode():
        for position in range(42):
            logits = model.lm(input_ids=torch.tensor([seq])).logits[0, -1]
            if constrained:
                logits = logits.masked_fill(~slot_allowed(position), float("-inf"))
            seq.append(int(logits.argmax()))
    assert req.tokens == seq[len(req.prompt_ids) :]
    # One prefill plus one step per further token: the prefix is never re-run.
    assert req.steps == 1 + 41


def test_constrained_sampling_only_produces_valid_audio_tokens(engine):
    req, audio = run(engine, "Hello there.", GenerationParams(seed=3, max_tokens=70))
    assert all(slot_allowed(i)[t] for i, t in enumerate(req.tokens))
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
    assert a.tokens == b.tokens
    # Codec windows depend on timing (frames waiting are decoded together): equal to 1e-5.
    np.testing.assert_allclose(audio_a, audio_b, atol=1e-5, rtol=0)
    assert c.tokens != a.tokens


def test_stop_token_ends_the_utterance_and_flushes_the_last_frames(full_head_engine, model):
    engine = full_head_engine
    calls = {"n": 0}

    def favour_stop(module, inputs, output):
        calls["n"] += 1
        if calls["n"] > 15:  # from audio position 15 on, the model "wants" to stop
            output = output.clone()
            output[..., o.END_OF_SPEECH] = 1e4
        return output

    handle = model.lm.lm_head.register_forward_hook(favour_stop)
    try:
        req, audio = run(engine, "Stop me.", GenerationParams(seed=0, max_tokens=700))
    finally:
        handle.remove()
    assert req.finish_reason == "stop"
    # The stop is only allowed at a frame boundary: position 21, after 3 whole frames.
    assert req.tokens[-1] == o.END_OF_SPEECH and len(req.tokens) == 22
    assert o.END_OF_SPEECH not in req.tokens[:-1]
    assert audio.size == 3 * 2048


def test_max_token_guard_ends_a_model_that_never_stops(full_head_engine, model):
    engine = full_head_engine
    def never_stop(module, inputs, output):
        output = output.clone()
        output[..., o.END_OF_SPEECH] = float("-inf")
        return output

    handle = model.lm.lm_head.register_forward_hook(never_stop)
    try:
        short, audio = run(engine, "Hi.", GenerationParams(seed=0))
        text = "This is a much longer sentence that needs more audio time. " * 2
        longer, _ = run(engine, text, GenerationParams(seed=0))
    finally:
        handle.remove()
    assert short.finish_reason == longer.finish_reason == "length"
    assert len(short.tokens) == short.max_new_tokens == 24 * 7
    assert len(longer.tokens) == longer.max_new_tokens > 2 * len(short.tokens)
    assert audio.size == 24 * 2048


def test_unknown_voice_raises_at_submit(engine):
    with pytest.raises(UnknownVoiceError):
        engine.submit("Hello", "nobody", GREEDY, BlockingSink())


def slow_model(model, seconds=0.004):
    """Make every forward pass take a little longer so cancellation lands mid-generation."""

    def hook(module, inputs, output):
        time.sleep(seconds)

    return model.lm.model.register_forward_hook(hook)


@pytest.mark.parametrize("cancel_after_pieces", [1, 3])
def test_cancel_stops_within_one_step_and_engine_takes_the_next_request(engine, model, cancel_after_pieces):
    handle = slow_model(model)
    try:
        params = GenerationParams(seed=0)
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
        holder["req"] = req = engine.submit("A long sentence to be interrupted. " * 3, "tara", params, rec)
        assert canceller_done.wait(10)
        nxt = BlockingSink()
        req2 = engine.submit("Next turn.", "tara", GenerationParams(seed=0, max_tokens=70), nxt)
        audio2 = list(nxt)
        assert req.wait(5) and rec.finished.is_set()
        assert req.finish_reason == "cancelled"
        assert req.steps - req.steps_at_cancel <= 1
        assert len(req.tokens) < req.max_new_tokens
        # The next request ran normally, after the cancelled one.
        assert req2.finish_reason == "length" and sum(a.size for a in audio2) == 10 * 2048
        assert req2.t_start >= req.t_lm_done  # the LM was free; its codec work ends on its own thread
        assert engine.idle
    finally:
        handle.remove()


def test_request_cancelled_before_it_starts_never_runs(engine):
    sink = BlockingSink()
    blocker = engine.submit("Blocking the engine for a while.", "tara", GenerationParams(seed=0), BlockingSink())
    queued = engine.submit("Never spoken.", "tara", GREEDY, sink)
    queued.cancel()
    blocker.cancel()
    assert list(sink) == []
    assert queued.finish_reason == "cancelled" and queued.steps == 0
    assert blocker.wait(5) and blocker.finish_reason == "cancelled"


def test_model_failure_becomes_a_request_error_and_the_engine_lives_on(engine, model):
    def explode(module, inputs, output):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = model.lm.model.register_forward_hook(explode)
    sink = BlockingSink()
    req = engine.submit("Boom.", "tara", GREEDY, sink)
    with pytest.raises(GenerationError, match="out of memory"):
        list(sink)
    handle.remove()
    assert req.finish_reason == "error"
    ok, audio = run(engine, "Fine again.", GREEDY)
    assert ok.finish_reason == "length" and audio.size == 6 * 2048


def test_close_ends_queued_requests_and_refuses_new_ones(model):
    eng = TTSEngine(model, max_tokens=512)
    eng.start()
    first = eng.submit("Keep the engine busy for a while please.", "tara", GenerationParams(seed=0), BlockingSink())
    sinks = [BlockingSink() for _ in range(3)]
    queued = [eng.submit("Queued.", "tara", GREEDY, s) for s in sinks]
    eng.close()
    assert first.wait(5) and all(q.wait(5) for q in queued)
    assert all(q.finish_reason == "cancelled" for q in queued)
    assert not eng.running
    with pytest.raises(EngineClosedError):
        eng.submit("Late.", "tara", GREEDY, BlockingSink())


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


def test_restricted_head_samples_exactly_what_the_full_head_would(model, engine, full_head_engine):
    params = GenerationParams(seed=11, max_tokens=140)
    a, audio_a = run(engine, "Same tokens either way.", params)
    b, audio_b = run(full_head_engine, "Same tokens either way.", params)
    assert a.tokens == b.tokens
    np.testing.assert_allclose(audio_a, audio_b, atol=1e-5, rtol=0)


def test_compiled_step_traces_and_gives_the_same_tokens(model, engine):
    # On a CPU the "eager" backend checks that the step traces (no graph break, static
    # shapes); on CUDA the same code path runs with CUDA graphs.
    compiled = TTSEngine(model, max_tokens=512, compile=True, compile_backend="eager")
    compiled.start()
    try:
        assert compiled._lm.compiled
        params = GenerationParams(seed=5, max_tokens=70)
        a, audio_a = run(compiled, "Compiled.", params)
        b, audio_b = run(engine, "Compiled.", params)
        assert a.tokens == b.tokens
        np.testing.assert_allclose(audio_a, audio_b, atol=1e-5, rtol=0)
    finally:
        compiled.close()


def test_a_head_that_is_not_a_plain_projection_falls_back_to_full_logits(model):
    def scaled(module, inputs, output):
        return output * 0.5  # e.g. a model with logit scaling

    handle = model.lm.lm_head.register_forward_hook(scaled)
    eng = TTSEngine(model, max_tokens=512)
    try:
        eng.start()
        assert not eng._lm.head_is_linear
        params = GenerationParams(temperature=0.0, repetition_penalty=1.0, max_tokens=28)
        req, _ = run(eng, "Scaled.", params)
        seq = list(req.prompt_ids)
        with torch.inference_mode():
            for position in range(28):
                logits = model.lm(input_ids=torch.tensor([seq])).logits[0, -1]
                seq.append(int(logits.masked_fill(~slot_allowed(position), float("-inf")).argmax()))
        assert req.tokens == seq[len(req.prompt_ids) :]
    finally:
        handle.remove()
        eng.close()


def test_warm_up_runs_before_requests_and_its_failure_is_reported(model):
    eng = TTSEngine(model, max_tokens=512)
    eng.start()
    assert len(eng.history) == 0 and eng.idle  # warm-up is not a request
    eng.close()

    def explode(module, inputs, output):
        raise RuntimeError("bad kernel")

    handle = model.lm.model.register_forward_hook(explode)
    try:
        broken = TTSEngine(model, max_tokens=512)
        with pytest.raises(GenerationError, match="warm-up failed.*bad kernel"):
            broken.start()
        broken.close()
    finally:
        handle.remove()


def test_request_timings_are_recorded(engine):
    req, _ = run(engine, "Timings.", GenerationParams(seed=0, max_tokens=70))
    assert req.t_submit <= req.t_start <= req.t_prefilled <= req.t_first_window <= req.t_first_audio <= req.t_done
    assert req.lm_seconds > 0 and req.codec_seconds > 0
    assert req.t_prefilled <= req.t_lm_done <= req.t_done
    assert req.lm_seconds <= req.t_lm_done - req.t_prefilled
    # The codec runs on its own thread, overlapping the LM: each fits in the wall time.
    assert req.codec_seconds <= req.t_done - req.t_prefilled


def test_kv_cache_is_allocated_once_and_reused_across_utterances(engine):
    run(engine, "First.", GenerationParams(seed=0, max_tokens=28))
    layer = engine._lm.cache.layers[0]
    pointers = (layer.keys.data_ptr(), layer.values.data_ptr())
    for text in ("Second one.", "A third, somewhat longer utterance."):
        run(engine, text, GenerationParams(seed=0, max_tokens=28))
        assert (layer.keys.data_ptr(), layer.values.data_ptr()) == pointers
    assert layer.keys.shape[-2] == engine._lm.max_len  # static shape: the full length
    assert engine._lm.pos == 0 and not layer.keys.any()  # reset between utterances


def test_decoding_calls_the_model_without_deprecated_arguments(model):
    lm = CausalLM(model.lm, max_len=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a FutureWarning/DeprecationWarning from our calls fails
        lm.prefill(model.build_prompt("Hello there.", "tara"))
        lm.step(o.AUDIO_TOKEN_BASE)
        lm.reset()
    assert lm.pos == 0
