"""Server vs in-process: ``python benchmarks/server.py [--shape small] [--calls 1,4,16]``.

The same N concurrent calls, each speaking ``concurrency.SENTENCES`` one after another, two
ways on ONE random model object:

* ``server``: ``create_app`` under uvicorn in a background thread of this process (its own
  event loop), on a started ``BatchedEngine(max_batch=max(calls))``; each call is a client
  that sends one ``POST /v1/audio/speech`` (``response_format: pcm``, streamed with httpx)
  per sentence;
* ``in-process``: real Pipecat pipelines, each with its own ``LocalTTSService`` (the calls of
  one run share the model's engine, ``max_batch=max(calls)`` as well), as in
  ``benchmarks/concurrency.py``.

Both use ``concurrency.PARAMS``. Measured per N: aggregate audio seconds per wall second
(every call's audio over the wall time from the calls' start to the last one's end), time to
first audio (p50/p95 over the calls' first sentences: request sent to first non-empty body
chunk for the server, ``TTSSpeakFrame`` queued to first ``TTSAudioRawFrame`` in-process).
The designs alternate per N, ``--repeats`` times, medians reported. Clients and server share
this process (and its GIL), so the server figures include the clients' cost, as the
in-process ones include Pipecat's. Writes ``benchmarks/results/server.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn
from loguru import logger

sys.path.insert(0, str(Path(__file__).parent))
from concurrency import PARAMS, SENTENCES, _call  # noqa: E402  (the in-process call, reused)

from pipecat_localtts import LocalTTSService  # noqa: E402
from pipecat_localtts.engine.batched import BatchedEngine  # noqa: E402
from pipecat_localtts.server.app import ServerConfig, create_app  # noqa: E402
from pipecat_localtts.testing import random_orpheus  # noqa: E402

RATE = 24000  # PCM16 mono from the server


class BackgroundServer:
    """The app under uvicorn on a free loopback port, in a thread with its own event loop."""

    def __init__(self, model, max_batch: int, params=PARAMS) -> None:
        def load() -> BatchedEngine:
            engine = BatchedEngine(model, max_batch=max_batch, max_tokens=params.max_tokens)
            engine.start()
            return engine

        self.app = create_app(load, ServerConfig(model_name="bench", max_streams=max(max_batch, 1), params=params))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=3))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 300
        while not (self.server.started and self.app.state.tts.ready):
            tts = self.app.state.tts
            if tts.load_error is not None or not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server did not get ready: {tts.load_error}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


async def _client(http: httpx.AsyncClient, url: str, sentences: list[str] = SENTENCES) -> dict:
    """One call: every sentence as its own streamed request, one after another."""
    samples, ttfa = 0, []
    t0 = time.perf_counter()
    for sentence in sentences:
        body = {"model": "bench", "input": sentence, "response_format": "pcm"}
        sent = time.perf_counter()
        first = None
        async with http.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
            response.raise_for_status()
            async for chunk in response.aiter_bytes():
                if chunk and first is None:
                    first = time.perf_counter() - sent
                samples += len(chunk) // 2
        ttfa.append(first if first is not None else float("nan"))
    return {"start": t0, "end": time.perf_counter(), "audio_s": samples / RATE, "ttfa_s": ttfa[0]}


async def _run_server(url: str, n: int, sentences: list[str] = SENTENCES) -> dict:
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        calls = await asyncio.gather(*(_client(http, url, sentences) for _ in range(n)))
    wall = max(c["end"] for c in calls) - min(c["start"] for c in calls)
    return _summary(n, [c["audio_s"] for c in calls], [c["ttfa_s"] for c in calls], wall)


async def _run_inprocess(model, n: int, max_batch: int) -> dict:
    services = [LocalTTSService(model=model, params=PARAMS, max_batch=max_batch, stop_frame_timeout_s=60.0) for _ in range(n)]
    for s in services:
        await s.load()  # the shared engine starts (and warms) before the clock
    calls = await asyncio.gather(*(_call(s) for s in services))
    # Each call times itself after its pipeline's 0.5 s start-up sleep; they start together.
    wall = max(c["wall_s"] for c in calls)
    return _summary(n, [c["audio_s"] for c in calls], [c["ttfa_s"] for c in calls], wall)


def _summary(n: int, audio: list[float], ttfa: list[float], wall: float) -> dict:
    ttfa = sorted(ttfa)
    return {
        "calls": n,
        "aggregate_audio_per_wall_s": sum(audio) / wall,
        "audio_s": sum(audio),
        "ttfa_p50_ms": 1000 * statistics.median(ttfa),
        "ttfa_p95_ms": 1000 * ttfa[min(len(ttfa) - 1, round(0.95 * (len(ttfa) - 1)))],
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="small")
    parser.add_argument("--calls", default="1,4,16")
    parser.add_argument("--repeats", type=int, default=1, help="runs per N and design (medians reported)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(lambda m: print(m, end=""), level="WARNING", filter=lambda r: "synthetic" not in r["message"])
    calls = [int(x) for x in args.calls.split(",")]
    max_batch = max(calls)
    model = random_orpheus(args.shape, seed=0)
    machine = {
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    results = {"shape": args.shape, "machine": machine, "max_batch": max_batch, "repeats": args.repeats,
               "sentences": SENTENCES, "rows": []}
    t_start = time.perf_counter()
    with BackgroundServer(model, max_batch) as server:
        asyncio.run(_run_server(server.url, 1))  # warm-up, unmeasured: one call through each design
        asyncio.run(_run_inprocess(model, 1, max_batch))
        designs = {
            "server": lambda n: asyncio.run(_run_server(server.url, n)),
            "in-process": lambda n: asyncio.run(_run_inprocess(model, n, max_batch)),
        }
        for n in calls:
            runs: dict[str, list[dict]] = {d: [] for d in designs}
            for i in range(args.repeats):
                order = list(designs) if i % 2 == 0 else list(designs)[::-1]  # alternate who goes first
                for design in order:
                    runs[design].append(designs[design](n))
            by_design = {}
            for design, rs in runs.items():
                row = {"design": design, **{k: statistics.median(r[k] for r in rs) for k in rs[0]}}
                row["calls"] = n
                by_design[design] = row
                results["rows"].append(row)
                print(
                    f"{design:10} N={n:3}  aggregate {row['aggregate_audio_per_wall_s']:.3f} audio s/s  "
                    f"({row['audio_s']:.1f} s audio in {row['wall_s']:.1f} s)  "
                    f"TTFA p50 {row['ttfa_p50_ms']:.0f} ms p95 {row['ttfa_p95_ms']:.0f} ms",
                    flush=True,
                )
            s, p = by_design["server"], by_design["in-process"]
            ratio = {
                "calls": n,
                "throughput": s["aggregate_audio_per_wall_s"] / p["aggregate_audio_per_wall_s"],
                "ttfa_p50": s["ttfa_p50_ms"] / p["ttfa_p50_ms"],
            }
            results.setdefault("ratios_server_over_inprocess", []).append(ratio)
            print(f"ratio      N={n:3}  server/in-process: throughput {ratio['throughput']:.2f}x  "
                  f"TTFA p50 {ratio['ttfa_p50']:.2f}x", flush=True)
    results["benchmark_wall_s"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "server.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'server.json'} ({results['benchmark_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
