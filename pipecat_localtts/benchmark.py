"""Benchmark suite: step time, time to first audio, interruption, memory.

Every figure is measured against a baseline in the same run, on the same model and machine:

1. Decode step: the engine's time per token (a :class:`BatchedEngine` with one slot, as
   ``pipecat-localtts say`` runs it) vs (a) a bare transformers forward step of the model on a
   ``StaticCache`` of the same length, and (b) what a user would write instead: ``generate()``
   with a token streamer, and the reference 28-token windowed SNAC decode on the streamer's
   thread.
2. Time to first audio through a real Pipecat pipeline, LLM tokens arriving at a set pace,
   decomposed (chunker wait, prefill, decode to the first codec window, codec, framework),
   for our adaptive chunker and for Pipecat's default sentence aggregation.
3. Interruption: from ``InterruptionFrame`` to the engine being idle; first audio of the next
   turn right after.
4. Memory: peak resident (and GPU) memory, and its drift over many consecutive utterances
   (the same one-slot engine).

Models are :func:`pipecat_localtts.testing.random_orpheus` shapes: timing does not depend on
the weights' values. Each shape runs in its own process (clean peak-memory figures); the
parent writes ``results.json`` and ``results.png``.

    pipecat-localtts bench --shapes tiny,small --out benchmarks/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipecat_localtts.chunking import AdaptiveChunker
from pipecat_localtts.engine.batched import BatchedEngine
from pipecat_localtts.engine.request import BlockingSink
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.models import orpheus as o
from pipecat_localtts.testing import SHAPES, random_orpheus

TTFA_TEXT = (
    "Well, the short answer is yes, but there are a few things you should know first. "
    "The store opens at nine in the morning. It closes at six."
)
LONG_TEXT = "This is a long answer that the caller is about to interrupt, as callers do. " * 3
STEP_TEXT = "Hello there, how are you doing today?"
MS = 1000.0


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------- 1. decode step


@torch.inference_mode()
def bare_forward_ms(model: o.OrpheusModel, prompt: list[int], steps: int, cache_len: int) -> float:
    """Mean time of a plain ``model(...)`` step (full logits) on a static cache."""
    from transformers import StaticCache

    lm = model.lm
    dev = model.device
    cache = StaticCache(config=lm.config, max_cache_len=cache_len)
    n = len(prompt)
    lm(input_ids=torch.tensor([prompt], device=dev), cache=cache,
       cache_position=torch.arange(n, device=dev), logits_to_keep=1)
    token = torch.full((1, 1), o.AUDIO_TOKEN_BASE, device=dev)
    position = torch.zeros(1, dtype=torch.long, device=dev)
    times = []
    for i in range(steps):
        position.fill_(n + i)
        _sync(dev)
        t0 = time.perf_counter()
        logits = lm(input_ids=token, cache=cache, cache_position=position).logits
        token.fill_(int(logits[0, -1].argmax()))  # read the result, as any decoder must
        times.append(time.perf_counter() - t0)
    return _median(times[2:]) * MS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_run(engine: BatchedEngine, text: str, tokens: int) -> dict[str, float]:
    """One request of exactly ``tokens`` tokens (unless the model stops): its timings."""
    params = GenerationParams(seed=0, max_tokens=tokens, guard_min_seconds=1e3)
    sink = BlockingSink()
    req = engine.submit(text, engine.model.voices[0], params, sink)
    for _ in sink:
        pass
    wall = req.t_done - req.t_start
    return {
        "step_ms": req.lm_seconds / max(1, len(req.tokens)) * MS,
        "tokens": len(req.tokens),
        "wall_s": wall,
        "tokens_per_s": len(req.tokens) / (req.t_lm_done - req.t_start),
        "audio_s": req.audio_samples / engine.model.sample_rate,
        "rtf": req.audio_samples / engine.model.sample_rate / wall,
    }


class _ReferenceStreamer:
    """What a user would write: ``generate()`` streams ids to a thread that decodes the last
    28 tokens (4 frames) every 7 tokens with SNAC and keeps samples 2048:4096."""

    def __init__(self, codec, prompt_len: int) -> None:
        self.codec = codec
        self.prompt_len = prompt_len
        self.tokens: list[int] = []
        self.samples = 0
        self._queue: list[Any] = []
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()
        self._first = True

    def put(self, value: torch.Tensor) -> None:
        with self._cv:
            self._queue.append(value.reshape(-1).tolist())
            self._cv.notify()

    def end(self) -> None:
        with self._cv:
            self._queue.append(None)
            self._cv.notify()

    def join(self) -> None:
        self._thread.join()

    @torch.inference_mode()
    def _consume(self) -> None:
        per_frame = o.TOKENS_PER_FRAME
        window = 4 * per_frame
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                item = self._queue.pop(0)
            if item is None:
                return
            if self._first:  # generate() first streams the prompt
                self._first = False
                continue
            for token in item:
                self.tokens.append(token)
                count = len(self.tokens)
                if count % per_frame == 0 and count >= window:
                    # Timing does not depend on code values: map each token into range.
                    orpheus = (np.asarray(self.tokens[-window:]) % o.CODEBOOK_SIZE).reshape(4, per_frame)
                    frames = np.empty_like(orpheus)  # [4, 7] canonical order
                    frames[:, list(o.SLOT_TO_CANONICAL)] = orpheus
                    codes = torch.as_tensor(frames, device=self.codec.device)
                    audio = self.codec.model.decode(
                        self.codec.codebooks(codes)
                    )
                    self.samples += audio[..., 2048:4096].shape[-1]


def generate_baseline(model: o.OrpheusModel, prompt: list[int], tokens: int) -> dict[str, float]:
    """``generate()`` + streamer + reference windowed decode: per-token time, throughput."""
    streamer = _ReferenceStreamer(model.codec, len(prompt))
    input_ids = torch.tensor([prompt], device=model.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.lm.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=True,
            temperature=0.6,
            top_p=0.8,
            repetition_penalty=1.3,
            eos_token_id=o.END_OF_SPEECH,
            pad_token_id=o.PAD,
            streamer=streamer,
        )
    t_lm = time.perf_counter() - t0
    streamer.join()
    wall = time.perf_counter() - t0
    n = len(streamer.tokens)
    return {
        "step_ms": t_lm / max(1, n) * MS,
        "tokens": n,
        "wall_s": wall,
        "tokens_per_s": n / t_lm,
        "audio_s": streamer.samples / model.sample_rate,
        "rtf": streamer.samples / model.sample_rate / wall,
    }


def bench_step(model: o.OrpheusModel, engine: BatchedEngine, *, tokens: int, rounds: int) -> dict:
    """Section 1, interleaving the three measurements round by round to share the noise."""
    prompt = model.build_prompt(STEP_TEXT, model.voices[0])
    bare, ours, base = [], [], []
    for _ in range(rounds):
        bare.append(bare_forward_ms(model, prompt, min(tokens, 64), engine.max_len))
        ours.append(engine_run(engine, STEP_TEXT, tokens))
        base.append(generate_baseline(model, prompt, tokens))

    def med(runs: list[dict], key: str) -> float:
        return _median([r[key] for r in runs])

    result = {
        "tokens_per_request": tokens,
        "rounds": rounds,
        "engine_tokens": med(ours, "tokens"),  # what each side really generated
        "generate_tokens": med(base, "tokens"),
        "bare_forward_ms": _median(bare),
        "engine_step_ms": med(ours, "step_ms"),
        "generate_step_ms": med(base, "step_ms"),
        "engine_tokens_per_s": med(ours, "tokens_per_s"),
        "generate_tokens_per_s": med(base, "tokens_per_s"),
        "engine_rtf": med(ours, "rtf"),
        "generate_rtf": med(base, "rtf"),
        "realtime_tokens_per_s": model.codec.sample_rate / model.codec.samples_per_frame * o.TOKENS_PER_FRAME,
    }
    result["engine_vs_bare"] = result["engine_step_ms"] / result["bare_forward_ms"]
    result["throughput_vs_generate"] = result["engine_rtf"] / result["generate_rtf"]
    return result


# ---------------------------------------------------------------------- 2-3. pipeline


async def _pipeline_session(service, script) -> Any:
    """Run ``service`` in a real pipeline while ``script(worker, probe)`` drives it."""
    from pipecat.frames.frames import EndFrame, Frame, TTSAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    class Probe(FrameProcessor):
        def __init__(self) -> None:
            super().__init__()
            self.first_audio: dict[str, float] = {}
            self.audio_event = asyncio.Event()

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, TTSAudioRawFrame) and frame.context_id not in self.first_audio:
                self.first_audio[frame.context_id] = time.perf_counter()
                self.audio_event.set()
            await self.push_frame(frame, direction)

    probe = Probe()
    worker = PipelineWorker(Pipeline([service, probe]), params=PipelineParams(), cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 600)
    await script(worker, probe)
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(run, 600)
    return probe


def _first_chunk_token(pieces: list[str]) -> int:
    """Index of the LLM token on whose arrival the adaptive chunker emits the first chunk."""
    chunker = AdaptiveChunker()
    for i, piece in enumerate(pieces):
        if chunker.push(piece):
            return i
    return len(pieces) - 1


async def _ttfa_once(model, *, aggregator: str, tokens_per_s: float, params) -> dict[str, float]:
    from pipecat.frames.frames import LLMFullResponseEndFrame, LLMFullResponseStartFrame, LLMTextFrame

    from pipecat_localtts.service import LocalTTSService

    extra = {}
    if aggregator == "sentence":  # Pipecat's default, for comparison
        from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

        extra["text_aggregator"] = SimpleTextAggregator()
    service = LocalTTSService(model=model, params=params, **extra)
    pieces = [TTFA_TEXT[i : i + 4] for i in range(0, len(TTFA_TEXT), 4)]  # ~LLM tokens
    sent: list[float] = []

    async def script(worker, probe) -> None:
        await worker.queue_frame(LLMFullResponseStartFrame())
        for piece in pieces:
            sent.append(time.perf_counter())
            await worker.queue_frame(LLMTextFrame(piece))
            await asyncio.sleep(1 / tokens_per_s)
        await worker.queue_frame(LLMFullResponseEndFrame())
        await asyncio.wait_for(probe.audio_event.wait(), 600)

    probe = await _pipeline_session(service, script)  # returns after the turn's audio
    req = min(service.requests, key=lambda r: r.t_submit)  # the turn's first chunk
    t_audio = min(probe.first_audio.values())
    t0 = sent[0]
    # When the first chunk was complete: for the adaptive chunker, the arrival of the token
    # that completes it; Pipecat's aggregator keeps no record, so its share of framework
    # time is counted as chunker wait.
    t_chunk = sent[_first_chunk_token(pieces)] if aggregator == "adaptive" else req.t_submit
    result = {
        "total_ms": (t_audio - t0) * MS,
        "chunker_wait_ms": (t_chunk - t0) * MS,
        "prefill_ms": (req.t_prefilled - req.t_start) * MS,
        "decode_to_first_window_ms": (req.t_first_window - req.t_prefilled) * MS,
        "codec_ms": (req.t_first_audio - req.t_first_window) * MS,
        "framework_ms": ((req.t_start - t_chunk) + (t_audio - req.t_first_audio)) * MS,
        "first_chunk_chars": len(req.text),
    }
    result["model_floor_ms"] = result["prefill_ms"] + result["decode_to_first_window_ms"] + result["codec_ms"]
    return result


def _active(service):
    """The service's request in flight, if any."""
    return next((r for r in reversed(service.requests) if not r.done), None)


