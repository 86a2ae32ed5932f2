"""Chunker cost on long runs: ``python benchmarks/chunker.py [--pieces 4] [--sizes 2500,10000,40000]``.

Streams runs of one kind of text (letters, ``<``, titles, Han, spaces, a normal reply, ...)
into a fresh :class:`~pipecat_localtts.chunking.AdaptiveChunker` in small pieces, as an LLM
would, and prints the CPU time per 1,000 characters at each size and the ratio of the largest
size's time to the smallest's against the ratio of their lengths. A linear chunker keeps the
time ratio near the length ratio; a quadratic one squares it. Best of 3 runs per size.
"""

from __future__ import annotations

import argparse
import json
import time

from pipecat_localtts.chunking import AdaptiveChunker

RUNS = {
    "letters": "a",
    "angle-brackets": "<",
    "titles": "Dr. ",
    "digits": "7",
    "spaces": " ",
    "newlines": "\n",
    "han": "\u4f60",
    "han-clauses": "\u6211\u4eec\u53bb\u516c\u56ed\uff0c",
    "thai": "\u0e01\u0e35",
    "emoji": "\U0001f44d\U0001f3fd",
    "open-tags": "<ab ",
    "reply": "Well, I checked the calendar, and the meeting moved to Friday afternoon. ",
}


def _seconds(text: str, piece: int) -> float:
    best = float("inf")
    for _ in range(3):
        chunker = AdaptiveChunker()
        t0 = time.process_time()
        for i in range(0, len(text), piece):
            chunker.push(text[i : i + piece])
        chunker.flush()
        best = min(best, time.process_time() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pieces", type=int, default=4, help="characters per push (default 4)")
    parser.add_argument("--sizes", default="2500,10000,40000", help="run lengths in characters")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    from loguru import logger

    logger.remove()  # the hard-cut warning, once per run, is not what is measured
    results = {}
    print(f"{'run':16}" + "".join(f"{n:>10} ch" for n in sizes) + f"{'time ratio':>13}{'length ratio':>14}")
    for name, unit in RUNS.items():
        times = [_seconds((unit * (n // len(unit) + 1))[:n], args.pieces) for n in sizes]
        ratio = times[-1] / max(times[0], 1e-9)
        results[name] = {"sizes": sizes, "seconds": times, "time_ratio": ratio}
        cells = "".join(f"{1000 * t / n * 1000:>8.1f} ms" for t, n in zip(times, sizes, strict=True))
        print(f"{name:16}{cells}{ratio:>13.2f}{sizes[-1] / sizes[0]:>14.1f}")
    print("(ms per 1,000 characters; CPU time, best of 3)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"pieces": args.pieces, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
