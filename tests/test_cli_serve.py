"""``pipecat-localtts serve`` as its own process: the console script a user runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai

SCRIPT = [sys.executable, "-m", "pipecat_localtts.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_tiny_answers_health_speech_and_stops_on_sigterm():
    port = free_port()
    env = {**os.environ, "LOCALTTS_API_KEY": "from-env"}
    proc = subprocess.Popen(
        [*SCRIPT, "serve", "--model", "tiny", "--port", str(port), "--max-chars", "500"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer from-env"}
    try:
        deadline = time.monotonic() + 120
        status = None
        while status != 200:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the server never got ready"
            try:
                status = httpx.get(f"{url}/health", headers=auth, timeout=5).status_code
                assert status in (200, 503)
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)
        assert httpx.get(f"{url}/health", timeout=5).status_code == 401  # the key came from the environment
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="from-env", max_retries=0)
        with client.audio.speech.with_streaming_response.create(
            model="tiny", voice="tara", input="Served from its own process.", response_format="pcm"
        ) as response:
            audio = response.read()
        assert len(audio) > 0 and len(audio) % 2 == 0
        r = httpx.post(f"{url}/v1/audio/speech", json={"input": "x" * 501}, headers=auth, timeout=10)
        assert r.status_code == 413
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    # A graceful shutdown: uvicorn re-raises the SIGTERM it handled, so the status is the
    # signal's (what systemd and Docker expect of a stopped service).
    assert proc.returncode in (0, -signal.SIGTERM), out[-3000:]
    assert "Application shutdown complete" in out
    assert "127.0.0.1" in out  # bound to loopback unless told otherwise


def test_serve_exits_with_an_error_when_the_model_cannot_load(tmp_path):
    proc = subprocess.run(
        [*SCRIPT, "serve", "--model", str(tmp_path / "missing"), "--port", str(free_port()), "--device", "cpu"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "could not be loaded" in proc.stderr


def test_serve_rejects_a_bad_voice_alias():
    proc = subprocess.run(
        [*SCRIPT, "serve", "--model", "tiny", "--voice-alias", "oops"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "NAME=VOICE" in proc.stderr