async def _interrupt_once(model, params) -> dict[str, float]:
    from pipecat.frames.frames import InterruptionFrame, TTSSpeakFrame

    from pipecat_localtts.service import LocalTTSService

    service = LocalTTSService(model=model, params=params)
    result: dict[str, float] = {}

    async def script(worker, probe) -> None:
        await worker.queue_frame(TTSSpeakFrame(LONG_TEXT))
        await asyncio.wait_for(probe.audio_event.wait(), 600)
        await asyncio.sleep(0.3)
        req = _active(service)
        assert req is not None, "the long utterance ended before the interruption"
        t_interrupt = time.perf_counter()
        await worker.queue_frame(InterruptionFrame())
        while not req.done:
            await asyncio.sleep(0.001)
        probe.audio_event.clear()
        t_next = time.perf_counter()
        await worker.queue_frame(TTSSpeakFrame("Okay, go ahead."))
        await asyncio.wait_for(probe.audio_event.wait(), 600)
        t_next_audio = max(probe.first_audio.values())
        result.update(
            to_lm_idle_ms=(req.t_lm_done - t_interrupt) * MS,
            to_codec_idle_ms=(req.t_done - t_interrupt) * MS,
            steps_after_cancel=req.steps - (req.steps_at_cancel or req.steps),
            step_ms=req.lm_seconds / max(1, len(req.tokens)) * MS,
            next_turn_ttfa_ms=(t_next_audio - t_next) * MS,
        )

    await _pipeline_session(service, script)
    return result


