"""LocalTTSService in real Pipecat pipelines (run_test), on the tiny random Orpheus."""

from __future__ import annotations

from collections import deque

import asyncio

import numpy as np

import pytest
from pipecat.frames.frames import (
    CancelFrame,
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test

from pipecat_localtts import LocalTTSService
from pipecat_localtts.chunking import ChunkerConfig, split_text
from pipecat_localtts.engine.request import Request
from pipecat_localtts.engine.shared import ENGINES
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.errors import UnknownVoiceError
from pipecat_localtts.models.orpheus import END_OF_SPEECH
from pipecat_localtts.testing import save_orpheus, tiny_orpheus

RATE = 24000
FRAME = 2048  # samples per codec frame
# Short utterances keep the tests fast: random weights always run to the guard.
QUICK = GenerationParams(seed=0, guard_seconds_per_char=0.004, guard_min_seconds=0.3)


def make_service(**kwargs) -> LocalTTSService:
    kwargs.setdefault("model", tiny_orpheus())
    kwargs.setdefault("params", QUICK)
    return LocalTTSService(**kwargs)


def audio_frames(frames, context_id=None):
    return [
        f
        for f in frames
        if isinstance(f, TTSAudioRawFrame) and (context_id is None or f.context_id == context_id)
    ]


def samples(frames) -> int:
    return sum(len(f.audio) // 2 for f in frames)


def generated_samples(requests) -> int:
    """Samples the codec must have produced for these requests: every whole frame."""
    frames = sum(len([t for t in r.tokens if t != END_OF_SPEECH]) // 7 for r in requests)
    return frames * FRAME


def spoken_texts(service: LocalTTSService) -> list[str]:
    return [r.text for r in service._history]


@pytest.fixture(autouse=True)
def record_requests(monkeypatch):
    """Each service's requests, with their text, as ``service._history`` (the engine keeps none)."""
    original_load = LocalTTSService.load

    async def load_and_record(self):
        await original_load(self)
        self._history = self._request_log
        self._history_engine = self._engine

    monkeypatch.setattr(LocalTTSService, "load", load_and_record)


def llm_turn(text: str, piece: int = 4, pause: float = 0.0):
    frames = [LLMFullResponseStartFrame()]
    for i in range(0, len(text), piece):
        frames.append(LLMTextFrame(text[i : i + piece]))
        if pause:
            frames.append(SleepFrame(sleep=pause))
    frames.append(LLMFullResponseEndFrame())
    return frames


async def test_multi_sentence_llm_turn_is_spoken_in_adaptive_chunks():
    service = make_service()
    text = (
        "Sure, I can help with that. The weather today is sunny with a light breeze. "
        "Bring a jacket for the evening."
    )
    down, up = await run_test(service, frames_to_send=llm_turn(text), pipeline_params=PipelineParams())
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    chunks = spoken_texts(service)
    # "Sure," alone is too short a first chunk; the short last sentence waits for the flush.
    assert chunks == [
        "Sure, I can help with that.",
        "The weather today is sunny with a light breeze.",
        "Bring a jacket for the evening.",
    ]
    started = [f for f in down if isinstance(f, TTSStartedFrame)]
    stopped = [f for f in down if isinstance(f, TTSStoppedFrame)]
    assert len(started) == len(stopped) == 1  # one pair per LLM turn
    audio = audio_frames(down)
    assert audio and all(f.sample_rate == RATE and f.num_channels == 1 for f in audio)
    assert all(len(f.audio) // 2 <= FRAME for f in audio)  # pieces of at most ~85 ms
    assert samples(audio) == generated_samples(service._history)  # nothing lost, first or last
    order = [type(f) for f in down]
    assert order.index(TTSStartedFrame) < order.index(TTSAudioRawFrame)
    assert max(i for i, t in enumerate(order) if t is TTSAudioRawFrame) < order.index(TTSStoppedFrame)


async def test_first_chunk_goes_to_the_model_before_the_sentence_ends():
    service = make_service()
    text = "Well, let me think about that for a second because it is a long sentence indeed."
    frames = llm_turn(text, piece=3, pause=0.01)
    down, _ = await run_test(service, frames_to_send=frames)
    chunks = spoken_texts(service)
    # No clause boundary after three words: the first chunk is cut at eight words, long
    # before the sentence ends; the rest of the sentence follows as one chunk.
    assert chunks == ["Well, let me think about that for a", "second because it is a long sentence indeed."]


async def test_tts_speak_frame_is_spoken_as_its_own_context():
    service = make_service()
    down, up = await run_test(service, frames_to_send=[TTSSpeakFrame("Hello there, friend.")])
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    audio = audio_frames(down)
    assert len({f.context_id for f in audio}) == 1
    assert samples(audio) == generated_samples(service._history)
    assert [type(f) for f in down if isinstance(f, (TTSStartedFrame, TTSStoppedFrame))] == [
        TTSStartedFrame,
        TTSStoppedFrame,
    ]


async def test_interruption_stops_audio_and_engine_and_next_turn_speaks():
    service = make_service(params=GenerationParams(seed=0))  # long utterance: ~8 s of tokens
    long_text = "This answer goes on and on and would take a very long time to say out loud. " * 2
    frames = [
        TTSSpeakFrame(long_text),
        SleepFrame(sleep=0.6),
        InterruptionFrame(),
        SleepFrame(sleep=0.1),
        TTSSpeakFrame("Okay, stopping."),
    ]
    down, up = await run_test(service, frames_to_send=frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    history = service._history
    first, second = history[0], history[-1]
    assert first.finish_reason == "cancelled"
    assert first.steps - first.steps_at_cancel <= 1
    assert len(first.tokens) < first.max_new_tokens
    assert second.text == "Okay, stopping." and second.finish_reason in ("length", "stop")
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    first_ctx = audio_frames(down[:cut])
    assert first_ctx, "some audio of the first turn played before the interruption"
    ctx1 = first_ctx[0].context_id
    after = audio_frames(down[cut:])
    assert after and all(f.context_id != ctx1 for f in after)
    assert samples(after) == (second.audio_samples)


async def test_cancel_frame_stops_generation_within_one_step():
    service = make_service(params=GenerationParams(seed=0))
    frames = [TTSSpeakFrame("A long answer that will be cancelled right in the middle of it. " * 2), SleepFrame(sleep=0.5), CancelFrame()]
    down, _ = await run_test(service, frames_to_send=frames, send_end_frame=False)
    req = service._history[0]
    assert req.finish_reason == "cancelled" and req.steps - req.steps_at_cancel <= 1
    assert service.engine is None  # shut down


async def test_end_frame_finishes_queued_speech_then_shuts_down():
    service = make_service()
    texts = ["First thing to say.", "Second thing to say."]
    down, _ = await run_test(service, frames_to_send=[TTSSpeakFrame(t) for t in texts])
    assert samples(audio_frames(down)) == generated_samples(service._history)
    assert service.engine is None


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "...", "?!", "— ,;", "😀🎉👍", "*** ###"])
async def test_unspeakable_text_produces_no_audio_and_no_error(text):
    service = make_service()
    frames = [TTSSpeakFrame(text), *llm_turn(text or " "), TTSSpeakFrame("Still working.")]
    down, up = await run_test(service, frames_to_send=frames)
    assert not [f for f in up + down if isinstance(f, ErrorFrame)]
    assert spoken_texts(service) == ["Still working."]
    assert samples(audio_frames(down)) == generated_samples(service._history)


def test_unknown_voice_at_construction_is_a_clear_error():
    with pytest.raises(UnknownVoiceError, match="'nobody'"):
        make_service(voice="nobody")


async def test_unknown_voice_set_at_runtime_is_an_error_frame_and_pipeline_goes_on():
    service = make_service()
    frames = [
        TTSUpdateSettingsFrame(delta=LocalTTSService.Settings(voice="nobody")),
        TTSSpeakFrame("Who am I?"),
        SleepFrame(sleep=0.2),
        TTSUpdateSettingsFrame(delta=LocalTTSService.Settings(voice="leo")),
        TTSSpeakFrame("I am Leo."),
    ]
    down, up = await run_test(service, frames_to_send=frames)
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert any("unknown voice 'nobody'" in f.error for f in errors)
    assert spoken_texts(service) == ["I am Leo."]
    assert samples(audio_frames(down)) == generated_samples(service._history)


async def test_model_error_becomes_error_frame_and_next_turn_works(monkeypatch):
    import torch

    from pipecat_localtts.engine.llama import LlamaRunner

    service = make_service()
    failing_prompt = service.model.build_prompt("This one fails.", "tara")
    failing_slots: set[int] = set()
    steps = {"n": 0}
    prefill, decode = LlamaRunner.prefill, LlamaRunner.decode

    def watch_prefill(self, slot, ids, start=0):
        (failing_slots.add if list(ids) == failing_prompt else failing_slots.discard)(slot)
        return prefill(self, slot, ids, start)

    def fail_in_third_step(self, slots, tokens):
        # The model runs out of memory a few steps into this request only.
        if failing_slots & set(slots):
            steps["n"] += 1
            if steps["n"] == 3:
                failing_slots.clear()
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return decode(self, slots, tokens)

    monkeypatch.setattr(LlamaRunner, "prefill", watch_prefill)
    monkeypatch.setattr(LlamaRunner, "decode", fail_in_third_step)
    frames = [TTSSpeakFrame("This one fails."), SleepFrame(sleep=0.3), TTSSpeakFrame("And this one works fine.")]
    down, up = await run_test(service, frames_to_send=frames)
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    # Ours, with the cause; not a second one from Pipecat about the context left without audio.
    assert len(errors) == 1 and "out of memory" in errors[0].error
    assert [r.finish_reason for r in service._history][0] == "error"
    assert service._history[1].finish_reason in ("length", "stop")
    assert samples(audio_frames(down)) == generated_samples(service._history) > 0


async def test_very_long_text_is_spoken_chunk_by_chunk():
    service = make_service(params=GenerationParams(seed=0, guard_seconds_per_char=0.0005, guard_min_seconds=0.2))
    sentence = "Here is sentence number {} of a long reading, with a clause or two, and 3.14 in it. "
    text = "".join(sentence.format(i) for i in range(70))
    assert len(text) > 5000
    down, up = await run_test(service, frames_to_send=[TTSSpeakFrame(text)])
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    chunks = spoken_texts(service)
    assert chunks == split_text(text, ChunkerConfig())
    assert len(chunks) > 15 and all(len(c) <= ChunkerConfig().max_chunk_chars for c in chunks)
    assert all(r.finish_reason in ("length", "stop") for r in service._history)
    assert samples(audio_frames(down)) == generated_samples(service._history)


async def test_other_output_rate_is_resampled_without_losing_the_tail():
    service = make_service(sample_rate=16000)
    down, _ = await run_test(service, frames_to_send=[TTSSpeakFrame("Resample me, please.")])
    audio = audio_frames(down)
    assert audio and all(f.sample_rate == 16000 for f in audio)
    native = generated_samples(service._history)
    assert abs(samples(audio) - native * 2 // 3) <= 2


async def test_ttfb_and_usage_metrics_are_reported():
    service = make_service()
    down, _ = await run_test(
        service,
        frames_to_send=[TTSSpeakFrame("Metrics please.")],
        pipeline_params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
    )
    metrics = [d for f in down if isinstance(f, MetricsFrame) for d in f.data]
    ttfb = [d for d in metrics if isinstance(d, TTFBMetricsData)]
    assert any(d.value > 0 and d.model == "tiny" for d in ttfb)
    assert any(type(d).__name__ == "TTSUsageMetricsData" for d in metrics)


async def test_model_loaded_from_a_directory_in_start(tmp_path):
    save_orpheus(tiny_orpheus(), tmp_path / "ckpt")
    service = LocalTTSService(model=str(tmp_path / "ckpt"), device="cpu", params=QUICK)
    assert service.model is None  # nothing loaded at construction
    down, up = await run_test(service, frames_to_send=[TTSSpeakFrame("Loaded from disk.")], start_timeout=30)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert samples(audio_frames(down)) == generated_samples(service._history)


async def test_unloadable_model_reports_errors_and_keeps_the_pipeline_alive(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    service = LocalTTSService(model="canopylabs/no-such-model", device="cpu")
    frames = [TTSSpeakFrame("Hello?"), SleepFrame(sleep=0.1), TTSSpeakFrame("Anyone?")]
    down, up = await asyncio.wait_for(run_test(service, frames_to_send=frames, start_timeout=30), 60)
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert any("canopylabs/no-such-model" in e for e in errors)
    assert sum("cannot synthesize" in e for e in errors) == 2
    assert not audio_frames(down)


async def test_interrupted_llm_turn_leaves_nothing_behind_for_the_next_turn():
    service = make_service(params=GenerationParams(seed=0))  # long utterances
    first = "Let me tell you a very long story about the sea, the wind and the old lighthouse keeper."
    second = "Sure, here is a short answer. It is yes."
    # Turn 1 streams slowly and is interrupted while its text is still partly buffered.
    frames = [*llm_turn(first, piece=6, pause=0.05)[:-1]]  # no end frame: the LLM is cut off
    frames = frames[: len(frames) // 2]
    frames += [SleepFrame(sleep=0.3), InterruptionFrame(), SleepFrame(sleep=0.05)]
    frames += llm_turn(second)
    down, up = await run_test(service, frames_to_send=frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    history = service._history
    cancelled = [r for r in history if r.finish_reason == "cancelled"]
    assert cancelled and all(r.steps - r.steps_at_cancel <= 1 for r in cancelled if r.steps_at_cancel)
    turn2 = [r.text for r in history if r.finish_reason != "cancelled"]
    # The buffered rest of turn 1 was dropped, not spoken at the start of turn 2.
    assert turn2 == ["Sure, here is a short answer.", "It is yes."]
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    turn1_contexts = {f.context_id for f in audio_frames(down[:cut])}
    after = audio_frames(down[cut:])
    assert turn1_contexts and after and not turn1_contexts & {f.context_id for f in after}
    assert samples(after) == generated_samples([r for r in history if r.finish_reason != "cancelled"])


async def test_repeated_failures_never_write_the_service_off():
    # Contexts that end without audio are closed after stop_frame_timeout_s; wait for that
    # each time, so Pipecat has counted every silent context before the next one.
    service = make_service(stop_frame_timeout_s=0.5)
    bad = [TTSUpdateSettingsFrame(delta=LocalTTSService.Settings(voice="nobody"))]
    for i in range(4):
        bad += [TTSSpeakFrame(f"Attempt {i}."), SleepFrame(sleep=0.8)]
    fixed = [TTSUpdateSettingsFrame(delta=LocalTTSService.Settings(voice="zoe")), TTSSpeakFrame("Fixed now.")]
    down, up = await run_test(service, frames_to_send=bad + fixed)
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert sum("unknown voice" in f.error for f in errors) == 4
    assert not any(f.fatal for f in errors)
    assert spoken_texts(service) == ["Fixed now."]
    assert samples(audio_frames(down)) == generated_samples(service._history) > 0


async def test_downstream_audio_is_the_exact_decode_with_faded_utterance_edges():
    """What reaches the transport is, utterance by utterance, the offline decode of the
    generated frames with a 5 ms fade in and out: no seam, nothing lost or altered between."""
    service = make_service()
    text = "Sure, I can help with that. The weather today is sunny with a light breeze."
    down, _ = await run_test(service, frames_to_send=llm_turn(text))
    model = service.model
    fade = round(0.005 * RATE)
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)
    expected = []
    for request in sorted(service._history, key=lambda r: r.t_submit):
        parser = model.new_parser()
        frames = [f for f in map(parser.push, request.tokens) if f is not None]
        audio = model.codec.decode(frames).astype(np.float64)
        audio[:fade] *= ramp
        audio[-fade:] *= ramp[::-1]
        expected.append((np.clip(audio, -1, 1) * 32767).astype(np.int16))
    assert len(expected) == 2
    got = np.frombuffer(b"".join(f.audio for f in audio_frames(down)), dtype=np.int16)
    want = np.concatenate(expected)
    assert got.shape == want.shape
    # Streaming equals offline to 1e-4 (about 3 LSB of int16); it is far closer in practice.
    assert np.abs(got.astype(np.int32) - want).max() <= 4
    # Where the two utterances meet, the signal is faded to (almost) zero on both sides.
    junction = expected[0].size
    assert abs(int(got[junction - 1])) < 200 and abs(int(got[junction])) < 200


async def test_services_of_one_model_share_one_engine_closed_by_the_last():
    model = tiny_orpheus()
    first, second = make_service(model=model), make_service(model=model)
    await first.load()
    await second.load()
    engine = first.engine
    assert engine is second.engine and ENGINES.users(model) == 2
    down, up = await run_test(first, frames_to_send=[TTSSpeakFrame("First call.")])
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert first.engine is None and engine.running and ENGINES.users(model) == 1  # still shared
    assert [r.text for r in first.requests] == ["First call."] and not second.requests
    down, up = await run_test(second, frames_to_send=[TTSSpeakFrame("Second call.")])
    assert samples(audio_frames(down)) == generated_samples(second.requests) > 0
    assert not engine.running and ENGINES.users(model) == 0  # the last one closed it
    # A new call starts a fresh engine.
    third = make_service(model=model)
    await run_test(third, frames_to_send=[TTSSpeakFrame("Third.")])
    assert third.requests[0].finish_reason in ("length", "stop")


async def test_the_engine_is_closed_at_the_end():
    service = make_service()
    await run_test(service, frames_to_send=[TTSSpeakFrame("Bye.")])
    assert service.engine is None and not service._history_engine.running


async def test_services_loading_the_same_directory_share_weights_and_engine(tmp_path):
    from pipecat_localtts.testing import save_orpheus

    save_orpheus(tiny_orpheus(), tmp_path / "ckpt")
    a = LocalTTSService(model=str(tmp_path / "ckpt"), device="cpu", params=QUICK)
    b = LocalTTSService(model=str(tmp_path / "ckpt"), device="cpu", params=QUICK)
    await a.load()
    await b.load()
    try:
        assert a.model is b.model and a.engine is b.engine
    finally:
        await a._close_engine()
        await b._close_engine()
    assert not a._history_engine.running


async def test_one_service_never_sees_another_service_s_text():
    model = tiny_orpheus()
    first, second = make_service(model=model), make_service(model=model)
    await first.load()
    await second.load()
    engine = first.engine
    try:
        await run_test(first, frames_to_send=[TTSSpeakFrame("A private sentence.")])
        assert [r.text for r in first.requests] == ["A private sentence."]
        assert not second.requests  # the second call sees nothing of the first
        # The shared engine holds no request (and so no text) once it is done with it.
        assert engine.running and engine.idle
        held = [v for v in vars(engine).values() if isinstance(v, (list, tuple, set, dict, deque))]
        assert not [x for v in held for x in (v.values() if isinstance(v, dict) else v) if isinstance(x, Request)]
    finally:
        await second._close_engine()


async def test_run_tts_is_traced_when_tracing_is_on_and_speaks_the_same_when_off(monkeypatch):
    from live_pipeline import LivePipeline
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer", provider.get_tracer)  # not the global provider
    spans = {}
    for tracing in (False, True):
        service = make_service()
        async with LivePipeline(service, enable_tracing=tracing) as p:
            await p.send(TTSSpeakFrame("Trace me, please."))
            await p.until(lambda: p.started_contexts() and p.stopped(p.started_contexts()[0]), 30, "speech")
        assert not p.errors and samples(p.audio()) == generated_samples(service._history)
        spans[tracing] = [s for s in exporter.get_finished_spans() if s.name == "tts"]
        exporter.clear()
    assert spans[False] == []  # tracing not configured: nothing recorded, nothing broken
    (span,) = spans[True]
    assert span.attributes["text"].strip() == "Trace me, please."
    assert span.attributes["gen_ai.request.model"] == "tiny"
