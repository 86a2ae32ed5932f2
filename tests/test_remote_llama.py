"""``lm_url`` against a real llama.cpp ``llama-server`` started by these tests on 127.0.0.1.

The speech LM is :func:`~pipecat_localtts.testing.slotted_orpheus` (tiny random weights that
keep Orpheus's frame slots) with a real Llama-3 tokenizer, converted to GGUF by llama.cpp's own
converter; the tokenizer and the codec load from the same checkpoint directory, the tokens
come from the server. Greedy audio equals the in-process engine's on the same weights; a
pipeline speaks through it, is interrupted (no audio after it, the server's slot released) and
speaks again; eight calls at once; the server killed mid-utterance and restarted; the CLI.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import openai
import pytest
from live_pipeline import InterruptionAudit, LivePipeline, streamed_turn
from llama_harness import F32_ARGS, LlamaServer, free_port, gguf_of, slots, wait_slots_idle
from loguru import logger
from pipecat.frames.frames import TTSSpeakFrame

from pipecat_localtts import LocalTTSService
from pipecat_localtts.cli import main
from pipecat_localtts.engine.batched import BatchedEngine
from pipecat_localtts.engine.remote import RemoteLM, RemoteTokenSource
from pipecat_localtts.engine.request import BlockingSink
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.errors import LMServerError
from pipecat_localtts.models import orpheus as o
from pipecat_localtts.models.orpheus import load_orpheus
from pipecat_localtts.testing import llama3_tokenizer, slotted_orpheus, tiny_orpheus_llama3

TEXT = "Hello there, how are you today?"
GREEDY = GenerationParams(temperature=0.0, seed=0, guard_min_seconds=1.0)


@pytest.fixture(autouse=True)
def restore_logging():
    """main() configures loguru for the command line; give other tests the default back."""
    yield
    logger.remove()
    logger.add(lambda message: sys.stderr.write(message))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The model object, and its checkpoint directory holding ``model.gguf`` too."""
    directory = tmp_path_factory.mktemp("slotted-llama3")
    model = slotted_orpheus(seed=0, tokenizer=llama3_tokenizer())
    gguf = gguf_of(model, directory)
    return model, directory, gguf


@pytest.fixture(scope="module")
def server(checkpoint):
    # f32 throughout (see F32_ARGS), to compare with the in-process engine.
    with LlamaServer(checkpoint[2], parallel=8, args=F32_ARGS) as running:
        yield running


def remote_engine(directory, url: str, **remote) -> BatchedEngine:
    model = load_orpheus(str(directory), device="cpu", lm=False)
    assert model.lm is None  # the tokenizer and the codec only
    source = RemoteTokenSource(RemoteLM(url, **remote), model.token_layout, name="remote")
    engine = BatchedEngine(model, max_batch=8, source=source)
    engine.start()
    return engine


def speak(engine: BatchedEngine, text: str, params: GenerationParams):
    sink = BlockingSink()
    request = engine.submit(text, "tara", params, sink)
    pieces = list(sink)
    return request, np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def test_greedy_audio_through_llama_server_equals_the_in_process_engine(checkpoint, server):
    model, directory, _ = checkpoint
    local = BatchedEngine(model, max_batch=2)
    local.start()
    remote = remote_engine(directory, server.url)
    try:
        assert remote.source.kind == "llama.cpp"
        for penalty in (1.0, 1.3):
            params = GenerationParams(temperature=0.0, repetition_penalty=penalty, seed=0, guard_min_seconds=1.0)
            r_local, a_local = speak(local, TEXT, params)
            r_remote, a_remote = speak(remote, TEXT, params)
            # The prompt went as ids: the same ids the in-process engine fed its LM.
            assert r_remote.prompt_ids == r_local.prompt_ids == model.build_prompt(TEXT, "tara")
            assert r_remote.finish_reason == r_local.finish_reason == "length"
            assert r_remote.dropped_frames == 0
            assert len(set(r_remote.tokens)) > 5 * o.TOKENS_PER_FRAME  # a varied continuation, not a loop
            assert r_remote.tokens == r_local.tokens
            assert a_remote.size == a_local.size > 0
            assert np.max(np.abs(a_remote - a_local)) < 1e-5  # the same codes: the same audio
    finally:
        remote.close()
        local.close()


def test_seeded_sampling_is_reproducible_and_audio_only(checkpoint, server):
    remote = remote_engine(checkpoint[1], server.url)
    try:
        params = GenerationParams(seed=5, guard_min_seconds=1.0)
        first, a = speak(remote, "Sampling at the reference settings.", params)
        again, b = speak(remote, "Sampling at the reference settings.", params)
        other, _ = speak(remote, "Sampling at the reference settings.", GenerationParams(seed=6, guard_min_seconds=1.0))
        assert first.tokens == again.tokens != other.tokens
        assert a.size == b.size > 0 and np.max(np.abs(a - b)) < 1e-5
        layout = remote.model.token_layout
        assert all(layout.union_lo <= t < layout.union_hi for t in first.tokens + other.tokens)
    finally:
        remote.close()


