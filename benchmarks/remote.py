"""Through llama-server vs in-process: ``python benchmarks/remote.py [--shape small] [--calls 1,4,8]``.

The same N concurrent calls, each speaking ``concurrency.SENTENCES`` one after another with
``concurrency.PARAMS``, on the same random weights two ways:

* ``llama-server``: the speech LM runs in llama.cpp's ``llama-server`` (a subprocess on
  127.0.0.1, ``--parallel max(calls)``, its default f16 KV cache, ``--threads 2``), the
  weights converted to GGUF (f32) by llama.cpp's converter; our ``BatchedEngine`` with a
  :class:`~pipecat_localtts.engine.remote.RemoteTokenSource` reads the tokens and decodes the
  audio in this process;
* ``in-process``: a ``BatchedEngine`` with the LM in this process (our KV-cached batched
  decode, frame-slot candidate head).

Both engines have ``max_batch = max(calls)``, are started and warmed before the clock, and are
driven directly (one thread per call submitting to the engine, a ``BlockingSink`` each), so the
difference is the token source. The weights are :func:`~pipecat_localtts.testing.slotted_orpheus`
(random weights that keep Orpheus's frame slots, so the remote path drops no frames) on a real
Llama-3 tokenizer (the converter needs one). Random weights never say stop: each sentence runs
to its max-token guard, so both designs produce the same amount of audio.

Measured per N: time to first audio (p50/p95 over every sentence of every call: ``submit`` to
the first audio piece), per-call throughput (a call's audio seconds over its wall time; median
over the calls; above 1 is faster than real time), aggregate audio seconds per wall second, and
the remote path's dropped frames. The designs alternate per N, ``--repeats`` times, medians
reported. llama-server and this process share the machine's cores. Writes
``benchmarks/results/remote.json``. Needs ``scripts/llama_server.sh`` (run by
``scripts/setup.sh``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from loguru import logger

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(_ROOT / "tests"))  # the llama-server harness of the tests
from concurrency import PARAMS, SENTENCES  # noqa: E402
from llama_harness import LlamaServer, gguf_of  # noqa: E402

from pipecat_localtts.engine.batched import BatchedEngine  # noqa: E402
from pipecat_localtts.engine.remote import RemoteLM, RemoteTokenSource  # noqa: E402
from pipecat_localtts.engine.request import BlockingSink  # noqa: E402
from pipecat_localtts.models.orpheus import load_orpheus  # noqa: E402
from pipecat_localtts.testing import llama3_tokenizer, slotted_orpheus  # noqa: E402

VOICE = "tara"


def _call(engine: BatchedEngine, out: list, index: int, barrier: threading.Barrier) -> None:
    """One call: every sentence as its own request, one after another."""
    rate = engine.model.codec.sample_rate
    samples, ttfa, dropped = 0, [], 0
    barrier.wait()
    t0 = time.perf_counter()
    for sentence in SENTENCES:
        sink = BlockingSink()
        sent = time.perf_counter()
        request = engine.submit(sentence, VOICE, PARAMS, sink)
        first = None
        for piece in sink:
            if first is None and piece.size:
                first = time.perf_counter() - sent
            samples += piece.size
        ttfa.append(first if first is not None else float("nan"))
        dropped += request.dropped_frames
    wall = time.perf_counter() - t0
    out[index] = {"start": t0, "end": t0 + wall, "wall_s": wall, "audio_s": samples / rate,
                  "ttfa_s": ttfa, "dropped_frames": dropped}  # fmt: skip


def run_calls(engine: BatchedEngine, n: int) -> dict:
    out: list = [None] * n
    barrier = threading.Barrier(n)
    threads = [threading.Thread(target=_call, args=(engine, out, i, barrier)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(c is None for c in out):
        raise RuntimeError("a call failed (see its traceback above)")
    ttfa = sorted(x for c in out for x in c["ttfa_s"])
    wall = max(c["end"] for c in out) - min(c["start"] for c in out)
    return {
        "calls": n,
        "ttfa_p50_ms": 1000 * statistics.median(ttfa),
        "ttfa_p95_ms": 1000 * ttfa[min(len(ttfa) - 1, round(0.95 * (len(ttfa) - 1)))],
        "per_call_audio_per_wall_s": statistics.median(c["audio_s"] / c["wall_s"] for c in out),
        "aggregate_audio_per_wall_s": sum(c["audio_s"] for c in out) / wall,
        "audio_s": sum(c["audio_s"] for c in out),
        "wall_s": wall,
        "dropped_frames": sum(c["dropped_frames"] for c in out),
    }


def diagnose(model, url: str, tokens: int = 400) -> dict:
    """Where the time goes: llama-server's own token rate for one request with nothing beside
    it (its ``timings``), with and without the audio-only ``logit_bias``, and one decode step
    of transformers' forward with the full vocabulary head and without any head."""
    prompt = model.build_prompt(SENTENCES[0], VOICE)
    layout = model.token_layout
    rates = []
    for bias in (False, True):
        body = {"prompt": prompt, "n_predict": tokens, "temperature": PARAMS.temperature, "top_p": PARAMS.top_p,
                "ignore_eos": True, "return_tokens": True}  # fmt: skip
        if bias:
            body["logit_bias"] = [[t, 0.0] for t in range(layout.union_lo, layout.union_hi)]
        for _ in range(2):  # the first warms
            reply = httpx.post(f"{url}/completion", json=body, timeout=600)
            reply.raise_for_status()
        rates.append(reply.json()["timings"]["predicted_per_second"])
    lm = model.lm
    with torch.inference_mode():
        cache = lm(torch.tensor([prompt]), use_cache=True).past_key_values
        token = torch.tensor([[layout.union_lo]])
        times = {}
        for name, forward in (("full_head_step_ms", lm), ("body_step_ms", lm.model)):
            for i in range(120):
                if i == 20:
                    t = time.perf_counter()
                cache = forward(token, past_key_values=cache, use_cache=True).past_key_values
            times[name] = (time.perf_counter() - t) / 100 * 1000
    return {"llama_server_tok_s": rates[0], "llama_server_audio_only_tok_s": rates[1], "tokens": tokens, **times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="small", choices=["tiny", "small"])
    parser.add_argument("--calls", default="1,4,8")
    parser.add_argument("--repeats", type=int, default=1, help="runs per N and design (medians reported)")
    parser.add_argument("--threads", type=int, default=2, help="llama-server --threads")
    parser.add_argument("--server-args", default="", help="further llama-server arguments (one string)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(lambda m: print(m, end=""), level="WARNING", filter=lambda r: "synthetic" not in r["message"])
    calls = [int(x) for x in args.calls.split(",")]
    max_batch = max(calls)
    model = slotted_orpheus(seed=0, tokenizer=llama3_tokenizer(), shape=args.shape)
    machine = {
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    server_args = ["--threads", str(args.threads), "--threads-batch", str(args.threads), *args.server_args.split()]
    results = {"shape": args.shape, "machine": machine, "max_batch": max_batch, "repeats": args.repeats,
               "sentences": SENTENCES, "llama_server_args": server_args, "rows": []}  # fmt: skip
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        t = time.perf_counter()
        gguf = gguf_of(model, tmp, timeout=900)
        results["gguf_mb"] = gguf.stat().st_size / 2**20
        results["convert_s"] = time.perf_counter() - t
        local = BatchedEngine(model, max_batch=max_batch, max_tokens=PARAMS.max_tokens)
        local.start()
        with LlamaServer(gguf, parallel=max_batch, args=server_args, ready_timeout=300) as server:
            codec_only = load_orpheus(tmp, device="cpu", lm=False)
            source = RemoteTokenSource(RemoteLM(server.url), codec_only.token_layout, name="llama-server")
            remote = BatchedEngine(codec_only, max_batch=max_batch, max_tokens=PARAMS.max_tokens, source=source)
            remote.start()
            try:
                engines = {"llama-server": remote, "in-process": local}
                for engine in engines.values():
                    run_calls(engine, 1)  # warm-up, unmeasured
                for n in calls:
                    runs: dict[str, list[dict]] = {d: [] for d in engines}
                    for i in range(args.repeats):
                        order = list(engines) if i % 2 == 0 else list(engines)[::-1]  # alternate who goes first
                        for design in order:
                            runs[design].append(run_calls(engines[design], n))
                    by_design = {}
                    for design, rs in runs.items():
                        row = {"design": design, **{k: statistics.median(r[k] for r in rs) for k in rs[0]}}
                        row["calls"] = n
                        by_design[design] = row
                        results["rows"].append(row)
                        print(
                            f"{design:12} N={n:2}  TTFA p50 {row['ttfa_p50_ms']:.0f} ms p95 {row['ttfa_p95_ms']:.0f} ms  "
                            f"per call {row['per_call_audio_per_wall_s']:.3f} audio s/s  "
                            f"aggregate {row['aggregate_audio_per_wall_s']:.3f}  "
                            f"({row['audio_s']:.1f} s audio in {row['wall_s']:.1f} s, "
                            f"{row['dropped_frames']:.0f} dropped frames)",
                            flush=True,
                        )
                    r, p = by_design["llama-server"], by_design["in-process"]
                    ratio = {
                        "calls": n,
                        "ttfa_p50": r["ttfa_p50_ms"] / p["ttfa_p50_ms"],
                        "per_call_throughput": r["per_call_audio_per_wall_s"] / p["per_call_audio_per_wall_s"],
                    }
                    results.setdefault("ratios_remote_over_inprocess", []).append(ratio)
                    print(f"ratio        N={n:2}  llama-server/in-process: TTFA p50 {ratio['ttfa_p50']:.2f}x  "
                          f"per-call throughput {ratio['per_call_throughput']:.2f}x", flush=True)  # fmt: skip
                results["diagnosis"] = diagnose(model, server.url)
                d = results["diagnosis"]
                print(f"diagnosis    llama-server alone {d['llama_server_tok_s']:.1f} tok/s "
                      f"({d['llama_server_audio_only_tok_s']:.1f} with the audio-only logit_bias); "
                      f"transformers step {d['full_head_step_ms']:.1f} ms with the full head, "
                      f"{d['body_step_ms']:.1f} ms without", flush=True)  # fmt: skip
            finally:
                remote.close()
                local.close()
    results["benchmark_wall_s"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "remote.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'remote.json'} ({results['benchmark_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