def bench_pipeline(model: o.OrpheusModel, *, rounds: int, tokens_per_s: float) -> dict:
    """Sections 2 and 3, through a real Pipecat pipeline."""
    params = GenerationParams(seed=0, guard_seconds_per_char=0.01, guard_min_seconds=0.5)
    ttfa: dict[str, list[dict]] = {"adaptive": [], "sentence": []}
    interrupts = []
    for _ in range(rounds):
        for aggregator in ttfa:
            ttfa[aggregator].append(
                asyncio.run(_ttfa_once(model, aggregator=aggregator, tokens_per_s=tokens_per_s, params=params))
            )
        interrupts.append(asyncio.run(_interrupt_once(model, GenerationParams(seed=0))))

    def med(runs: list[dict]) -> dict[str, float]:
        return {key: _median([r[key] for r in runs]) for key in runs[0]}

    out = {"llm_tokens_per_s": tokens_per_s, "rounds": rounds}
    out["ttfa"] = {agg: med(runs) for agg, runs in ttfa.items()}
    out["ttfa"]["speedup_vs_sentence"] = out["ttfa"]["sentence"]["total_ms"] / out["ttfa"]["adaptive"]["total_ms"]
    out["interruption"] = med(interrupts)
    return out


# ---------------------------------------------------------------------- 4. memory