def test_out_of_slot_frames_are_dropped_counted_and_parsing_stays_in_step(tmp_path):
    """Random weights that ignore the frame slots: the server can keep output to the audio
    tokens, not to each slot, so most frames hold an out-of-slot token. Each such frame is
    dropped, counted, and the frames after it are parsed in step."""
    model = tiny_orpheus_llama3(seed=1, initializer_range=1.0)
    gguf = gguf_of(model, tmp_path)
    with LlamaServer(gguf, parallel=1) as running:
        remote = remote_engine(tmp_path, running.url)
        try:
            request, audio = speak(remote, "Anything at all.", GenerationParams(seed=2, guard_min_seconds=1.0))
        finally:
            remote.close()
    layout = remote.model.token_layout
    tokens = request.tokens
    assert len(tokens) >= 5 * o.TOKENS_PER_FRAME
    assert all(layout.union_lo <= t < layout.union_hi for t in tokens)  # audio tokens, any slot
    frames = [tokens[i : i + o.TOKENS_PER_FRAME] for i in range(0, len(tokens) - 6, o.TOKENS_PER_FRAME)]
    bad = sum(
        any(not (o.AUDIO_TOKEN_BASE + o.CODEBOOK_SIZE * s <= t < o.AUDIO_TOKEN_BASE + o.CODEBOOK_SIZE * (s + 1))
            for s, t in enumerate(frame))
        for frame in frames
    )  # fmt: skip
    assert bad > 0
    assert request.dropped_frames == bad
    assert request.finish_reason == "length"
    assert audio.size == request.audio_samples


async def test_a_pipeline_through_llama_server_with_barge_in_releases_the_slot(checkpoint, server):
    await asyncio.to_thread(wait_slots_idle, server.url)
    # Every chunk may run to 20 s of audio: still generating when the barge-in comes.
    tts = LocalTTSService(
        model=str(checkpoint[1]), lm_url=server.url, params=GenerationParams(seed=3, guard_min_seconds=20)
    )
    audit = InterruptionAudit(tts)
    async with LivePipeline(tts) as p:
        # A streamed LLM turn, spoken to its end.
        for frame in streamed_turn("Sure, I can help with that.", random.Random(2), 5):
            await p.send(frame)
        await p.until(lambda: p.started_contexts() and p.stopped(p.started_contexts()[0]), 120, "the first turn")
        first = p.started_contexts()[0]
        assert p.audio(first)
        # A long answer, interrupted once audio flows.
        await p.send(TTSSpeakFrame("This answer goes on and on and would take a long time to say out loud. " * 3))
        await p.until(lambda: len(p.started_contexts()) == 2 and p.audio(p.started_contexts()[1]), 60, "audio")
        assert any(s["is_processing"] for s in await asyncio.to_thread(slots, server.url))
        await p.interrupt()
        await p.until(lambda: audit.handled == 1, 10, "the interruption")
        # llama-server stops: it cancels the task and the slot is released well before its budget.
        await asyncio.to_thread(wait_slots_idle, server.url, 10)
        log = server.log()
        assert "cancel task" in log, log[-3000:]
        cancelled = [r for r in tts.requests if r.finish_reason == "cancelled"]
        assert cancelled
        # A normal next turn speaks.
        nxt = await p.speak("Okay, stopping.", timeout=120)
        assert len(p.started_contexts()) == 3
    assert not p.errors, [e.error for e in p.errors]
    assert not audit.stray, audit.stray
    assert p.audio(nxt)


async def test_eight_calls_at_once_share_one_engine_and_each_speak(checkpoint, server):
    await asyncio.to_thread(wait_slots_idle, server.url)
    params = GenerationParams(seed=4, guard_min_seconds=1.0)
    services = [LocalTTSService(model=str(checkpoint[1]), lm_url=server.url, params=params) for _ in range(8)]
    busiest = 0

    async def watch():
        nonlocal busiest
        while True:
            state = await asyncio.to_thread(slots, server.url)
            busiest = max(busiest, sum(s["is_processing"] for s in state))
            await asyncio.sleep(0.02)

    async def call(i: int, tts: LocalTTSService):
        async with LivePipeline(tts) as p:
            await p.send(TTSSpeakFrame(f"Caller number {i} hears their own answer."))
            await p.until(lambda: p.started_contexts() and p.stopped(p.started_contexts()[0]), 180, f"call {i}")
            assert not p.errors, [e.error for e in p.errors]
            return sum(len(f.audio) for f in p.audio())

    watcher = asyncio.create_task(watch())
    try:
        sizes = await asyncio.gather(*(call(i, s) for i, s in enumerate(services)))
    finally:
        watcher.cancel()
    assert all(size > 0 for size in sizes)
    assert len({id(s._engine) for s in services}) == 1 or all(s._engine is None for s in services)
    assert busiest >= 2  # the server decoded several calls together


