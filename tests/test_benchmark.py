"""The benchmark suite's model shapes and a smoke run of the whole suite on the tiny shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipecat_localtts import LocalTTSService
from pipecat_localtts.benchmark import main as bench_main
from pipecat_localtts.codecs.snac import SNAC_24KHZ_CONFIG
from pipecat_localtts.models import orpheus as o
from pipecat_localtts.testing import SHAPES, random_orpheus

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def test_orpheus_3b_shape_is_llama_3_2_3b():
    s = SHAPES["orpheus-3b"]
    assert (s["hidden_size"], s["num_hidden_layers"], s["num_attention_heads"]) == (3072, 28, 24)
    assert (s["num_key_value_heads"], s["head_dim"], s["intermediate_size"]) == (8, 128, 8192)
    assert s["vocab_size"] == 156_940 and s["tie_word_embeddings"]
    assert s["rope_scaling"] == LLAMA3_ROPE and s["rope_theta"] == 500000.0


def test_small_shape_builds_with_the_issue_s_shape_and_real_snac():
    model = random_orpheus("small", seed=0, device="cpu")
    c = model.lm.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (512, 8, 8, 2)
    assert (c.head_dim, c.intermediate_size, c.vocab_size) == (64, 1536, o.VOCAB_SIZE)
    assert c.tie_word_embeddings and model.lm.get_output_embeddings().weight is model.lm.get_input_embeddings().weight
    assert c.rope_scaling["rope_type"] == "llama3"
    assert model.codec.model.decoder_dim == SNAC_24KHZ_CONFIG["decoder_dim"] == 1024
    assert model.codec.samples_per_frame == 2048 and model.synthetic
    # A model object the service accepts.
    assert LocalTTSService(model=model).model is model


def test_unknown_shape_is_refused():
    with pytest.raises(ValueError, match="unknown shape 'huge'"):
        random_orpheus("huge")


def test_benchmark_suite_runs_and_writes_json_and_plot(tmp_path):
    out = tmp_path / "results"
    rc = bench_main(["--shapes", "tiny", "--rounds", "1", "--utterances", "8", "--tokens", "35", "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    r = results["tiny"]
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    step, ttfa, interruption, memory = r["step"], r["ttfa"], r["interruption"], r["memory"]
    for key in ("bare_forward_ms", "engine_step_ms", "generate_step_ms", "engine_rtf", "generate_rtf"):
        assert step[key] > 0
    # Both sides timed the 35 tokens asked for, not a request cut short.
    assert step["tokens_per_request"] == step["engine_tokens"] == step["generate_tokens"] == 35
    # The adaptive chunker sends the first clause; Pipecat's aggregator the whole sentence.
    assert ttfa["adaptive"]["first_chunk_chars"] < ttfa["sentence"]["first_chunk_chars"]
    assert ttfa["adaptive"]["first_chunk_chars"] == len("Well, the short answer is yes,")
    parts = ["chunker_wait_ms", "prefill_ms", "decode_to_first_window_ms", "codec_ms", "framework_ms"]
    assert sum(ttfa["adaptive"][p] for p in parts) == pytest.approx(ttfa["adaptive"]["total_ms"], rel=1e-6)
    assert interruption["steps_after_cancel"] <= 1
    assert interruption["to_lm_idle_ms"] <= interruption["to_codec_idle_ms"]
    assert len(memory["rss_trace_mb"]) == 8 and memory["peak_rss_mb"] > 0
    assert r["machine"]["device"] == "cpu"
    # Sections 1 and 4 ran the engine with one slot, as `say` does.
    assert r["max_batch"] == 1 and r["cache_tokens"] == 512 + 2048 and "compiled" not in r



@pytest.mark.timeout(240)
def test_server_benchmark_runs_on_the_tiny_shape(tmp_path):
    # Both designs deliver every call's audio (the same sentences, the same amount of audio)
    # and the results hold a row per design and N plus their ratios.
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "server.py"
    cmd = [sys.executable, str(script), "--shape", "tiny", "--calls", "1,2", "--out", str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads((tmp_path / "server.json").read_text())
    rows = {(r["design"], r["calls"]): r for r in results["rows"]}
    assert set(rows) == {(d, n) for d in ("server", "in-process") for n in (1, 2)}
    for n in (1, 2):
        server, inproc = rows["server", n], rows["in-process", n]
        assert server["audio_s"] > 0 and server["audio_s"] == pytest.approx(inproc["audio_s"], rel=0.05)
        assert server["ttfa_p50_ms"] > 0 and inproc["ttfa_p50_ms"] > 0
    assert [r["calls"] for r in results["ratios_server_over_inprocess"]] == [1, 2]


@pytest.mark.timeout(300)
def test_remote_benchmark_runs_through_llama_server_on_the_tiny_shape(tmp_path):
    # Both designs deliver every call's audio (random weights run to the max-token guard:
    # the same amount of audio), the remote path drops no frame of the slot-following
    # weights, and the results hold a row per design and N plus their ratios.
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "remote.py"
    cmd = [sys.executable, str(script), "--shape", "tiny", "--calls", "1,2", "--out", str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads((tmp_path / "remote.json").read_text())
    rows = {(r["design"], r["calls"]): r for r in results["rows"]}
    assert set(rows) == {(d, n) for d in ("llama-server", "in-process") for n in (1, 2)}
    for n in (1, 2):
        remote, inproc = rows["llama-server", n], rows["in-process", n]
        assert remote["audio_s"] > 0 and remote["audio_s"] == pytest.approx(inproc["audio_s"], rel=0.02)
        assert remote["dropped_frames"] == inproc["dropped_frames"] == 0
        for row in (remote, inproc):
            assert 0 < row["ttfa_p50_ms"] <= row["ttfa_p95_ms"] and row["per_call_audio_per_wall_s"] > 0
    assert [r["calls"] for r in results["ratios_remote_over_inprocess"]] == [1, 2]
    assert results["gguf_mb"] > 0
    d = results["diagnosis"]
    assert d["llama_server_tok_s"] > 0 and d["llama_server_audio_only_tok_s"] > 0
    assert d["full_head_step_ms"] > 0 and d["body_step_ms"] > 0


@pytest.mark.parametrize("shape", ["tiny", "small"])
def test_slotted_weights_follow_the_frame_slots_without_a_constraint(shape):
    """What lets a serving engine (audio tokens allowed, no per-slot constraint) speak with
    random weights: greedy decoding with transformers' own generate, nothing restricted, gives
    the token of the right frame slot at every position, at the tiny and the benchmark shape."""
    import torch

    from pipecat_localtts.testing import slotted_orpheus

    model = slotted_orpheus(seed=0, shape=shape)
    assert model.lm.config.hidden_size == (64 if shape == "tiny" else 512)
    prompt = torch.tensor([model.build_prompt("Sure, I can help with that.", "tara")])
    with torch.inference_mode():
        out = model.lm.generate(prompt, max_new_tokens=36, do_sample=False, pad_token_id=o.PAD)
    tokens = out[0, prompt.shape[1]:].tolist()
    assert len(tokens) == 36
    slots = [(t - o.AUDIO_TOKEN_BASE) // o.CODEBOOK_SIZE for t in tokens]
    assert slots == [i % o.TOKENS_PER_FRAME for i in range(36)]
    assert len(set(tokens)) > 20  # the codes vary: not one token per slot


def test_slotted_shape_is_checked():
    from pipecat_localtts.testing import slotted_orpheus

    with pytest.raises(ValueError, match="unknown slotted shape 'huge'"):
        slotted_orpheus(shape="huge")