def bench_memory(model: o.OrpheusModel, engine: BatchedEngine, *, utterances: int) -> dict:
    """RSS (and GPU memory) after each of many short consecutive utterances."""
    params = GenerationParams(seed=0, max_tokens=5 * o.TOKENS_PER_FRAME, guard_min_seconds=1e3)
    rss, gpu = [], []
    cuda = model.device.type == "cuda"
    for i in range(utterances):
        sink = BlockingSink()
        engine.submit(f"Utterance number {i}, short and sweet.", model.voices[0], params, sink)
        for _ in sink:
            pass
        rss.append(_rss_mb())
        if cuda:
            gpu.append(torch.cuda.memory_allocated(model.device) / 2**20)
    quarter = max(1, utterances // 4)
    result = {
        "utterances": utterances,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_first_quarter_mb": _median(rss[:quarter]),
        "rss_last_quarter_mb": _median(rss[-quarter:]),
        "rss_trace_mb": rss,
    }
    result["rss_growth_mb"] = result["rss_last_quarter_mb"] - result["rss_first_quarter_mb"]
    if cuda:
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated(model.device) / 2**20
        result["gpu_growth_mb"] = _median(gpu[-quarter:]) - _median(gpu[:quarter])
    return result


# ---------------------------------------------------------------------- driver


def run_shape(shape: str, *, device: str | None, rounds: int, tokens: int, utterances: int,
              tokens_per_s: float) -> dict:
    """All sections for one model shape, in this process."""
    t0 = time.perf_counter()
    model = random_orpheus(shape, seed=0, device=device)
    # One slot: sections 1 and 4 measure one request at a time (the pipeline sections run
    # the service, on its shared engine).
    engine = BatchedEngine(model, max_batch=1, max_tokens=GenerationParams().max_tokens)
    engine.start()
    try:
        result: dict[str, Any] = {
            "shape": shape,
            "llama": {k: SHAPES[shape][k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                     "num_key_value_heads", "intermediate_size", "vocab_size")},
            "params_m": sum(p.numel() for p in model.lm.parameters()) / 1e6,
            "dtype": str(next(model.lm.parameters()).dtype),
            "max_batch": engine.max_batch,
            "cache_tokens": engine.max_len,  # per slot: the prompt budget + max_tokens
            "machine": machine_info(model.device),
        }
        result["step"] = bench_step(model, engine, tokens=tokens, rounds=rounds)
        result["memory"] = bench_memory(model, engine, utterances=utterances)
    finally:
        engine.close()
    result.update(bench_pipeline(model, rounds=rounds, tokens_per_s=tokens_per_s))
    result["bench_seconds"] = time.perf_counter() - t0
    return result


def plot(results: dict[str, dict], path: Path) -> None:
    """Latency breakdown, step-time comparison and memory trace, one row per shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(results)
    fig, axes = plt.subplots(len(shapes), 3, figsize=(15, 4 * len(shapes)), squeeze=False)
    parts = ["chunker_wait_ms", "framework_ms", "prefill_ms", "decode_to_first_window_ms", "codec_ms"]
    for row, shape in zip(axes, shapes):
        r = results[shape]
        ax = row[0]
        left = np.zeros(2)
        for part in parts:
            values = np.array([r["ttfa"][agg][part] for agg in ("adaptive", "sentence")])
            ax.barh(["adaptive chunker", "Pipecat sentence"], values, left=left, label=part[:-3])
            left += values
        ax.set_xlabel("ms from first LLM token to first audio frame")
        ax.set_title(f"{shape}: time to first audio ({r['llm_tokens_per_s']:.0f} LLM tokens/s)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
        ax = row[1]
        names = ["bare forward", "engine step", "generate() step"]
        values = [r["step"]["bare_forward_ms"], r["step"]["engine_step_ms"], r["step"]["generate_step_ms"]]
        ax.bar(names, values, color=["grey", "tab:green", "tab:red"])
        ax.set_ylabel("ms per token")
        ax.set_title(
            f"{shape}: step (RTF ours {r['step']['engine_rtf']:.2f} vs "
            f"generate {r['step']['generate_rtf']:.2f})"
        )
        ax = row[2]
        ax.plot(r["memory"]["rss_trace_mb"])
        ax.ticklabel_format(useOffset=False, axis="y")
        ax.set_xlabel("utterance")
        ax.set_ylabel("RSS MB")
        ax.set_title(f"{shape}: memory over {r['memory']['utterances']} utterances")
    fig.suptitle(f"pipecat-localtts benchmark on {next(iter(results.values()))['machine']['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``pipecat-localtts bench``: run the suite, write results.json and results.png."""
    parser = argparse.ArgumentParser(prog="pipecat-localtts bench", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,small", help="comma list of: " + ", ".join(SHAPES))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--rounds", type=int, default=3, help="repetitions (medians reported)")
    parser.add_argument("--tokens", type=int, default=140, help="tokens per step-benchmark request")
    parser.add_argument("--utterances", type=int, default=200, help="utterances for the memory check")
    parser.add_argument("--llm-tokens-per-s", type=float, default=40.0)
    parser.add_argument("--shape-only", help=argparse.SUPPRESS)  # child process: one shape to stdout
    args = parser.parse_args(argv)
    common = dict(device=args.device, rounds=args.rounds, tokens=args.tokens,
                  utterances=args.utterances, tokens_per_s=args.llm_tokens_per_s)
    if args.shape_only:
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="WARNING")
        print(json.dumps(run_shape(args.shape_only, **common)))
        return 0
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {', '.join(SHAPES)}")
    results = {}
    for shape in shapes:
        print(f"bench: {shape} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "pipecat_localtts.benchmark", "--shape-only", shape,
               *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in vars(args).items()
                     if k in ("rounds", "tokens", "utterances", "llm_tokens_per_s")), [])]
        if args.device:
            cmd += ["--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            return proc.returncode
        results[shape] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(summary(shape, results[shape]), file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "results.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.png'}", file=sys.stderr)
    return 0


def summary(shape: str, r: dict) -> str:
    """A few lines a person can read."""
    s, t, i, m = r["step"], r["ttfa"], r["interruption"], r["memory"]
    return "\n".join([
        f"[{shape}] on {r['machine']['device']} ({r['machine'].get('gpu', r['machine']['cpu'])}), {r['params_m']:.0f} M params",
        f"  step: engine {s['engine_step_ms']:.2f} ms vs bare forward {s['bare_forward_ms']:.2f} ms "
        f"(x{s['engine_vs_bare']:.2f}); generate() {s['generate_step_ms']:.2f} ms",
        f"  throughput (audio s / wall s): engine {s['engine_rtf']:.2f} vs generate+reference decode "
        f"{s['generate_rtf']:.2f} (x{s['throughput_vs_generate']:.2f}); {s['engine_tokens_per_s']:.0f} tokens/s",
        f"  TTFA: adaptive {t['adaptive']['total_ms']:.0f} ms (chunker wait {t['adaptive']['chunker_wait_ms']:.0f}, "
        f"floor {t['adaptive']['model_floor_ms']:.0f}, framework {t['adaptive']['framework_ms']:.1f}) vs sentence "
        f"{t['sentence']['total_ms']:.0f} ms (x{t['speedup_vs_sentence']:.2f})",
        f"  interruption: LM idle after {i['to_lm_idle_ms']:.1f} ms (step {i['step_ms']:.1f} ms), codec idle after "
        f"{i['to_codec_idle_ms']:.1f} ms; next turn first audio {i['next_turn_ttfa_ms']:.0f} ms",
        f"  memory: peak RSS {m['peak_rss_mb']:.0f} MB, drift over {m['utterances']} utterances "
        f"{m['rss_growth_mb']:+.1f} MB" + (f", GPU peak {m['gpu_peak_mb']:.0f} MB" if "gpu_peak_mb" in m else ""),
    ])


if __name__ == "__main__":
    sys.exit(main())
