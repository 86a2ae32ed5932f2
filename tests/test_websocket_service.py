"""``LocalTTSWebsocketService`` in real Pipecat pipelines against the real server (uvicorn on
127.0.0.1, tiny model): streamed turns, barge-in, the server going away and coming back."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest
from live_pipeline import InterruptionAudit, LivePipeline, streamed_turn
from pipecat.frames.frames import (
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.pipeline.worker import PipelineParams

from pipecat_localtts import LocalTTSWebsocketService
from pipecat_localtts.chunking import AdaptiveChunker
from pipecat_localtts.engine.sampling import GenerationParams

from server_harness import RunningServer, pcm_diff, solo_pcm

TURN = "Sure, I can help with that. Your order shipped yesterday and should arrive on Friday."
FADE = round(0.005 * 24000)


@pytest.fixture(scope="module")
def server():
    with RunningServer(api_key="k") as running:
        yield running


def service(server, **kwargs) -> LocalTTSWebsocketService:
    kwargs.setdefault("api_key", "k")
    kwargs.setdefault("params", GenerationParams(seed=11))
    return LocalTTSWebsocketService(url=server.ws_url, **kwargs)


def audio_bytes(frames) -> bytes:
    return b"".join(f.audio for f in frames if isinstance(f, TTSAudioRawFrame))


def expected(server, pieces: list[str], seed: int) -> bytes:
    chunker = AdaptiveChunker(server.config.chunking)
    chunks = [c for p in pieces for c in chunker.push(p)] + chunker.flush()
    texts = [t for c in chunks for t in server.tts.fit(c, "tara")]
    return solo_pcm(server.tts.engine, texts, "tara", server.tts.params({"seed": seed}), FADE)


async def test_a_streamed_llm_turn_speaks_the_servers_audio_with_metrics(server):
    frames = streamed_turn(TURN, random.Random(1), 6)
    pieces = [f.text for f in frames if isinstance(f, LLMTextFrame)]
    tts = service(server)
    params = PipelineParams(enable_metrics=True, enable_usage_metrics=True)
    async with LivePipeline(tts, params=params) as p:
        for frame in frames:
            await p.send(frame)
        await p.until(lambda: p.started_contexts() and p.stopped(p.started_contexts()[0]), 60, "the turn")
        down = p.down
    assert not p.errors, [e.error for e in p.errors]
    audio = audio_bytes(down)
    assert pcm_diff(audio, expected(server, pieces, 11)) <= 4
    assert all(f.sample_rate == 24000 for f in down if isinstance(f, TTSAudioRawFrame))
    metrics = [d for f in down if isinstance(f, MetricsFrame) for d in f.data]
    assert any(isinstance(d, TTFBMetricsData) and d.value > 0 for d in metrics)
    assert any(type(d).__name__ == "TTSUsageMetricsData" for d in metrics)


@pytest.fixture(scope="module")
def long_server():
    # Utterances of up to 30 s of audio: the turn is still being generated when the barge-in
    # comes, however fast the machine (with the default guard the tiny model's random speech
    # ends after a fraction of a second and a fast machine finishes it all before the interrupt).
    with RunningServer(api_key="k", params=GenerationParams(guard_min_seconds=30)) as running:
        yield running


async def test_barge_in_stops_the_server_and_the_next_turn_speaks(long_server):
    server = long_server
    server.wait_idle()
    before = len(server.tts.recent)
    tts = service(server, params=GenerationParams(seed=12, max_tokens=2048))
    audit = InterruptionAudit(tts)
    long = "This answer goes on and on, and would take quite a long time to say out loud. " * 3
    async with LivePipeline(tts) as p:
        await p.send(TTSSpeakFrame(long))
        await p.until(lambda: p.audio(), 60, "the first audio")
        first = p.started_contexts()[0]
        await p.interrupt()
        await p.until(lambda: audit.handled == 1, 10, "the interruption")
        # The server stops: every request of that context ends, cancelled.
        await asyncio.to_thread(server.wait_idle)
        barged = [r for r in list(server.tts.recent)[before:] if r.sample_seed == 12]
        assert barged and any(r.finish_reason == "cancelled" for r in barged)
        for r in barged:
            if r.finish_reason == "cancelled" and r.steps_at_cancel is not None:
                assert r.steps - r.steps_at_cancel <= 1
        await p.send(LLMFullResponseStartFrame())
        await p.send(LLMTextFrame("Okay, "))
        await p.send(LLMTextFrame("stopping."))
        await p.send(LLMFullResponseEndFrame())
        await p.until(lambda: len(p.started_contexts()) == 2, 30, "the next turn's context")
        nxt = p.started_contexts()[1]
        await p.until(lambda: p.stopped(nxt), 60, "the next turn")
    assert not p.errors, [e.error for e in p.errors]
    assert not audit.stray, audit.stray  # no audio of the interrupted turn after the barge-in
    assert p.audio(nxt) and nxt != first


async def test_an_unknown_voice_is_an_error_frame_and_the_pipeline_goes_on(server):
    tts = service(server, voice="nobody")
    async with LivePipeline(tts) as p:
        await p.send(TTSSpeakFrame("Hello?"))
        await p.until(lambda: p.errors, 30, "the error")
    assert "unknown voice 'nobody'" in p.errors[0].error


async def test_unreachable_server_at_start_is_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here once closed
    tts = LocalTTSWebsocketService(url=f"ws://127.0.0.1:{port}/v1/audio/stream", connect_timeout=2)
    async with LivePipeline(tts) as p:
        await p.until(lambda: p.errors, 15, "the connection error")
    assert f"127.0.0.1:{port}" in p.errors[0].error


async def test_wrong_api_key_is_reported(server):
    tts = service(server, api_key="wrong", reconnect_attempts=1)
    async with LivePipeline(tts) as p:
        await p.until(lambda: p.errors, 15, "the auth error")
    assert "401" in p.errors[0].error


async def test_server_stopped_mid_stream_then_back_and_the_next_turn_speaks():
    first = RunningServer(params=GenerationParams(guard_min_seconds=10))
    port = first.port
    tts = LocalTTSWebsocketService(
        url=f"http://127.0.0.1:{port}", params=GenerationParams(seed=3), reconnect_backoff_min_wait=0.3
    )
    with first:
        async with LivePipeline(tts) as p:
            await p.send(TTSSpeakFrame("A long answer that the server will never finish."))
            await p.until(lambda: p.audio(), 60, "the first audio")
            await asyncio.to_thread(first.__exit__, None, None, None)  # the server goes away mid-utterance
            await p.until(lambda: p.errors, 30, "the error report")
            assert any("cut off" in e.error for e in p.errors), [e.error for e in p.errors]
            with RunningServer(port=port):  # ... and comes back on the same port
                await p.until(lambda: tts._websocket is not None and tts._open == {}, 60, "the reconnection")
                count = len(p.started_contexts())
                await p.send(TTSSpeakFrame("I am back."))
                await p.until(lambda: len(p.started_contexts()) > count, 30, "the next turn's context")
                nxt = p.started_contexts()[-1]
                await p.until(lambda: p.stopped(nxt) and p.audio(nxt), 60, "the next turn")
