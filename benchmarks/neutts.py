"""NeuTTS Air at its real size on this CPU: ``python benchmarks/neutts.py [--calls 1,2]``.

A NeuTTS-Air-shaped random model (``tiny_neutts(shape="air", codec_shape="real")``: the
Qwen2.5-0.5B backbone, 24 layers of 896 with NeuTTS's 217,207-token vocabulary, 0.55 B
parameters (the head tied to the embedding), and the real-size NeuCodec decoder, 188 M), fp32 (``--dtype`` for the LM), in
the same engine, service and server as Orpheus. Timing does not depend on the weights'
values; the audio is noise.

Measured, one run, on the same model object:

* ``engine``: one utterance at a time through ``BatchedEngine`` (the LM and the codec
  threads): LM tokens per second (generated tokens over the LM's own step time), the
  real-time factor (wall time over audio seconds: below 1 is faster than real time), and
  the time to first audio (submit to first PCM);
* ``components``: each half alone, nothing beside it: the LM's decode step (transformers'
  body with the KV cache, then the candidate head: the 65,537 rows of the speech tokens and
  the stop token, as the engine multiplies them) in tokens per second, and the codec's
  streaming decode of 3 s of random codes with the default windows (real-time factor, and
  the time of the first window: first audio's codec share);
* ``server`` and ``in-process``: N concurrent calls, each speaking ``SENTENCES`` one after
  another, through ``POST /v1/audio/speech`` of the server (uvicorn in a background thread)
  and through real Pipecat pipelines with ``LocalTTSService``; aggregate audio seconds per
  wall second and TTFA p50/p95, as ``benchmarks/server.py`` does for Orpheus.

``--batch-steps`` measures only the engine's decode step (``LlamaRunner``: body, then the
candidate head) at 1, 2 and 4 rows in fp32, bf16 and fp16, each row 100 tokens into its
cache, and writes ``neutts-steps.json``: how a dtype's step grows with the batch on this CPU.

Every request uses the model's own sampling defaults (NeuTTS: temperature 1, top-k 50)
with a seed; random weights rarely sample the stop token, so each sentence runs to its
length guard (``PARAMS``). Writes ``benchmarks/results/neutts.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from loguru import logger

sys.path.insert(0, str(Path(__file__).parent))
from concurrency import _call  # noqa: E402  (the in-process call, reused)
from server import BackgroundServer, _run_server, _summary  # noqa: E402

from pipecat_localtts import LocalTTSService  # noqa: E402
from pipecat_localtts.engine.batched import BatchedEngine  # noqa: E402
from pipecat_localtts.engine.request import BlockingSink  # noqa: E402
from pipecat_localtts.testing import tiny_neutts  # noqa: E402

SENTENCES = ["Hello, thanks for calling.", "How can I help you today?"]


def _engine_runs(model, params, repeats: int) -> list[dict]:
    engine = BatchedEngine(model, max_batch=1, max_tokens=params.max_tokens)
    engine.start()
    rows = []
    try:
        for i in range(repeats):
            for sentence in SENTENCES:
                sink = BlockingSink()
                t0 = time.perf_counter()
                req = engine.submit(sentence, model.voices[0], replace(params, seed=i), sink)
                first, samples = None, 0
                for pcm in sink:
                    if first is None and len(pcm):
                        first = time.perf_counter() - t0
                    samples += len(pcm)
                wall = time.perf_counter() - t0
                audio = samples / model.sample_rate
                rows.append({
                    "text": sentence,
                    "tokens": len(req.tokens),
                    "lm_tokens_per_s": len(req.tokens) / req.lm_seconds,
                    "prefill_ms": 1000 * (req.t_prefilled - req.t_start),
                    "prompt_tokens": len(req.prompt_ids),
                    "audio_s": audio,
                    "wall_s": wall,
                    "rtf": wall / audio,
                    "first_audio_ms": 1000 * first,
                })  # fmt: skip
    finally:
        engine.close()
    return rows


def _components(model, steps: int = 60, codec_frames: int = 150) -> dict:
    """The LM step and the streaming codec, each alone (see the module docstring)."""
    layout = model.token_layout
    lm = model.lm
    head = lm.get_output_embeddings().weight[layout.union_lo : layout.union_hi]
    prompt = model.build_prompt(SENTENCES[0], model.voices[0])
    with torch.inference_mode():
        cache = lm.model(torch.tensor([prompt]), use_cache=True).past_key_values
        token = torch.tensor([[layout.union_lo]])
        for i in range(steps + 10):
            if i == 10:
                t = time.perf_counter()
            out = lm.model(token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.last_hidden_state[:, -1] @ head.T
            token = (logits.argmax(-1, keepdim=True) + layout.union_lo).clamp(max=layout.union_hi - 1)
        lm_tok_s = steps / (time.perf_counter() - t)
    codes = torch.randint(0, 65536, (codec_frames,), generator=torch.Generator().manual_seed(0))
    stream = model.codec.stream()
    stream.push(codes[:30])  # warm: one window
    stream.reset()
    t0 = time.perf_counter()
    first_ms, samples = None, 0
    for i in range(codec_frames):
        pcm = stream.push(codes[i : i + 1])
        if first_ms is None and len(pcm):
            first_ms = 1000 * (time.perf_counter() - t0)
        samples += len(pcm)
    samples += len(stream.flush())
    codec_wall = time.perf_counter() - t0
    audio = samples / model.sample_rate
    return {"lm_tokens_per_s": lm_tok_s, "lm_step_ms": 1000 / lm_tok_s, "codec_audio_s": audio,
            "codec_rtf": codec_wall / audio, "codec_first_window_ms": first_ms,
            "codec_first_window_frames": stream.first_audio_frames}  # fmt: skip


def _batch_steps(batches=(1, 2, 4), dtypes=("float32", "bfloat16", "float16"), steps: int = 10) -> list[dict]:
    """The runner's decode step per batch size and LM dtype (see the module docstring)."""
    from pipecat_localtts.engine.llama import LlamaRunner

    model = tiny_neutts(shape="air", codec_shape="tiny")
    layout = model.token_layout
    rows = []
    for name in dtypes:
        model.lm.to(getattr(torch, name))
        runner = LlamaRunner(model.lm, max(batches), 512, check=False)
        head = runner.head_weight[layout.union_lo : layout.union_hi]
        with torch.inference_mode():
            for slot in range(max(batches)):
                runner.prefill(slot, list(range(1000, 1100)))
            for b in batches:
                tokens = torch.full((b,), layout.union_lo)
                for i in range(steps + 3):
                    if i == 3:
                        t = time.perf_counter()
                    hidden = runner.decode(list(range(b)), tokens)
                    logits = hidden @ head.T
                step_ms = 1000 * (time.perf_counter() - t) / steps
                rows.append({"dtype": name, "batch": b, "step_ms": step_ms, "row_tokens_per_s": 1000 / step_ms,
                             "batch_tokens_per_s": 1000 * b / step_ms})  # fmt: skip
                print(f"{name:9} B={b}  step {step_ms:5.0f} ms  {1000 * b / step_ms:5.1f} tok/s in all", flush=True)
                del logits
        del runner
    return rows


