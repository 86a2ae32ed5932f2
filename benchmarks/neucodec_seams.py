"""NeuCodec streaming seams: ``python benchmarks/neucodec_seams.py [--size real|tiny] [--utterances 3] [--frames 300]``.

NeuCodec's decoder is bidirectional (full attention, GroupNorm over time), so any streaming
decode differs from decoding the whole utterance at once. This measures by how much, for
several ways of streaming, on ONE randomly initialised decoder (real size by default:
hidden 1024, 12 layers, 16 heads, the real hop / ISTFT / codebook; ``--size tiny`` for a smoke
run) and utterances of uniformly random codes (fixed seed). For each scheme, against the
offline decode of the whole utterance:

* ``max_abs``: largest absolute sample error; ``rel_rms``: RMS error / RMS of the offline
  signal (pooled over the utterances); ``snr_db = -20 log10(rel_rms)``;
* ``seam_rel_rms`` / ``other_rel_rms`` (and ``seam_max_abs`` / ``other_max_abs``): the same
  within ``--seam-radius`` frames of a seam (where one window's audio hands over to the next:
  a cut, or the centre of a crossfade) and everywhere else, both relative to the whole
  signal's RMS;
* ``first_audio_frames``: codes that had arrived when the first sample came out (codes
  arrive one at a time);
* ``decode_work``: frames decoded (context included) per frame of audio; ``decode_s``: wall
  time of the decodes on this machine.

Schemes:

* ``audar``: independent 50-code chunks, no context, concatenated.
* ``neutts``: the ``neutts`` package's streaming, rebuilt from its description: whenever 30
  codes past the decoded point ``d`` exist (25 per chunk + 5 look-ahead), decode codes
  ``[d - 51, d + 31)`` (with codes arriving one at a time, ``d + 30`` is the last one there),
  keep the audio of ``[d, d + 27)`` and overlap-add these pieces at a stride of 25 frames
  with triangular weights (each piece weighted by a triangle over its whole length,
  normalised by the summed weights), i.e. a 2-frame blend at each seam; the rest of the
  utterance is decoded at the end with 51 frames of look-back. (Upstream the final piece
  is taken from one frame before ``d`` but placed at ``d``; here it is aligned, so the
  output has the offline length.) The upstream context also starts with the reference
  voice's codes; these utterances have none.
* ``ours_*``: :class:`~pipecat_localtts.codecs.neucodec.NeuCodecStream` with chunk ``c``,
  first chunk ``f``, look-back ``b``, look-ahead ``a`` and crossfade ``o`` frames, driven as
  the engine drives it (``feed`` one frame, ``pending_window`` / ``decode_windows`` /
  ``accept``).

Random weights attend everywhere and normalise over whole windows, so these numbers say how
much context matters for this architecture with untrained weights, not exactly for the
trained NeuCodec (whose attention may be more local). About half of the random decoder's
output power does not depend on the codes (``code_dependent_fraction`` in the results), so
errors relative to the code-dependent part are about 1.4 times the ``rel_rms`` shown.

Results go to ``benchmarks/results/neucodec_seams.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipecat_localtts.codecs.neucodec import (
    TINY_NEUCODEC_CONFIG,
    NeuCodecCodec,
    NeuCodecStream,
    build_random_neucodec,
)

#: Our settings (chunk, first_chunk, lookback, lookahead, overlap) compared: the codec's
#: default first, then one change at a time.
OURS: list[tuple[int, int, int, int, int]] = [
    (25, 20, 50, 5, 4),  # default
    (25, 10, 50, 5, 4),  # earlier first audio
    (25, 20, 50, 0, 4),  # no look-ahead
    (25, 20, 50, 10, 4),  # more look-ahead
    (25, 20, 25, 5, 4),  # less look-back
    (25, 20, 75, 5, 4),  # more look-back
    (25, 20, 50, 5, 0),  # hard cut
    (25, 20, 50, 5, 2),  # shorter crossfade
    (10, 20, 50, 5, 4),  # small chunks
    (50, 20, 50, 5, 4),  # big chunks
    (25, 10, 25, 5, 2),  # lighter: less context and work
]


@dataclass
class Run:
    """One scheme's streamed decode of one utterance."""

    audio: np.ndarray  # [n * spf]
    seams: list[int]  # sample positions where one window's audio hands over to the next
    frames_decoded: int
    first_audio_frames: int
    decode_s: float


