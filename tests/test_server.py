"""The TTS server's HTTP face: a real uvicorn on 127.0.0.1 with the tiny model, real clients.

The openai SDK and Pipecat's own ``OpenAITTSService`` against ``/v1/audio/speech``; httpx and
raw sockets for the limits. The WebSocket protocol is in ``test_server_ws.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
import wave

import httpx
import openai
import pytest
from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame, TTSSpeakFrame
from pipecat.services.openai.tts import OpenAITTSService
from pipecat.tests.utils import run_test

from pipecat_localtts.engine.sampling import GenerationParams

from server_harness import RunningServer, pcm_diff, solo_pcm, speech, tiny_engine

TEXT = "Hello there. This is a test of the server."


@pytest.fixture(scope="module")
def server():
    with RunningServer() as running:
        yield running


def test_openai_sdk_streams_the_engines_audio(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    before = len(server.tts.recent)
    chunks = []
    with client.audio.speech.with_streaming_response.create(
        model="tiny", voice="tara", input=TEXT, response_format="pcm", extra_body={"seed": 5}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/pcm"
        assert response.headers["x-sample-rate"] == "24000"
        for chunk in response.iter_bytes():
            chunks.append(chunk)
    data = b"".join(chunks)
    server.wait_idle()
    # Streamed: more than one piece came before the end.
    assert len(chunks) > 1
    # Exactly what the engine made for these utterances, alone, with the same seed.
    tts = server.tts
    texts = tts.utterances(TEXT, "tara")
    assert len(texts) == 2
    expected = solo_pcm(tts.engine, texts, "tara", tts.params({"seed": 5}), round(0.005 * 24000))
    assert len(data) == len(expected) > 0
    assert pcm_diff(data, expected) <= 4
    # The server's own records agree: samples produced by the engine for this stream.
    produced = sum(r.audio_samples for r in list(tts.recent)[before:])
    assert 2 * produced == len(data)


def test_wav_is_a_valid_wav_with_the_same_audio(server):
    pcm = speech(server, TEXT, seed=9).content
    response = speech(server, TEXT, seed=9, response_format="wav")
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(response.content)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24000)
        frames = wav.readframes(10**9)
    # The same seeded request: the same samples up to the float rounding of however the
    # engine batched it with other work (a near-tie flips at most a few LSB).
    assert len(frames) == len(pcm) > 0 and pcm_diff(frames, pcm) <= 4


def test_models_lists_the_served_model(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_bad_requests_get_a_clear_400_and_the_server_goes_on(server):
    url = f"{server.url}/v1/audio/speech"
    cases = [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"input": "Hi.", "voice": "nobody"}).encode(), "unknown voice 'nobody'"),
        (json.dumps({"input": "", "voice": "tara"}).encode(), "non-empty string"),
        (json.dumps({"input": "Hi.", "response_format": "mp3"}).encode(), "not supported"),
        (json.dumps({"input": "Hi.", "speed": 2.0}).encode(), "speed"),
        (json.dumps({"input": "Hi.", "model": "other"}).encode(), "unknown model"),
        (json.dumps({"input": "Hi.", "temperature": "hot"}).encode(), "temperature"),
        (json.dumps({"input": "Hi.", "top_p": 7}).encode(), "top_p"),
        (json.dumps({"input": "?!...", "voice": "tara"}).encode(), "nothing to say"),
    ]
    for body, needle in cases:
        r = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert needle in r.json()["error"]["message"], (needle, r.text)
    assert server.metric("localtts_errors_total", kind="bad_request") >= len(cases)
    # Known voices are listed in the error; OpenAI names are aliases for them.
    r = speech(server, "Hi.", voice="nobody")
    assert "tara" in r.json()["error"]["message"]
    ok = speech(server, "Hello.", voice="alloy", model="tts-1")
    assert ok.status_code == 200 and len(ok.content) > 0


@pytest.fixture(scope="module")
def long_server():
    # Utterances of up to 30 s of audio, so that the generation is still running when the client
    # leaves however fast the machine (the tiny model's random speech otherwise ends at the
    # default guard, a fraction of a second, and a fast machine finishes before the disconnect).
    with RunningServer(params=GenerationParams(guard_min_seconds=30)) as running:
        yield running


def test_client_disconnect_cancels_within_one_step(long_server):
    server = long_server
    server.wait_idle()
    before = len(server.tts.recent)
    body = {"model": "tiny", "input": TEXT * 3, "voice": "tara", "response_format": "pcm", "seed": 1}
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", json=body, timeout=30) as response:
        assert response.status_code == 200
        next(response.iter_bytes())  # audio flows
    # The client is gone: its generation stops.
    server.wait_idle()
    requests = list(server.tts.recent)[before:]
    assert requests, "no engine request recorded"
    cancelled = [r for r in requests if r.finish_reason == "cancelled"]
    assert cancelled, [r.finish_reason for r in requests]
    for r in cancelled:
        if r.steps_at_cancel is not None and r.t_admitted is not None:
            assert r.steps - r.steps_at_cancel <= 1
    # Not every utterance of the long text was generated.
    assert len(requests) < len(server.tts.utterances(TEXT * 3, "tara"))
    assert server.metric("localtts_streams_total", api="http", outcome="cancelled") >= 1


def test_pipecat_openai_tts_service_speaks_through_the_server(server):
    tts = OpenAITTSService(
        base_url=f"{server.url}/v1",
        api_key="unused",
        settings=OpenAITTSService.Settings(voice="nova", model="tts-1"),
    )
    down, up = asyncio.run(run_test(tts, frames_to_send=[TTSSpeakFrame("Hello from the pipeline.")]))
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert sum(len(f.audio) for f in audio) > 0
    assert all(f.sample_rate == 24000 for f in audio)
    assert server.tts.recent[-1].voice == "mia"  # nova's Orpheus voice


def test_metrics_are_prometheus_text(server):
    speech(server, "Count me.")
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for name in (
        "localtts_active_streams",
        "localtts_waiting_requests",
        "localtts_time_to_first_audio_seconds_bucket",
        "localtts_real_time_factor_bucket",
        "localtts_errors_total",
    ):
        assert name in text
    assert server.metric("localtts_time_to_first_audio_seconds_count", api="http") >= 1
    assert server.metric("localtts_streams_total", api="http", outcome="ok") >= 1


def test_health_is_503_until_warm():
    gate = threading.Event()

    def slow_load():
        gate.wait(30)
        return tiny_engine()

    with RunningServer(slow_load, wait_ready=False) as server:
        r = httpx.get(f"{server.url}/health", timeout=10)
        assert r.status_code == 503 and r.json()["status"] == "loading" and "retry-after" in r.headers
        r = speech(server, "Too early.")
        assert r.status_code == 503 and "retry-after" in r.headers
        gate.set()
        server.wait_ready()
        assert httpx.get(f"{server.url}/health", timeout=10).json() == {"status": "ok", "model": "tiny"}
        assert speech(server, "Now.").status_code == 200


def test_a_failed_load_is_reported_by_health():
    def broken():
        raise RuntimeError("no weights here")

    with RunningServer(broken, wait_ready=False) as server:
        deadline = time.monotonic() + 10
        while server.tts.load_error is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = httpx.get(f"{server.url}/health", timeout=10)
        assert r.status_code == 503 and r.json() == {"status": "failed", "error": "no weights here"}


def test_api_key_is_required_everywhere():
    with RunningServer(api_key="s3cret") as server:
        for path in ("/health", "/metrics", "/v1/models"):
            assert httpx.get(server.url + path, timeout=10).status_code == 401
            assert httpx.get(server.url + path, headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
        r = speech(server, "Hi.")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert speech(server, "Hi.", headers={"Authorization": "Bearer s3cre"}).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert httpx.get(server.url + "/health", headers=good, timeout=10).status_code == 200
        assert speech(server, "Hi.", headers=good).status_code == 200
        # The openai SDK sends its key as a bearer token.
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", max_retries=0)
        with client.audio.speech.with_streaming_response.create(
            model="tiny", voice="tara", input="Hi.", response_format="pcm"
        ) as response:
            assert len(response.read()) > 0
        wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        assert server.metric("localtts_errors_total", kind="unauthorized") >= 8


def test_limits_413_and_503_with_retry_after():
    # Long utterances (a 20 s guard), so the first stream is still generating.
    with RunningServer(max_chars=40, max_streams=1, params=GenerationParams(guard_min_seconds=20)) as server:
        r = speech(server, "x" * 41)
        assert r.status_code == 413 and "40" in r.json()["error"]["message"]
        body = b'{"input": "' + b"y" * 200_000 + b'"}'
        r = httpx.post(f"{server.url}/v1/audio/speech", content=body, timeout=10)
        assert r.status_code == 413
        # One stream open (held by a client that reads slowly) -> the next one is refused.
        body = {"model": "tiny", "input": "Hold this stream open.", "voice": "tara", "response_format": "pcm"}
        with httpx.stream("POST", f"{server.url}/v1/audio/speech", json=body, timeout=30) as held:
            assert held.status_code == 200
            refused = speech(server, "Me too.")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "busy"
        server.wait_idle()
        assert speech(server, "My turn now.").status_code == 200


def test_a_client_that_never_reads_is_cut_off_and_disturbs_no_other():
    # Small kernel buffers on both ends, so the server feels the stalled reader quickly.
    # Long utterances (a 10 s guard each), so there is far more audio than the buffers hold.
    params = GenerationParams(guard_min_seconds=10)
    with RunningServer(sndbuf=4096, client_timeout=1.0, max_buffer_seconds=2.0, params=params) as server:
        body = json.dumps(
            {"input": "A long text that nobody will ever read. " * 8, "voice": "tara", "response_format": "pcm",
             "max_tokens": 2048, "seed": 1}
        ).encode()
        stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", server.port))
        stalled.sendall(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        try:
            # Another client is served normally meanwhile.
            t0 = time.monotonic()
            ok = speech(server, "I read my audio.", seed=2, max_tokens=70)
            assert ok.status_code == 200 and len(ok.content) > 0
            deadline = time.monotonic() + 30
            while server.metric("localtts_errors_total", kind="slow_client") < 1:
                assert time.monotonic() < deadline, "the stalled client was never cut off"
                time.sleep(0.05)
            server.wait_idle()
            slow = [r for r in server.tts.recent if r.finish_reason == "cancelled"]
            assert slow, "the stalled client's generation was not cancelled"
            assert server.metric("localtts_streams_total", api="http", outcome="slow_client") == 1
            # Its buffered audio stayed bounded: the cap, plus the one piece that crossed it.
            assert server.tts.peak_buffered > 0 and server.tts.peak_overshoot <= 2.0 * 24000
            assert time.monotonic() - t0 < 30
        finally:
            stalled.close()
        assert speech(server, "Still fine.").status_code == 200


def test_engine_failure_before_audio_is_a_500_and_the_server_goes_on(monkeypatch):
    with RunningServer() as server:
        runner = server.tts.engine.source.runner
        real, real_many = runner.prefill, runner.prefill_many
        marker = server.tts.engine.model.build_prompt("Fail me.", "tara")

        def prefill(slot, ids, start=0):
            if list(ids) == marker:
                raise RuntimeError("CUDA out of memory (simulated)")
            return real(slot, ids, start)

        def prefill_many(slots, prompts):
            if any(list(ids) == marker for ids in prompts):
                raise RuntimeError("CUDA out of memory (simulated)")
            return real_many(slots, prompts)

        monkeypatch.setattr(runner, "prefill", prefill)
        monkeypatch.setattr(runner, "prefill_many", prefill_many)
        r = speech(server, "Fail me.")
        assert r.status_code == 500 and "out of memory" in r.json()["error"]["message"]
        assert server.metric("localtts_errors_total", kind="generation_failed") == 1
        assert speech(server, "But not me.").status_code == 200
