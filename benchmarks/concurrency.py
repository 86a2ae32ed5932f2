"""Many calls at once: ``python benchmarks/concurrency.py [--shape small] [--calls 1,2,4,8,16]``.

N concurrent calls, each a real Pipecat pipeline with its own ``LocalTTSService`` on ONE
shared random model, each speaking the same few sentences (as ``TTSSpeakFrame``s, one after
another). Measured per N: aggregate audio seconds per wall second, per-call real-time factor
(wall time of the call / seconds of audio it got), and time to first audio (p50/p95 over the
calls' first sentences). Two designs in the same run:

* ``batched``: today's service, every call shares the model's one :class:`BatchedEngine`;
* ``per-call``: the previous design, one engine per call on the shared weights: a
  ``BatchedEngine(max_batch=1)`` each (own engine and codec threads, own one-slot KV cache),
  the engines taking turns on the device.

Each N runs ``--repeats`` times (designs alternating) and the medians are reported: the
machines this runs on are shared and noisy.

Also measured, without the codec (``lm``): the batched decode step alone (our forward, the
candidate head and the per-row sampler, CUDA graphs on a GPU) at each batch size, its
aggregate token rate as audio seconds per wall second (82 tokens = 1 s), and the floor
set by reading the weights once per step at the device's measured copy bandwidth.

Writes ``benchmarks/results/concurrency.json`` and ``concurrency.png``. Random weights never
say stop, so each sentence runs to its max-token guard: the audio length is set by the text.

GPU (when one is lent): ``python benchmarks/concurrency.py --shape orpheus-3b --device cuda
--calls 1,16,64 --repeats 1`` (a few minutes: bf16 weights, CUDA graphs per bucket).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from loguru import logger
from pipecat.frames.frames import EndFrame, Frame, TTSAudioRawFrame, TTSSpeakFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from pipecat_localtts import LocalTTSService
from pipecat_localtts.engine import batch_sampling as bs
from pipecat_localtts.engine.batched import BatchedEngine
from pipecat_localtts.engine.llama import LlamaRunner
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.testing import random_orpheus

SENTENCES = ["Sure, I can help with that.", "Let me check the schedule.", "It ships tomorrow."]
PARAMS = GenerationParams(seed=0, guard_seconds_per_char=0.04, guard_min_seconds=0.5)


class PerCallService(LocalTTSService):
    """The previous design, for comparison: one engine with a single slot per call, not shared."""

    async def load(self) -> None:
        if self._engine is None:
            self._engine = await asyncio.to_thread(self._start_own, self._model)

    def _start_own(self, model):
        engine = BatchedEngine(model, max_batch=1, max_tokens=self._params.max_tokens)
        engine.start()  # warm, as the shared engine is
        return engine

    async def _close_engine(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.close)


class _Recorder(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.first_audio: list[float] = []  # per sentence
        self.samples = 0
        self.rate = 24000
        self.stopped = 0
        self.event = asyncio.Event()
        self._waiting_first = False

    def expect(self) -> None:
        self._waiting_first = True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.samples += len(frame.audio) // 2
            self.rate = frame.sample_rate
            if self._waiting_first:
                self.first_audio.append(time.perf_counter())
                self._waiting_first = False
        elif isinstance(frame, TTSStoppedFrame):
            self.stopped += 1
            self.event.set()
        await self.push_frame(frame, direction)


async def _call(service: LocalTTSService, sentences: list[str] = SENTENCES) -> dict:
    rec = _Recorder()
    worker = PipelineWorker(Pipeline([service, rec]), params=PipelineParams(), cancel_on_idle_timeout=False)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.5)  # the pipeline starts; the engine is already loaded
    t0 = time.perf_counter()
    ttfa = []
    for sentence in sentences:
        rec.event.clear()
        rec.expect()
        sent = time.perf_counter()
        await worker.queue_frame(TTSSpeakFrame(sentence))
        while rec.stopped < len(ttfa) + 1:
            await asyncio.wait_for(rec.event.wait(), timeout=600)
            rec.event.clear()
        ttfa.append(rec.first_audio[-1] - sent if rec.first_audio else float("nan"))
    wall = time.perf_counter() - t0
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(task, timeout=60)
    audio = rec.samples / rec.rate
    return {"wall_s": wall, "audio_s": audio, "ttfa_s": ttfa[0], "rtf": wall / max(audio, 1e-9)}


async def _run(model, design: str, n: int) -> dict:
    cls = LocalTTSService if design == "batched" else PerCallService
    services = [cls(model=model, params=PARAMS, max_batch=max(n, 1), stop_frame_timeout_s=60.0) for _ in range(n)]
    for s in services:
        await s.load()
    t0 = time.perf_counter()
    calls = await asyncio.gather(*(_call(s) for s in services))
    wall = time.perf_counter() - t0
    ttfa = sorted(c["ttfa_s"] for c in calls)
    return {
        "calls": n,
        "aggregate_audio_per_wall_s": sum(c["audio_s"] for c in calls) / wall,
        "per_call_rtf_mean": statistics.mean(c["rtf"] for c in calls),
        "ttfa_p50_ms": 1000 * statistics.median(ttfa),
        "ttfa_p95_ms": 1000 * ttfa[min(len(ttfa) - 1, round(0.95 * (len(ttfa) - 1)))],
        "wall_s": wall,
    }


TOKENS_PER_AUDIO_SECOND = 7 * 24000 / 2048  # Orpheus: 7 tokens per 2048-sample SNAC frame


def _copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large on-device copy (read + write counted once each)."""
    a = torch.empty(64 * 2**20, dtype=torch.float32, device=device)  # 256 MB
    b = torch.empty_like(a)
    b.copy_(a)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(5):
        b.copy_(a)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 5 * 2 * a.numel() * a.element_size() / (time.perf_counter() - t0)