def _decode(codec: NeuCodecCodec, codes: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    audio = codec.decode(codes)
    return audio, time.perf_counter() - t0


def run_audar(codec: NeuCodecCodec, codes: np.ndarray, chunk: int = 50) -> Run:
    """Independent ``chunk``-code pieces, no context, concatenated."""
    n, spf = len(codes), codec.samples_per_frame
    pieces, spent = [], 0.0
    for start in range(0, n, chunk):
        audio, dt = _decode(codec, codes[start : start + chunk])
        pieces.append(audio)
        spent += dt
    seams = [s * spf for s in range(chunk, n, chunk)]
    return Run(np.concatenate(pieces), seams, n, min(chunk, n), spent)


def _triangle_overlap_add(pieces: list[np.ndarray], stride: int) -> np.ndarray:
    """Piece ``i`` placed at ``i * stride``, each weighted by a triangle over its length
    (weights ``min(t, 1 - t)`` at ``t = (j + 1) / (L + 1)``), divided by the summed weights."""
    total = max(i * stride + len(p) for i, p in enumerate(pieces))
    out = np.zeros(total, dtype=np.float64)
    weight = np.zeros(total, dtype=np.float64)
    for i, piece in enumerate(pieces):
        t = np.arange(1, len(piece) + 1, dtype=np.float64) / (len(piece) + 1)
        w = np.minimum(t, 1.0 - t)
        out[i * stride : i * stride + len(piece)] += w * piece
        weight[i * stride : i * stride + len(piece)] += w
    return (out / weight).astype(np.float32)


def run_neutts(
    codec: NeuCodecCodec, codes: np.ndarray, chunk: int = 25, lookahead: int = 5, lookback: int = 50, overlap: int = 1
) -> Run:
    """The ``neutts`` package's scheme (see the module docstring), codes arriving one at a time."""
    n, spf = len(codes), codec.samples_per_frame
    pieces: list[np.ndarray] = []
    decoded = frames = 0  # the decoded point d; frames decoded
    first_audio, spent = n, 0.0
    for pushed in range(1, n + 1):
        if pushed - decoded < chunk + lookahead:
            continue
        start = max(decoded - lookback - overlap, 0)
        end = min(decoded + chunk + lookahead + overlap, pushed)
        audio, dt = _decode(codec, codes[start:end])
        spent, frames = spent + dt, frames + (end - start)
        keep = (decoded - start) * spf
        pieces.append(audio[keep : keep + (chunk + 2 * overlap) * spf])
        if len(pieces) == 1:
            first_audio = pushed
        decoded += chunk
    if decoded < n:  # the rest, decoded once the utterance has ended
        start = max(decoded - lookback - overlap, 0)
        audio, dt = _decode(codec, codes[start:n])
        spent, frames = spent + dt, frames + (n - start)
        pieces.append(audio[(decoded - start) * spf :])
    out = _triangle_overlap_add(pieces, chunk * spf)[: n * spf]
    seams = [(i * chunk + overlap) * spf for i in range(1, len(pieces))]
    return Run(out, seams, frames, first_audio, spent)


def run_ours(codec: NeuCodecCodec, codes: np.ndarray, settings: tuple[int, int, int, int, int]) -> Run:
    """A :class:`NeuCodecStream`, driven as the engine's codec worker drives it."""
    chunk, first_chunk, lookback, lookahead, overlap = settings
    stream = NeuCodecStream(
        codec, chunk=chunk, first_chunk=first_chunk, lookback=lookback, lookahead=lookahead, overlap=overlap
    )
    out: list[np.ndarray] = []
    first_audio, spent = len(codes), 0.0

    def drain() -> None:
        nonlocal first_audio, spent
        while (window := stream.pending_window()) is not None:
            t0 = time.perf_counter()
            (audio,) = codec.decode_windows([window])
            spent += time.perf_counter() - t0
            pcm = stream.accept(audio)
            if len(pcm) and not any(len(p) for p in out):
                first_audio = stream.frames_pushed
            out.append(pcm)

    for code in codes:
        stream.feed([int(code)])
        drain()
    stream.end()
    drain()
    spf, n = codec.samples_per_frame, len(codes)
    seams = []
    k = 1
    while stream.boundary(k) < n:
        seams.append(int((stream.boundary(k) - overlap / 2) * spf))
        k += 1
    return Run(np.concatenate(out), seams, stream.frames_decoded, first_audio, spent)


def _summary(refs: list[np.ndarray], runs: list[Run], radius: int, spf: int) -> dict[str, Any]:
    """Error figures of one scheme over all utterances (see the module docstring)."""
    sq_ref = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in refs)
    n_ref = sum(len(r) for r in refs)
    ref_ms = sq_ref / n_ref
    sq = {"all": 0.0, "seam": 0.0, "other": 0.0}
    count = {"all": 0, "seam": 0, "other": 0}
    peak = {"all": 0.0, "seam": 0.0, "other": 0.0}
    for ref, run in zip(refs, runs):
        if run.audio.shape != ref.shape:
            raise AssertionError(f"streamed {run.audio.shape} samples, offline {ref.shape}")
        err = run.audio.astype(np.float64) - ref
        near = np.zeros(len(err), dtype=bool)
        for s in run.seams:
            near[max(0, s - radius) : s + radius] = True
        for part, sel in (("all", slice(None)), ("seam", near), ("other", ~near)):
            e = err[sel]
            sq[part] += float(np.sum(e**2))
            count[part] += int(e.size)
            peak[part] = max(peak[part], float(np.max(np.abs(e)))) if e.size else peak[part]

    def rel(part: str) -> float:
        return math.sqrt(sq[part] / count[part] / ref_ms) if count[part] else float("nan")

    rel_rms = rel("all")
    return {
        "max_abs": peak["all"],
        "rel_rms": rel_rms,
        "snr_db": -20 * math.log10(rel_rms) if rel_rms > 0 else float("inf"),
        "seam_rel_rms": rel("seam"),
        "other_rel_rms": rel("other"),
        "seam_max_abs": peak["seam"],
        "other_max_abs": peak["other"],
        "first_audio_frames": max(r.first_audio_frames for r in runs),
        "decode_work": sum(r.frames_decoded for r in runs) / (n_ref / spf),
        "decode_s": sum(r.decode_s for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["real", "tiny"], default="real", help="decoder size (default real)")
    parser.add_argument("--utterances", type=int, default=3, help="utterances of random codes (default 3)")
    parser.add_argument("--frames", type=int, default=300, help="frames per utterance (default 300 = 6 s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the codes")
    parser.add_argument("--seam-radius", type=int, default=2, help="frames each side of a seam counted as near it")
    parser.add_argument(
        "--ours",
        default=None,
        help="our settings to compare instead of the built-in list: 'c,f,b,a,o;c,f,b,a,o;...' "
        "(chunk, first chunk, look-back, look-ahead, overlap)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "neucodec_seams.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = TINY_NEUCODEC_CONFIG if args.size == "tiny" else None
    codec = NeuCodecCodec(build_random_neucodec(overrides, seed=args.seed))
    spf = codec.samples_per_frame
    rng = np.random.default_rng(args.seed)
    utterances = [rng.integers(0, codec.codebook_size, size=args.frames) for _ in range(args.utterances)]
    refs = [codec.decode(u).astype(np.float64) for u in utterances]

    schemes: dict[str, Any] = {
        "audar": ({"chunk": 50}, lambda codes: run_audar(codec, codes)),
        "neutts": (
            {"chunk": 25, "lookahead": 5, "lookback": 50, "overlap": 1},
            lambda codes: run_neutts(codec, codes),
        ),
    }
    ours = OURS if not args.ours else [tuple(int(v) for v in part.split(",")) for part in args.ours.split(";")]
    for s in ours:
        if len(s) != 5:
            parser.error(f"--ours: each setting needs 5 numbers, got {s}")
        name = "ours_c{}_f{}_b{}_a{}_o{}".format(*s)
        settings = dict(zip(("chunk", "first_chunk", "lookback", "lookahead", "overlap"), s))
        schemes[name] = (settings, lambda codes, s=s: run_ours(codec, codes, s))

    results: dict[str, Any] = {}
    for name, (settings, run) in schemes.items():
        runs = [run(codes) for codes in utterances]
        results[name] = {"settings": settings, **_summary(refs, runs, args.seam_radius * spf, spf)}

    signal_ms = float(np.mean(np.concatenate(refs) ** 2))
    pairs = [np.mean((a - b) ** 2) / 2 for a, b in zip(refs, refs[1:])]
    config = codec.config
    report = {
        "size": args.size,
        "decoder": {
            "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "hop_length": config.hop_length,
            "n_fft": config.n_fft,
            "codebook_size": codec.codebook_size,
        },
        "utterances": args.utterances,
        "frames": args.frames,
        "seed": args.seed,
        "seam_radius_frames": args.seam_radius,
        "threads": torch.get_num_threads(),
        "signal_rms": math.sqrt(signal_ms),
        "code_dependent_fraction": float(np.mean(pairs) / signal_ms) if pairs else None,
        "default": "ours_c{}_f{}_b{}_a{}_o{}".format(
            codec.chunk, codec.first_chunk, codec.lookback, codec.lookahead, codec.overlap
        ),
        "schemes": results,
    }

    head = (
        f"{'scheme':26}{'max abs':>9}{'rel rms':>9}{'SNR dB':>8}{'seam':>8}{'other':>8}"
        f"{'first':>7}{'work':>6}{'time s':>8}"
    )
    print(f"NeuCodec {args.size} decoder (random weights), {args.utterances} x {args.frames} frames, seed {args.seed}")
    print(
        f"signal RMS {report['signal_rms']:.4g}; seam/other: rel RMS within +-{args.seam_radius} frames "
        "of a seam / elsewhere; first: codes before the first sample; work: frames decoded per frame"
    )
    print(head)
    for name, r in results.items():
        print(
            f"{name:26}{r['max_abs']:9.4f}{r['rel_rms']:9.4f}{r['snr_db']:8.2f}{r['seam_rel_rms']:8.4f}"
            f"{r['other_rel_rms']:8.4f}{r['first_audio_frames']:7d}{r['decode_work']:6.2f}{r['decode_s']:8.2f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