def test_concurrent_requests_each_equal_their_solo_run(checkpoint, server):
    texts = [f"Caller number {i} hears their own answer." for i in range(8)]
    remote = remote_engine(checkpoint[1], server.url)
    try:
        solo = [speak(remote, t, GREEDY)[0].tokens for t in texts]
        sinks = [BlockingSink() for _ in texts]
        requests = [remote.submit(t, "tara", GREEDY, s) for t, s in zip(texts, sinks, strict=True)]
        for s in sinks:
            list(s)
        assert [r.tokens for r in requests] == solo
        assert all(r.finish_reason == "length" for r in requests)
    finally:
        remote.close()


async def test_server_killed_mid_utterance_is_an_error_frame_and_a_restart_speaks(checkpoint):
    running = LlamaServer(checkpoint[2], parallel=2)
    await asyncio.to_thread(running.start)
    try:
        tts = LocalTTSService(
            model=str(checkpoint[1]), lm_url=running.url, params=GenerationParams(seed=1, guard_min_seconds=20)
        )
        async with LivePipeline(tts) as p:
            await p.send(TTSSpeakFrame("A long answer that the server will not live to finish. " * 3))
            await p.until(lambda: p.audio(), 60, "audio")
            await asyncio.to_thread(running.kill)
            await p.until(lambda: p.errors, 30, "the error")
            assert running.url in p.errors[0].error and "stream broke" in p.errors[0].error
            # Down: the next turn is an error too, not silence.
            await p.send(TTSSpeakFrame("Are you there?"))
            await p.until(lambda: len(p.errors) >= 2, 30, "the second error")
            assert running.url in p.errors[1].error
            # Back on the same address: the next turn speaks.
            await asyncio.to_thread(running.start)
            before = len(p.audio())
            await p.send(TTSSpeakFrame("I am back."))
            await p.until(lambda: len(p.audio()) > before and p.stopped(p.started_contexts()[-1]), 60, "speech")
            assert len(p.errors) == 2
    finally:
        running.stop()


def test_an_api_key_is_sent_as_a_bearer_token_and_never_logged(checkpoint):
    secret = "k3y-" + "x" * 12
    logs: list[str] = []
    sink_id = logger.add(lambda m: logs.append(str(m)), level="DEBUG")
    try:
        with LlamaServer(checkpoint[2], parallel=1, args=("--api-key", secret)) as running:
            with pytest.raises(LMServerError, match=f"{running.url} refused the API key"):
                remote_engine(checkpoint[1], running.url, api_key="wrong")
            assert httpx.post(f"{running.url}/completion", json={"prompt": [1]}, timeout=10).status_code == 401
            remote = remote_engine(checkpoint[1], running.url, api_key=secret)
            try:
                request, audio = speak(remote, "With a key.", GREEDY)
            finally:
                remote.close()
            assert request.finish_reason == "length" and audio.size > 0
            assert secret not in repr(remote.source.remote)
    finally:
        logger.remove(sink_id)
    assert logs and not any(secret in line for line in logs)


def test_cli_say_through_llama_server_writes_what_the_engine_makes(checkpoint, server, tmp_path):
    import wave

    directory = checkpoint[1]
    out = tmp_path / "remote.wav"
    text = "Hello there."
    assert main(["say", text, "--out", str(out), "--model", str(directory), "--seed", "7", "--lm-url", server.url]) == 0
    with wave.open(str(out)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24000)
        pcm = np.frombuffer(wav.readframes(10**9), "<i2")
    remote = remote_engine(directory, server.url)
    try:
        _, audio = speak(remote, text, GenerationParams(seed=7))
    finally:
        remote.close()
    expected = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    assert pcm.size == expected.size > 0
    assert np.max(np.abs(pcm.astype(int) - expected.astype(int))) <= 1


def test_cli_serve_with_lm_url_is_a_gpu_less_tts_tier(checkpoint, server):
    """``serve --lm-url``: no LM weights in the TTS server, an OpenAI speech endpoint in front
    of llama-server."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipecat_localtts.cli", "serve", "--model", str(checkpoint[1]), "--port", str(port),
         "--lm-url", server.url, "--device", "cpu"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the server never got ready"
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        before = len(re.findall(r"POST /completion", server.log())) + server.log().count("launch_slot_")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with client.audio.speech.with_streaming_response.create(
            model=client.models.list().data[0].id, voice="tara", input="Served through llama.cpp.",
            response_format="pcm",
        ) as response:
            audio = response.read()
        assert len(audio) > 0 and len(audio) % 2 == 0
        after = len(re.findall(r"POST /completion", server.log())) + server.log().count("launch_slot_")
        assert after > before  # the tokens came from llama-server
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert "llama.cpp" in out, out[-3000:]