async def _run_inprocess(model, params, n: int, max_batch: int) -> dict:
    services = [
        LocalTTSService(model=model, params=params, max_batch=max_batch, stop_frame_timeout_s=120.0) for _ in range(n)
    ]
    for s in services:
        await s.load()
    calls = await asyncio.gather(*(_call(s, SENTENCES) for s in services))
    wall = max(c["wall_s"] for c in calls)
    return _summary(n, [c["audio_s"] for c in calls], [c["ttfa_s"] for c in calls], wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="1,2")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="LM weight dtype (the codec stays fp32); results go to neutts.json for "
                        "float32, neutts-DTYPE.json otherwise")
    parser.add_argument("--batch-steps", action="store_true", help="only the decode step per batch and dtype")
    args = parser.parse_args(argv)
    if args.batch_steps:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows = _batch_steps()
        machine = {"processor": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}
        (out / "neutts-steps.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
        return 0
    logger.remove()
    logger.add(lambda m: print(m, end=""), level="WARNING", filter=lambda r: "synthetic" not in r["message"])
    calls = [int(x) for x in args.calls.split(",")]
    t_build = time.perf_counter()
    model = tiny_neutts(shape="air", codec_shape="real")
    model.lm.to(getattr(torch, args.dtype))
    lm_params = sum(p.numel() for p in model.lm.parameters())
    codec_params = sum(p.numel() for p in (*model.codec.quantizer.parameters(), *model.codec.decoder.parameters()))
    # Two seconds of audio a sentence at most: the random LM rarely stops by itself.
    params = replace(model.default_params, guard_seconds_per_char=0.05, guard_min_seconds=1.0)
    print(f"built in {time.perf_counter() - t_build:.0f} s: LM {lm_params / 1e6:.0f} M, codec {codec_params / 1e6:.0f} M")
    results = {
        "model": {"lm_parameters": lm_params, "codec_parameters": codec_params, "dtype": args.dtype,
                  "config": {k: getattr(model.lm.config, k) for k in (
                      "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                      "intermediate_size", "vocab_size")}},
        "machine": {"processor": platform.processor() or platform.machine(), "platform": platform.platform(),
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
        "sentences": SENTENCES,
        "params": {k: getattr(params, k) for k in ("temperature", "top_k", "top_p", "repetition_penalty",
                                                  "guard_seconds_per_char", "guard_min_seconds")},
    }  # fmt: skip
    t_start = time.perf_counter()
    comp = _components(model)
    results["components"] = comp
    print(f"components LM alone {comp['lm_tokens_per_s']:.1f} tok/s ({comp['lm_step_ms']:.0f} ms a step)  "
          f"codec alone RTF {comp['codec_rtf']:.2f}, first window {comp['codec_first_window_ms']:.0f} ms "
          f"({comp['codec_first_window_frames']} frames)", flush=True)
    rows = _engine_runs(model, params, args.repeats)
    results["engine"] = rows
    med = {k: float(np.median([r[k] for r in rows])) for k in ("lm_tokens_per_s", "rtf", "first_audio_ms", "prefill_ms")}
    results["engine_median"] = med
    print(f"engine     LM {med['lm_tokens_per_s']:.1f} tok/s (real time: 50)  RTF {med['rtf']:.2f}  "
          f"first audio {med['first_audio_ms']:.0f} ms (prefill {med['prefill_ms']:.0f} ms)", flush=True)
    max_batch = max(calls)
    results["rows"] = []
    with BackgroundServer(model, max_batch, params=params) as server:
        for n in calls:
            for design, run in (
                ("server", lambda n=n: asyncio.run(_run_server(server.url, n, SENTENCES))),
                ("in-process", lambda n=n: asyncio.run(_run_inprocess(model, params, n, max_batch))),
            ):
                row = {"design": design, **run()}
                results["rows"].append(row)
                print(f"{design:10} N={n:2}  aggregate {row['aggregate_audio_per_wall_s']:.3f} audio s/s  "
                      f"({row['audio_s']:.1f} s audio in {row['wall_s']:.1f} s)  "
                      f"TTFA p50 {row['ttfa_p50_ms']:.0f} ms p95 {row['ttfa_p95_ms']:.0f} ms", flush=True)
    results["benchmark_wall_s"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "neutts.json" if args.dtype == "float32" else f"neutts-{args.dtype}.json"
    (out / name).write_text(json.dumps(results, indent=1))
    print(f"wrote {out / name} ({results['benchmark_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
