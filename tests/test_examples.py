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
