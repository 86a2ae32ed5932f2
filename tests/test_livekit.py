"""The LiveKit bot example, through Pipecat's real LiveKit output path, with no server.

Only the room's network is skipped: ``rtc.Room`` is replaced by a subclass whose ``connect``
does nothing and whose local participant records the track that ``publish_track`` is given.
Everything else is the real code: ``LiveKitTransportClient.connect`` creates its
``rtc.AudioSource`` and ``LocalAudioTrack``, ``LiveKitOutputTransport`` chunks, converts and
writes the frames, and the native source paces them out. ``rtc.AudioStream.from_track`` on
the published track is a loopback tap: it reads back what the room would have received.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
from livekit import rtc
from pipecat.frames.frames import TTSAudioRawFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection
from pipecat.workers.runner import WorkerRunner

from pipecat_localtts.engine.sampling import GenerationParams

ROOT = Path(__file__).resolve().parents[1]
RATE = 24000
FRAME_S = 2048 / RATE  # one SNAC frame of audio
GUARD_MIN_S = 3.0  # the tiny model runs to the guard: ceil(3.0 / 0.08533) = 36 frames = 3.072 s
EXPECTED_SAMPLES = math.ceil(GUARD_MIN_S / FRAME_S) * 2048


def _load_example():
    spec = importlib.util.spec_from_file_location("livekit_bot", ROOT / "examples" / "livekit_bot.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["livekit_bot"] = module
    spec.loader.exec_module(module)
    return module


bot = _load_example()


class _LocalParticipant:
    """Stands in for the connected local participant: keeps what is published."""

    identity = "localtts-bot"

    def __init__(self, on_publish):
        self._on_publish = on_publish

    async def publish_track(self, track, options):
        self._on_publish(track)
        return SimpleNamespace(sid="TR_loopback", track=track)

    async def publish_data(self, *args, **kwargs):
        pass


class LoopbackRoom(rtc.Room):
    """A real ``rtc.Room`` whose connection to a server is skipped."""

    instances: ClassVar[list[LoopbackRoom]] = []

    def __init__(self, loop=None):
        super().__init__(loop=loop)
        self.published: list[rtc.LocalAudioTrack] = []
        self.remote: dict[str, SimpleNamespace] = {}
        self._participant = _LocalParticipant(self.published.append)
        LoopbackRoom.instances.append(self)

    async def connect(self, url, token, options=None):  # no network
        self.connect_url = url

    @property
    def local_participant(self):
        return self._participant

    @property
    def remote_participants(self):
        return dict(self.remote)

    def join(self, identity: str) -> None:
        """A remote participant joins: the room event LiveKit would raise."""
        participant = SimpleNamespace(identity=identity)
        self.remote[identity] = participant
        self.emit("participant_connected", participant)

    def leave(self, identity: str) -> None:
        self.emit("participant_disconnected", self.remote.pop(identity))


class AudioFromTTS(BaseObserver):
    """Records the audio the TTS service pushes into the output transport."""

    def __init__(self, tts):
        super().__init__()
        self._tts = tts
        self.chunks: list[bytes] = []
        self.rates: set[int] = set()

    async def on_push_frame(self, data: FramePushed):
        if (
            data.source is self._tts
            and data.direction == FrameDirection.DOWNSTREAM
            and isinstance(data.frame, TTSAudioRawFrame)
        ):
            self.chunks.append(data.frame.audio)
            self.rates.add(data.frame.sample_rate)


async def _tap(track: rtc.LocalAudioTrack, frames: list[tuple[float, np.ndarray]]):
    stream = rtc.AudioStream.from_track(track=track, sample_rate=RATE, num_channels=1)
    try:
        async for event in stream:
            pcm = np.frombuffer(bytes(event.frame.data), dtype=np.int16).copy()
            frames.append((time.monotonic(), pcm))
    finally:
        await stream.aclose()


def _zero_runs(pcm: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """(start, length) of the runs of exact zeros at least min_len long."""
    edges = np.diff(np.concatenate([[0], (pcm == 0).astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(a), int(b - a)) for a, b in zip(starts, ends) if b - a >= min_len]


@pytest.mark.timeout(120)
async def test_greeting_reaches_the_room_intact_and_at_real_time(monkeypatch):
    monkeypatch.setattr(rtc, "Room", LoopbackRoom)
    LoopbackRoom.instances.clear()

    config = bot.LiveKitConfig(url="ws://127.0.0.1:9", token="not-checked", room="test-room")
    params = GenerationParams(seed=1, guard_seconds_per_char=0.01, guard_min_seconds=GUARD_MIN_S)
    tts = bot.build_tts("tiny", params=params)
    await tts.load()
    transport = bot.build_transport(config)
    worker = bot.build_worker(transport, tts, greeting="Hi.")
    produced = AudioFromTTS(tts)
    worker.add_observer(produced)

    received: list[tuple[float, np.ndarray]] = []
    taps: list[asyncio.Task] = []

    @worker.event_handler("on_pipeline_started")
    async def on_started(worker, frame):
        (room,) = LoopbackRoom.instances
        (track,) = room.published  # the real LocalAudioTrack over the real AudioSource
        assert isinstance(track, rtc.LocalAudioTrack)
        taps.append(asyncio.create_task(_tap(track, received)))
        await asyncio.sleep(0.1)
        room.join("user")  # -> on_first_participant_joined -> the example greets

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    requests = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not run.done():
            if any(r.done for r in tts.requests):
                requests = [r for r in tts.requests if r.done]
            got = sum(len(p) for _, p in received)
            # all of the greeting, then 0.3 s more: the queued tail has played out
            if requests and got >= EXPECTED_SAMPLES + int(0.3 * RATE) + 5000:
                break
            await asyncio.sleep(0.05)
        # The last participant leaves: the example ends the pipeline by itself.
        LoopbackRoom.instances[0].leave("user")
        await asyncio.wait_for(run, 20)
    finally:
        if not run.done():
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        for tap in taps:
            tap.cancel()
        await asyncio.gather(*taps, return_exceptions=True)

    # What the service produced: one request, at 24 kHz, as long as the guard allows.
    assert [(r.text, r.audio_samples) for r in requests] == [("Hi.", EXPECTED_SAMPLES)]
    assert produced.rates == {RATE}
    sent = np.frombuffer(b"".join(produced.chunks), dtype=np.int16)
    assert len(sent) == EXPECTED_SAMPLES
    assert received, "nothing came out of the published track"

    # What the room got. The source emits 10 ms frames continuously (silence when its queue is
    # empty), so the greeting is the span from the first to the last non-zero sample. The
    # tiny model's audio is noise and has no runs of exact zeros; a run inside the span is
    # silence the source inserted because the TTS fell behind real time (an underrun).
    pcm = np.concatenate([p for _, p in received])
    times = np.concatenate([np.full(len(p), t) for t, p in received])
    voiced = np.flatnonzero(pcm)
    assert len(voiced), "the published track carried only silence"
    first, last = int(voiced[0]), int(voiced[-1])
    segment = pcm[first : last + 1]
    gaps = _zero_runs(segment, min_len=24)  # >= 1 ms of exact zeros
    gap_samples = sum(n for _, n in gaps)
    keep = np.ones(len(segment), dtype=bool)
    for start, n in gaps:
        keep[start : start + n] = False

    # (a) The same audio: sample for sample (24 kHz in, 24 kHz out: no resampling, so no
    # tolerance is needed), nothing dropped at the start or the end, nothing added but
    # underrun silence, and at most 0.25 s of that (the tiny model runs ~2x real time on a CPU).
    assert gap_samples <= 0.25 * RATE, f"underrun gaps {gaps}"
    heard = segment[keep]
    # The service fades each utterance in and out over 5 ms, so its first and last samples
    # may round to exact zeros, which the span above cannot tell from silence: compare with
    # the sent audio trimmed the same way (a handful of samples at most).
    sent_voiced = np.flatnonzero(sent)
    sent = sent[int(sent_voiced[0]) : int(sent_voiced[-1]) + 1]
    assert EXPECTED_SAMPLES - len(sent) <= 10
    assert len(heard) == len(sent), (len(heard), len(sent), gaps)
    assert np.array_equal(heard, sent)
    corr = float(np.dot(heard.astype(np.float64), sent) / (np.linalg.norm(heard) * np.linalg.norm(sent)))
    assert corr > 0.999

    # (b) Pacing: the greeting arrives over the wall-clock time it lasts. The tap sees 10 ms
    # frames (span = duration - 10 ms); allow 10 % for timer and event-loop jitter. A burst
    # (the whole greeting handed over at once) would arrive within a few milliseconds.
    duration = len(segment) / RATE
    span = float(times[last] - times[first])
    assert 0.9 * duration - 0.01 <= span <= 1.1 * duration + 0.05, (span, duration)
    # and evenly: no 250 ms of wall clock delivers more than 0.5 s of the greeting.
    voiced_times = times[first : last + 1]
    window_counts = np.searchsorted(voiced_times, voiced_times + 0.25, side="right") - np.arange(len(voiced_times))
    assert window_counts.max() <= 0.5 * RATE, window_counts.max() / RATE
    print(f"greeting {duration:.3f} s arrived over {span:.3f} s; underrun gaps {gaps}")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_config_mints_an_agent_token_from_key_and_secret():
    from livekit import api

    env = {
        "LIVEKIT_URL": "ws://localhost:7880",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "secret",
        "LIVEKIT_ROOM_NAME": "demo",
    }
    config = bot.livekit_config(env)
    assert (config.url, config.room) == ("ws://localhost:7880", "demo")
    claims = api.TokenVerifier("devkey", "secret").verify(config.token)
    assert claims.identity == bot.BOT_IDENTITY
    assert claims.video.room_join and claims.video.room == "demo" and claims.video.agent
    user = api.TokenVerifier("devkey", "secret").verify(config.user_token)
    assert user.video.room == "demo" and not user.video.agent

    # A ready token wins; --url/--room win over the environment.
    config = bot.livekit_config({**env, "LIVEKIT_TOKEN": "given"}, url="ws://other:7880", room="r2")
    assert (config.url, config.token, config.room) == ("ws://other:7880", "given", "r2")
    with pytest.raises(SystemExit):
        bot.livekit_config({"LIVEKIT_API_KEY": "devkey", "LIVEKIT_API_SECRET": "secret"})
    with pytest.raises(SystemExit):
        bot.livekit_config({"LIVEKIT_URL": "ws://localhost:7880"})


def test_llm_is_optional_and_chat_messages_are_read():
    assert bot.build_llm({}) is None
    llm = bot.build_llm({"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "LLM_MODEL": "m"})
    assert type(llm).__name__ == "OpenAILLMService"
    # The LLM pipeline builds without connecting anywhere.
    config = bot.LiveKitConfig(url="ws://127.0.0.1:9", token="t", room="r")
    transport = bot.build_transport(config)
    worker = bot.build_worker(transport, bot.build_tts("tiny"), llm=llm)
    assert type(worker).__name__ == "PipelineWorker"
    assert bot.chat_text(b"hello there") == "hello there"
    assert bot.chat_text(b'{"message": " hi "}') == "hi"
    assert bot.chat_text(b'{"text": "yo"}') == "yo"
    assert bot.chat_text(b'{"other": 1}') is None
    assert bot.chat_text(b"\xff\xfe") is None
