"""The service when the engine is slow: several pipelines on one shared model, barge-ins,
first audio later than Pipecat's ``stop_frame_timeout_s``, and a request that fails.

The engine is made slow deterministically (a patched runner that sleeps in every prefill and
decode step of the shared model), so these tests do not depend on how loaded the machine is:
every first audio comes later than the context timeout, as it does on a loaded CPU.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager

import torch
from live_pipeline import InterruptionAudit, LivePipeline
from pipecat.frames.frames import (
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)

from pipecat_localtts import LocalTTSService
from pipecat_localtts.engine.llama import LlamaRunner
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.testing import tiny_orpheus

TIMEOUT = 0.25  # stop_frame_timeout_s: how long Pipecat waits for a context's next audio
PREFILL_DELAY = 0.6  # > TIMEOUT: every request's first audio comes after the timeout
STEP_DELAY = 0.005  # per decode step: a long utterance is still generating well after its first audio
PARAMS = GenerationParams(seed=0, guard_seconds_per_char=0.02, guard_min_seconds=0.5)
LONG = "This answer goes on and on and would take quite a long time to say out loud, you see."


@contextmanager
def slow_engine(model):
    """Every prefill takes PREFILL_DELAY longer, every (batched) decode step STEP_DELAY."""
    prefill, decode = LlamaRunner.prefill, LlamaRunner.decode

    def slow_prefill(self, slot, ids, start=0):
        time.sleep(PREFILL_DELAY)
        return prefill(self, slot, ids, start)

    def slow_decode(self, slots, tokens):
        time.sleep(STEP_DELAY)
        return decode(self, slots, tokens)

    LlamaRunner.prefill, LlamaRunner.decode = slow_prefill, slow_decode
    try:
        yield
    finally:
        LlamaRunner.prefill, LlamaRunner.decode = prefill, decode


def service(model, **kwargs) -> LocalTTSService:
    return LocalTTSService(model=model, params=PARAMS, stop_frame_timeout_s=TIMEOUT, **kwargs)


def assert_one_whole_context(p: LivePipeline, context_id: str) -> None:
    """The context opened once, played all its audio, and closed once, in that order: it
    was not closed early by the timeout (and reopened by its late audio)."""
    frames = [f for f in p.down if getattr(f, "context_id", None) == context_id]
    kinds = [type(f) for f in frames if isinstance(f, (TTSStartedFrame, TTSStoppedFrame, TTSAudioRawFrame))]
    assert kinds.count(TTSStartedFrame) == 1 and kinds.count(TTSStoppedFrame) == 1, kinds
    assert kinds[0] is TTSStartedFrame and kinds[-1] is TTSStoppedFrame and TTSAudioRawFrame in kinds


async def test_barge_in_on_one_of_four_pipelines_sharing_a_slow_model_is_no_error():
    model = tiny_orpheus()
    services = [service(model) for _ in range(4)]
    audit = InterruptionAudit(services[0])
    with slow_engine(model):
        async with (
            LivePipeline(services[0]) as barged,
            LivePipeline(services[1]) as b,
            LivePipeline(services[2]) as c,
            LivePipeline(services[3]) as d,
        ):
            others = [b, c, d]
            for p in (barged, *others):
                await p.send(TTSSpeakFrame(LONG))
            await barged.until(lambda: barged.audio(), 30, "the first audio of the long answer")
            await barged.interrupt()  # the user barges in mid-utterance...
            await barged.send(TTSSpeakFrame("Okay, stopping."))  # ...and the bot answers at once
            await barged.until(lambda: len(barged.started_contexts()) == 2, 30, "the answer's context")
            answer = barged.started_contexts()[1]
            await barged.until(lambda: barged.stopped(answer), 30, "the answer to be spoken")
            for p in others:
                await p.until(lambda p=p: p.started_contexts() and p.stopped(p.started_contexts()[0]), 60, "the long answer")
    for p in (barged, *others):
        assert not p.errors, [e.error for e in p.errors]
    # The interrupted turn: cancelled in the engine, none of its audio after the barge-in.
    assert audit.handled == 1 and not audit.stray, audit.stray
    assert services[0].requests[0].finish_reason == "cancelled"
    # The answer after it, and the other pipelines' turns, each played whole in one context.
    assert_one_whole_context(barged, answer)
    for p in others:
        assert_one_whole_context(p, p.started_contexts()[0])


async def test_first_audio_slower_than_the_context_timeout_keeps_the_turn_in_one_context():
    model = tiny_orpheus()
    text = "Sure, I can help with that. The weather today is sunny with a light breeze."
    with slow_engine(model):
        async with LivePipeline(service(model)) as p:
            await p.send(LLMFullResponseStartFrame())
            for i in range(0, len(text), 5):
                await p.send(LLMTextFrame(text[i : i + 5]))
            await p.send(LLMFullResponseEndFrame())
            await p.until(lambda: p.started_contexts() and p.stopped(p.started_contexts()[0]), 30, "the turn")
    assert not p.errors, [e.error for e in p.errors]
    requests = p.service.requests
    assert len(requests) == 2  # two chunks, each with a first audio after the timeout
    (turn,) = p.started_contexts()
    assert_one_whole_context(p, turn)
    assert sum(len(f.audio) // 2 for f in p.audio(turn)) == sum(r.audio_samples for r in requests)


async def test_a_failed_request_is_reported_exactly_once(monkeypatch):
    model = tiny_orpheus()
    failing = model.build_prompt("This one fails.", "tara")
    prefill = LlamaRunner.prefill

    def fail(self, slot, ids, start=0):
        if list(ids) == failing:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return prefill(self, slot, ids, start)

    monkeypatch.setattr(LlamaRunner, "prefill", fail)
    async with LivePipeline(service(model)) as p:
        await p.send(TTSSpeakFrame("This one fails."))
        await p.until(lambda: p.started_contexts() and p.stopped(p.started_contexts()[0]), 30, "the failed turn to end")
        await p.send(TTSSpeakFrame("And this one works."))
        await p.until(lambda: len(p.started_contexts()) == 2 and p.stopped(p.started_contexts()[1]), 30, "the next turn")
        await asyncio.sleep(2 * TIMEOUT)  # room for a late report of the failed context
    # Ours, saying what failed; not a second one from Pipecat about a context without audio.
    assert len(p.errors) == 1 and "out of memory" in p.errors[0].error, [e.error for e in p.errors]
    assert [r.finish_reason for r in p.service.requests] == ["error", "length"]
    assert p.audio(p.started_contexts()[1])
