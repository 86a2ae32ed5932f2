"""The console script: ``pipecat-localtts say``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import wave

import numpy as np

import pytest
from loguru import logger

from pipecat_localtts.cli import main


@pytest.fixture(autouse=True)
def restore_logging():
    """main() configures loguru for the command line; give other tests the default back."""
    yield
    logger.remove()
    logger.add(lambda message: sys.stderr.write(message))


def test_say_with_tiny_model_writes_a_24khz_mono_wav(tmp_path, capsys):
    out = tmp_path / "hello.wav"
    assert main(["say", "Hello there, world.", "--out", str(out), "--model", "tiny", "--seed", "1"]) == 0
    err = capsys.readouterr().err
    assert "synthetic" in err and "noise" in err
    with wave.open(str(out)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        frames = wav.getnframes()
        pcm = wav.readframes(frames)
    # The max-token guard gives whole frames of 2048 samples; random weights run to it.
    assert frames > 0 and frames % 2048 == 0
    assert any(pcm)  # not silence


def test_say_is_reproducible_with_a_seed(tmp_path):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    for out in (a, b):
        assert main(["say", "Same words.", "--out", str(out), "--model", "tiny", "--seed", "7"]) == 0
    pcm = []
    for path in (a, b):
        with wave.open(str(path)) as wav:
            pcm.append(np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int32))
    assert pcm[0].shape == pcm[1].shape and pcm[0].any()
    # Same tokens; codec windows may group frames differently, which moves a sample by at
    # most a rounding step.
    assert np.abs(pcm[0] - pcm[1]).max() <= 1


def test_unknown_voice_is_one_clear_line(tmp_path, capsys):
    assert main(["say", "Hi.", "--out", str(tmp_path / "x.wav"), "--model", "tiny", "--voice", "bob"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: unknown voice 'bob'")


def test_unavailable_weights_exit_nonzero_with_one_clear_message(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-m", "pipecat_localtts.cli", "say", "Hello.", "--out", str(tmp_path / "x.wav"),
         "--model", "canopylabs/orpheus-3b-0.1-ft"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "canopylabs/orpheus-3b-0.1-ft" in lines[0] and "--model DIR" in lines[0]
    assert not (tmp_path / "x.wav").exists()


def test_a_model_directory_that_does_not_exist_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no" / "such" / "dir"
    assert main(["say", "hi", "--out", str(tmp_path / "x.wav"), "--model", str(missing)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"error: model directory {missing} does not exist"]
    assert not (tmp_path / "x.wav").exists()


def test_say_prints_no_deprecation_warnings(tmp_path):
    # The user's console as it is: Python's default warning filters, nothing inherited.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pipecat_localtts.cli", "say", "Hello there.", "--out", str(tmp_path / "x.wav"),
         "--model", "tiny"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    noise = [line for line in proc.stderr.splitlines() if re.search(r"(Future|Deprecation)Warning", line)]
    assert not noise, proc.stderr


def test_console_script_is_installed():
    proc = subprocess.run(["pipecat-localtts", "say", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--model" in proc.stdout


def test_cuda_without_a_gpu_is_one_clear_line(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["say", "Hi.", "--out", str(tmp_path / "x.wav"), "--model", "tiny", "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --device cuda")


def test_bench_subcommand_is_the_benchmark_suite(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--shapes" in out and "orpheus-3b" in out
