"""The examples run as their headers say."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_speak_to_wav_example_runs_offline_with_the_tiny_model(tmp_path):
    out = tmp_path / "reply.wav"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "speak_to_wav.py"), "--model", "tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == 24000 and wav.getnchannels() == 1
        # Three chunks of the reply, each at least the guard's 2 s floor.
        assert wav.getnframes() / 24000 > 6


def test_speak_to_wav_example_speaks_with_the_tiny_neutts_model(tmp_path):
    out = tmp_path / "reply.wav"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "speak_to_wav.py"), "--model", "tiny-neutts", "--out", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == 24000 and wav.getnchannels() == 1
        # Three chunks of the reply, each at least the guard's 2 s floor; NeuCodec's 20 ms frames.
        assert wav.getnframes() / 24000 > 6 and wav.getnframes() % 480 == 0


def test_speak_to_wav_speaks_through_a_server_with_one_environment_variable(tmp_path):
    """LOCALTTS_SERVER_URL switches the example from an in-process model to the server."""
    import os

    from server_harness import RunningServer

    out = tmp_path / "reply.wav"
    with RunningServer(api_key="ex-key") as server:
        env = {**os.environ, "LOCALTTS_SERVER_URL": server.url, "LOCALTTS_API_KEY": "ex-key"}
        proc = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "speak_to_wav.py"), "--out", str(out)],
            capture_output=True, text=True, timeout=240, env=env,
        )
        served = [r for r in server.tts.recent if r.finish_reason == "length"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == 24000 and wav.getnchannels() == 1
        frames = wav.getnframes()
    # Every sample in the file came from the server's engine.
    assert frames > 0 and frames == sum(r.audio_samples for r in served)
