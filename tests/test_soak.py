"""Soak: hundreds of turns through one live pipeline, with random barge-ins.

Each turn is a ``TTSSpeakFrame`` or a streamed LLM turn; some are interrupted (as a user
barging in) before their first audio, mid-audio, or at the tail (the engine done, the audio
just out). Checked throughout: no audio of an interrupted turn comes out after its
interruption, no ``ErrorFrame``; and at the end, against a window of turns near the start,
that memory (RSS) and the thread count stayed flat.

The default run (300 turns) takes about a minute on two CPU cores. A longer one:
``LOCALTTS_SOAK_TURNS=5000 pytest tests/test_soak.py`` (``LOCALTTS_SOAK_SEED`` picks the
turns).
"""

from __future__ import annotations

import os
import random
import statistics

import pytest
from live_pipeline import InterruptionAudit, LivePipeline, streamed_turn
from pipecat.frames.frames import (
    InterruptionFrame,
    TTSSpeakFrame,
)

from pipecat_localtts import LocalTTSService
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.testing import tiny_orpheus

TURNS = int(os.environ.get("LOCALTTS_SOAK_TURNS", "300"))
SEED = int(os.environ.get("LOCALTTS_SOAK_SEED", "0"))
PARAMS = GenerationParams(seed=0, guard_seconds_per_char=0.01, guard_min_seconds=0.3)  # ~0.3-0.8 s
SENTENCES = [
    "Sure, I can help with that.",
    "The weather today is sunny with a light breeze, so bring a hat.",
    "Let me check the schedule for you, one moment please.",
    "Your order number is four five six, and it ships tomorrow morning.",
    "Okay.",
    "That is a great question, and the answer depends on a few things. First, the budget.",
]
MODES = ["none", "none", "before", "mid", "tail"]
WAIT = 30.0  # seconds; any single wait beyond this is a hang
pytestmark = pytest.mark.timeout(max(600, 2 * TURNS))  # a long run takes longer than the default


def process_status() -> tuple[int, int]:
    """(resident memory in kB, OS threads) of this process."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()[0] if value.split() else ""
    return int(fields["VmRSS"]), int(fields["Threads"])


def turn_frames(rng: random.Random) -> list:
    text = " ".join(rng.sample(SENTENCES, rng.randint(1, 2)))
    if rng.random() < 0.5:
        return [TTSSpeakFrame(text)]
    return streamed_turn(text, rng, max_piece=12)


async def test_soak_random_barge_ins_leave_no_stray_audio_no_errors_and_no_growth():
    rng = random.Random(SEED)
    service = LocalTTSService(model=tiny_orpheus(), params=PARAMS)

    audit = InterruptionAudit(service)  # frames of interrupted turns out too late
    modes = {m: 0 for m in MODES}
    samples = []  # (rss kB, threads) after each turn

    async with LivePipeline(service) as p:
        engine = service.engine
        for turn in range(TURNS):
            mode = rng.choice(MODES)
            modes[mode] += 1
            for frame in turn_frames(rng):
                await p.send(frame)
            if mode == "none":
                await p.until(lambda: p.started_contexts() and p.stopped(p.started_contexts()[0]), WAIT, f"turn {turn}")
            else:
                if mode == "mid":
                    await p.until(lambda: p.audio(), WAIT, f"turn {turn}'s first audio")
                elif mode == "tail":
                    await p.until(lambda: p.audio() and engine.idle, WAIT, f"turn {turn}'s last audio")
                await p.interrupt()
                await p.until(lambda: any(isinstance(f, InterruptionFrame) for f in p.down), WAIT, "the interruption")
            p.drain()  # keep memory flat: the checks above are per turn
            samples.append(process_status())
        await p.send(TTSSpeakFrame("All done for today."))
        await p.until(lambda: p.started_contexts() and p.stopped(p.started_contexts()[0]), WAIT, "the last turn")
        requests = list(p.service.requests)
    assert not p.errors, [e.error for e in p.errors][:5]
    assert not audit.stray, audit.stray[:5]  # nothing of an interrupted turn after its interruption
    assert audit.handled == audit.begun == TURNS - modes["none"] and all(modes.values()), modes
    assert requests[-1].text.strip() == "All done for today." and requests[-1].finish_reason in ("stop", "length")

    # Flat: the median RSS of the last tenth of the turns against a tenth after the first
    # fifth (by then allocator and thread pools are warm: RSS rises ~8 MiB over the first 100
    # turns, then ~2 KB a turn). The bound is generous for a loaded machine; it catches a
    # leak of ~150 KB a turn (a turn's audio and requests) in the default run, and of a few
    # KB a turn in a long one.
    window = max(TURNS // 10, 5)
    start, end = samples[TURNS // 5 : TURNS // 5 + window], samples[-window:]
    rss_start, rss_end = (statistics.median(s[0] for s in w) for w in (start, end))
    threads_start, threads_end = (max(s[1] for s in w) for w in (start, end))
    print(f"soak: {TURNS} turns {modes}, RSS {rss_start / 1024:.1f} -> {rss_end / 1024:.1f} MiB, "
          f"threads {threads_start} -> {threads_end}")
    assert rss_end - rss_start < 32 * 1024, (rss_start, rss_end)
    assert threads_end <= threads_start + 2, (threads_start, threads_end)  # none per turn