@torch.inference_mode()
def lm_steps(model, batch_sizes: list[int], steps: int = 30) -> list[dict]:
    """The batched step without the codec: ms per step, and the weight-read floor."""
    device = model.device
    layout = model.token_layout
    bandwidth = _copy_bandwidth(device)
    body = sum(p.numel() * p.element_size() for p in model.lm.model.parameters())
    embed = model.lm.model.embed_tokens.weight
    body -= embed.numel() * embed.element_size()  # one row of it is read per token
    rows = []
    for b in batch_sizes:
        runner = LlamaRunner(model.lm, n_slots=b, max_len=512 + steps + 8, check=False)
        if device.type == "cuda":
            runner.capture(cuda_graphs=True)
        head = bs.CandidateHead(layout, runner.head_weight, runner.head_bias)
        seen = head.new_seen(b)
        prompt = model.build_prompt(SENTENCES[0], model.voices[0])
        for slot in range(b):
            runner.prefill(slot, prompt)
        params = bs.RowParams.build([PARAMS] * b, [slot for slot in range(b)], [0] * b, device)
        tokens = torch.full((b,), layout.slot_starts[0], dtype=torch.long, device=device)
        times = []
        for i in range(steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            hidden = runner.decode(list(range(b)), tokens)
            out = bs.sample_step(hidden, head, [i % layout.tokens_per_frame] * b, seen, params)
            tokens = out.clone()
            out.tolist()  # the engine's one host read per step
            times.append(time.perf_counter() - t0)
        step = statistics.median(times[5:])
        head_bytes = layout.width * runner.head_weight.shape[1] * runner.head_weight.element_size()
        floor = (body + head_bytes) / bandwidth
        rows.append(
            {
                "batch": b,
                "step_ms": 1000 * step,
                "lm_audio_per_wall_s": b / step / TOKENS_PER_AUDIO_SECOND,
                "weight_read_floor_ms": 1000 * floor,
                "step_over_floor": step / floor,
            }
        )
        del runner
    return rows


@torch.inference_mode()
def cpu_ceiling(model, n: int, measured_n1: float, repeats: int = 3) -> dict:
    """The most audio per wall second N calls can get from this CPU, whatever the scheduling.

    At N calls every frame costs its share of a batched LM step plus one codec decode, and all
    of it has to fit on the machine's cores. Measured here on one thread (the cost of the work
    itself): the batched step at batch N (``7`` steps make a frame for each of the N rows) and
    the exact incremental codec decode per frame (pieces of 4 frames, its best case). Ceiling =
    cores / (thread-seconds of work per audio second), with the cores assumed perfectly
    parallel; the ratio to the measured N=1 throughput is the best the N=8-over-N=1 target can
    reach on this machine. At N=1 the codec runs beside the LM on the otherwise idle core, so
    the measured N=1 figure is LM-bound while the ceiling at N counts the codec in full.
    """
    threads = torch.get_num_threads()
    layout = model.token_layout
    per_frame = model.codec.samples_per_frame / model.codec.sample_rate  # audio seconds
    g = torch.Generator().manual_seed(0)
    frames = [
        [int(t) for t in torch.randint(0, 4096, (layout.tokens_per_frame,), generator=g)] for _ in range(24)
    ]
    torch.set_num_threads(1)
    try:
        step = statistics.median(lm_steps(model, [n], steps=20)[0]["step_ms"] for _ in range(repeats))
        codec = []
        for _ in range(repeats):
            stream = model.codec.incremental_stream()
            t0 = time.perf_counter()
            for i in range(0, len(frames), 4):
                stream.push(frames[i : i + 4])
            stream.flush()
            codec.append(1000 * (time.perf_counter() - t0) / len(frames))
        codec_ms = statistics.median(codec)
    finally:
        torch.set_num_threads(threads)
    work_ms = layout.tokens_per_frame * step / n + codec_ms  # thread-ms per frame of one call
    ceiling = threads * per_frame * 1000 / work_ms
    return {
        "calls": n,
        "lm_step_ms_1_thread": step,
        "codec_ms_per_frame_1_thread": codec_ms,
        "thread_ms_per_frame": work_ms,
        "ceiling_audio_per_wall_s": ceiling,
        "ceiling_over_measured_n1": ceiling / measured_n1 if measured_n1 else None,
    }


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for design, rows in results["designs"].items():
        ns = [r["calls"] for r in rows]
        a.plot(ns, [r["aggregate_audio_per_wall_s"] for r in rows], marker="o", label=design)
        b.plot(ns, [r["ttfa_p95_ms"] for r in rows], marker="o", label=design)
    lm = results.get("lm") or []
    if lm:
        a.plot([r["batch"] for r in lm], [r["lm_audio_per_wall_s"] for r in lm], ls="--", marker=".", label="LM step only (no codec)")
    a.set(xlabel="concurrent calls", ylabel="audio s per wall s (all calls)", xscale="log", title="throughput")
    b.set(xlabel="concurrent calls", ylabel="TTFA p95 (ms)", xscale="log", title="first audio")
    for ax in (a, b):
        ax.legend()
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{results['shape']} shape, {results['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="small")
    parser.add_argument("--calls", default="1,2,4,8,16")
    parser.add_argument("--designs", default="batched,per-call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="runs per N (medians reported)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(lambda m: print(m, end=""), level="WARNING")
    model = random_orpheus(args.shape, seed=0, device=args.device)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, {args.device}"
    results = {"shape": args.shape, "machine": machine, "designs": {}}
    designs = args.designs.split(",")
    for design in designs:  # a first, unmeasured call of each: one-time costs out of the figures
        asyncio.run(_run(model, design, 1))
    calls = [int(x) for x in args.calls.split(",")]
    results["lm"] = lm_steps(model, calls)
    for row in results["lm"]:
        print(
            f"lm        B={row['batch']:3}  step {row['step_ms']:.1f} ms ({row['step_over_floor']:.1f}x the "
            f"weight-read floor {row['weight_read_floor_ms']:.1f} ms)  {row['lm_audio_per_wall_s']:.2f} audio s/s",
            flush=True,
        )
    for n in calls:
        runs: dict[str, list[dict]] = {d: [] for d in designs}
        for _ in range(args.repeats):
            for design in designs:  # alternating, so neither design gets the quieter machine
                runs[design].append(asyncio.run(_run(model, design, n)))
        for design in designs:
            row = {k: statistics.median(r[k] for r in runs[design]) for k in runs[design][0]}
            row["repeats"] = args.repeats
            results["designs"].setdefault(design, []).append(row)
            print(
                f"{design:9} N={n:3}  aggregate {row['aggregate_audio_per_wall_s']:.3f} audio s/s  "
                f"per-call RTF {row['per_call_rtf_mean']:.2f}  TTFA p50 {row['ttfa_p50_ms']:.0f} ms "
                f"p95 {row['ttfa_p95_ms']:.0f} ms",
                flush=True,
            )
    batched = {r["calls"]: r for r in results["designs"].get("batched", [])}
    if args.device == "cpu" and 1 in batched:
        n1 = batched[1]["aggregate_audio_per_wall_s"]
        results["cpu_ceiling"] = [cpu_ceiling(model, n, n1) for n in calls if n > 1]
        for row in results["cpu_ceiling"]:
            print(
                f"ceiling   N={row['calls']:3}  {row['ceiling_audio_per_wall_s']:.2f} audio s/s at most on "
                f"{torch.get_num_threads()} perfectly parallel cores (LM step {row['lm_step_ms_1_thread']:.1f} ms at "
                f"B={row['calls']}, codec {row['codec_ms_per_frame_1_thread']:.1f} ms/frame, one thread each) = "
                f"{row['ceiling_over_measured_n1']:.2f}x the measured N=1",
                flush=True,
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "concurrency.json").write_text(json.dumps(results, indent=1))
    _plot(results, out / "concurrency.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
