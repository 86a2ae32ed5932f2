"""Command line: ``pipecat-localtts say "TEXT" --out FILE.wav``.

Runs the same engine the Pipecat service uses, without a pipeline: the text is chunked like a
``TTSSpeakFrame`` and the utterances are written one after another to a 24 kHz mono WAV.
"""

from __future__ import annotations

import argparse
import sys
import time
import wave
from pathlib import Path

import numpy as np

from pipecat_localtts.errors import LocalTTSError

TINY = "tiny"


def _parser() -> argparse.ArgumentParser:
    from pipecat_localtts.models.orpheus import DEFAULT_MODEL_ID, DEFAULT_VOICE

    parser = argparse.ArgumentParser(
        prog="pipecat-localtts", description="Local speech-token TTS (Orpheus + SNAC)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log engine details")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("bench", help="run the benchmark suite (pipecat-localtts bench --help)")
    say = sub.add_parser("say", help="speak TEXT into a WAV file")
    say.add_argument("text", help="what to say (emotive tags like <laugh> pass through)")
    say.add_argument("--out", required=True, type=Path, help="output .wav (24 kHz mono)")
    say.add_argument(
        "--model",
        default=DEFAULT_MODEL_ID,
        help=f"hub id or local directory (default {DEFAULT_MODEL_ID}); "
        f"'{TINY}' = tiny random model for checking the plumbing",
    )
    say.add_argument("--voice", default=DEFAULT_VOICE, help=f"voice name (default {DEFAULT_VOICE})")
    say.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    say.add_argument("--seed", type=int, default=None, help="sampling seed for reproducible output")
    return parser


def _say(args: argparse.Namespace) -> int:
    from pipecat_localtts.chunking import is_speakable, split_text
    from pipecat_localtts.engine.batched import BatchedEngine
    from pipecat_localtts.engine.request import BlockingSink
    from pipecat_localtts.engine.sampling import GenerationParams
    from pipecat_localtts.models.orpheus import load_orpheus
    from pipecat_localtts.testing import tiny_orpheus

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LocalTTSError("--device cuda: no CUDA device is available here; use --device cpu")
    if args.model == TINY:
        print(
            "note: --model tiny is a synthetic model with random weights: the audio is noise, "
            "useful only to check the plumbing.",
            file=sys.stderr,
        )
        model = tiny_orpheus(device=args.device)
    else:
        model = load_orpheus(args.model, device=args.device)
    model.check_voice(args.voice)
    chunks = [c for c in split_text(args.text) if is_speakable(c)]
    if not chunks:
        raise LocalTTSError("nothing to say: the text has no letters or digits")
    params = GenerationParams(seed=args.seed)
    # One request at a time, in order: one slot is all the utterances need.
    engine = BatchedEngine(model, max_batch=1, max_tokens=params.max_tokens)
    engine.start()
    pieces: list[np.ndarray] = []
    t0 = time.perf_counter()
    try:
        for chunk in chunks:
            sink = BlockingSink()
            engine.submit(chunk, args.voice, params, sink)
            pieces.extend(sink)
    finally:
        engine.close()
    elapsed = time.perf_counter() - t0
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    pcm16 = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(args.out), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(model.sample_rate)
        wav.writeframes(pcm16.tobytes())
    seconds = audio.size / model.sample_rate
    print(
        f"wrote {args.out}: {seconds:.2f} s of audio at {model.sample_rate} Hz "
        f"in {elapsed:.2f} s ({len(chunks)} chunk(s), model {model.name})",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pipecat-localtts`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from pipecat_localtts.benchmark import main as bench

        return bench(argv[1:])
    args = _parser().parse_args(argv)
    from loguru import logger

    logger.remove()
    # Resolve sys.stderr at each write, so a replaced stream (tests, wrappers) is followed.
    logger.add(lambda message: sys.stderr.write(message), level="DEBUG" if args.verbose else "WARNING")
    try:
        return _say(args)
    except LocalTTSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
