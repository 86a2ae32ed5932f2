"""The codec thread: adaptive windows, exact audio, cancellation, failures."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipecat_localtts.codecs.snac import SNACCodec
from pipecat_localtts.engine.codec_worker import CodecWorker
from pipecat_localtts.engine.request import Request
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.testing import TINY_SNAC_CONFIG, build_random_snac


def Worker(*args, incremental: bool = False, **kwargs) -> CodecWorker:
    """A worker on windowed streams unless asked (windows are what a GPU batches; the
    incremental streams a CPU uses are tested where ``incremental=True``)."""
    return CodecWorker(*args, incremental=incremental, **kwargs)


@pytest.fixture(scope="module")
def codec():
    return SNACCodec(build_random_snac(TINY_SNAC_CONFIG, seed=0))


class Collector:
    def __init__(self):
        self.audio: dict[int, list[np.ndarray]] = {}
        self.ended: dict[int, str] = {}
        self.done = threading.Event()

    def emit(self, req, pcm):
        self.audio.setdefault(req.id, []).append(pcm)

    def finish(self, req, reason):
        self.ended[req.id] = reason
        self.done.set()

    def pcm(self, req) -> np.ndarray:
        return np.concatenate(self.audio.get(req.id, [np.zeros(0, np.float32)]))


def request() -> Request:
    return Request(text="x", prompt_ids=[1], max_new_tokens=70, params=GenerationParams(), sink=None)


def count_decodes(codec, delay: float = 0.0):
    """Count (and optionally slow down) the codec's window decodes."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        time.sleep(delay)

    return calls, codec.model.decoder.register_forward_hook(hook)


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=(n, 7))


def test_frames_waiting_for_a_busy_codec_are_decoded_together_and_exactly(codec):
    out = Collector()
    calls, handle = count_decodes(codec, delay=0.05)
    worker = Worker(codec, frames_per_decode=1, emit=out.emit, finish=out.finish)
    try:
        req = request()
        codes = frames(20)
        for f in codes:  # the LM is much faster than this (slowed) codec
            worker.frame(req, tuple(int(c) for c in f))
        worker.end(req, "length")
        assert out.done.wait(10)
    finally:
        handle.remove()
        worker.close()
    assert out.ended[req.id] == "length"
    np.testing.assert_allclose(out.pcm(req), codec.decode(codes), atol=1e-4, rtol=0)
    # One window per frame would be 20 decodes (plus the flush); waiting frames were batched.
    assert calls["n"] < 10
    assert req.codec_seconds > 0 and req.t_first_window is not None


def test_cancelled_request_drops_waiting_frames_and_ends_without_flush(codec):
    out = Collector()
    calls, handle = count_decodes(codec, delay=0.2)
    worker = Worker(codec, frames_per_decode=1, emit=out.emit, finish=out.finish)
    try:
        req = request()
        for f in frames(4):  # frame 0 becomes final: one (slow) decode starts
            worker.frame(req, tuple(int(c) for c in f))
        time.sleep(0.05)
        for f in frames(30, seed=1):  # these wait behind it
            worker.frame(req, tuple(int(c) for c in f))
        req.cancel()
        worker.end(req, "cancelled")
        assert out.done.wait(10)
        decodes_at_end = calls["n"]
    finally:
        handle.remove()
        worker.close()
    assert out.ended[req.id] == "cancelled"
    assert decodes_at_end == 1  # only the decode already running; no flush
    assert out.pcm(req).size == 2048


def test_codec_failure_fails_the_request_and_the_worker_goes_on(codec):
    out = Collector()

    def explode(module, inputs, output):
        raise RuntimeError("codec blew up")

    handle = codec.model.decoder.register_forward_hook(explode)
    worker = Worker(codec, frames_per_decode=1, emit=out.emit, finish=out.finish)
    try:
        req = request()
        for f in frames(5):
            worker.frame(req, tuple(int(c) for c in f))
        worker.end(req, "length")
        assert out.done.wait(10)
        handle.remove()
        assert out.ended[req.id] == "error" and "codec blew up" in str(req.error)
        assert req.cancelled  # tells the LM thread to stop producing frames for it
        # The same worker serves the next request.
        out.done.clear()
        ok = request()
        codes = frames(6)
        for f in codes:
            worker.frame(ok, tuple(int(c) for c in f))
        worker.end(ok, "stop")
        assert out.done.wait(10)
    finally:
        handle.remove()
        worker.close()
    assert out.ended[ok.id] == "stop"
    np.testing.assert_allclose(out.pcm(ok), codec.decode(codes), atol=1e-4, rtol=0)


def run_interleaved(worker, out, reqs, codes):
    """Frames of several requests, interleaved as the batched LM produces them, then their
    ends; waits until every request has finished."""
    for i in range(max(len(c) for c in codes)):
        for req, c in zip(reqs, codes):
            if i < len(c):
                worker.frame(req, tuple(int(x) for x in c[i]))
    for req in reqs:
        worker.end(req, "length")
    deadline = time.monotonic() + 30
    while len(out.ended) < len(reqs) and time.monotonic() < deadline:
        time.sleep(0.01)


class CountingCodec:
    """The real codec, with each batched call and its windows recorded (and slowed)."""

    def __init__(self, codec, delay: float = 0.0, fail_if=None):
        self._codec, self._delay, self._fail_if = codec, delay, fail_if
        self.calls: list[list[int]] = []  # per call: each window's start frame
        self.firsts: list[tuple[int, ...]] = []  # each window's first frame, in decode order

    def __getattr__(self, name):
        return getattr(self._codec, name)

    def stream(self, *, frames_per_decode: int = 1):
        stream = self._codec.stream(frames_per_decode=frames_per_decode)
        stream.codec = self  # its own decodes (push/flush) go through us as well
        return stream

    def decode_windows(self, windows):
        self.calls.append([int(w[1]) for w in windows])
        self.firsts.extend(tuple(w[0][0].tolist()) for w in windows)
        time.sleep(self._delay)
        if self._fail_if is not None and any(self._fail_if(w) for w in windows):
            raise RuntimeError("codec blew up")
        return self._codec.decode_windows(windows)


@pytest.mark.parametrize("incremental", [False, True], ids=["windows", "incremental"])
def test_interleaved_requests_waiting_for_a_busy_codec_get_big_windows_and_exact_audio(codec, incremental):
    out = Collector()
    counting = CountingCodec(codec, delay=0.05)
    worker = Worker(counting, frames_per_decode=1, emit=out.emit, finish=out.finish, incremental=incremental)
    if incremental:  # slow the incremental decodes down the same way
        real = counting._codec.incremental_stream

        def slowed():
            stream = real()
            decode = stream.decode_pending

            def slow_decode():
                time.sleep(0.05)
                counting.calls.append([stream.frames_pushed])
                return decode()

            stream.decode_pending = slow_decode
            return stream

        counting.incremental_stream = slowed
    reqs = [request() for _ in range(4)]
    codes = [frames(24, seed=i) for i in range(4)]
    try:
        run_interleaved(worker, out, reqs, codes)
        assert worker.idle
    finally:
        worker.close()
    assert all(out.ended[r.id] == "length" for r in reqs)
    for req, c in zip(reqs, codes):
        np.testing.assert_allclose(out.pcm(req), codec.decode(c), atol=1e-4, rtol=0)
    # One decode per frame would be 4 x 24; waiting frames of each request share a decode.
    assert worker.windows <= 4 * 5, worker.windows
    assert worker.decode_calls == len(counting.calls) == worker.windows  # CPU: one window per call


def test_a_new_requests_first_window_goes_before_the_others_next_windows(codec):
    out = Collector()
    counting = CountingCodec(codec, delay=0.1)
    worker = Worker(counting, frames_per_decode=1, emit=out.emit, finish=out.finish)
    old, new = request(), request()
    try:
        for f in frames(4):  # old's first window starts decoding (slowly)
            worker.frame(old, tuple(int(c) for c in f))
        time.sleep(0.03)
        for f in frames(10, seed=1):  # old has more due while that runs...
            worker.frame(old, tuple(int(c) for c in f))
        for f in frames(4, seed=2):  # ...and new's first window becomes due too
            worker.frame(new, tuple(int(c) for c in f))
        worker.end(old, "length")
        worker.end(new, "length")
        deadline = time.monotonic() + 30
        while len(out.ended) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.close()
    # old's first window, then new's first window, before old's next one.
    first_of = {tuple(frames(4)[0].tolist()): "old", tuple(frames(4, seed=2)[0].tolist()): "new"}
    order = [first_of.get(f, "other") for f in counting.firsts]
    assert order[:2] == ["old", "new"], order
    assert len(order) >= 3 and out.ended == {old.id: "length", new.id: "length"}


def test_batched_windows_decode_many_requests_in_one_call_and_a_bad_window_fails_only_its_request(codec):
    out = Collector()
    bad_code = 4095

    def poisoned(window):
        return bool((window[0] == bad_code).all(dim=1).any())  # a frame of nothing but 4095

    counting = CountingCodec(codec, delay=0.05, fail_if=poisoned)
    worker = Worker(counting, frames_per_decode=1, emit=out.emit, finish=out.finish, batch_windows=True)
    reqs = [request() for _ in range(4)]
    codes = [frames(12, seed=10 + i) for i in range(4)]
    codes[2][8] = bad_code
    try:
        run_interleaved(worker, out, reqs, codes)
    finally:
        worker.close()
    assert max(len(call) for call in counting.calls) > 1  # several requests' windows in one call
    assert out.ended[reqs[2].id] == "error" and "codec blew up" in str(reqs[2].error)
    assert reqs[2].cancelled
    for i in (0, 1, 3):
        assert out.ended[reqs[i].id] == "length"
        np.testing.assert_allclose(out.pcm(reqs[i]), codec.decode(codes[i]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("low_water_s", [0.0, 60.0])
def test_later_windows_wait_for_a_big_window_unless_the_audio_is_about_to_run_out(codec, low_water_s):
    """Ahead of real time and above the low-water mark: windows of ``big_window`` frames (few
    context frames decoded); below it: every frame as soon as it is final."""
    out = Collector()
    counting = CountingCodec(codec)
    worker = Worker(
        counting, frames_per_decode=1, emit=out.emit, finish=out.finish, big_window=6, low_water_s=low_water_s
    )
    req = request()
    codes = frames(22, seed=4)
    try:
        spf = codec.samples_per_frame
        for i, f in enumerate(codes):  # faster than real time: the audio runs ahead of the wall clock
            worker.frame(req, tuple(int(c) for c in f))
            time.sleep(0.02)
            if low_water_s > 0 and i >= 3:  # eager: each final frame is out before the next comes
                deadline = time.monotonic() + 10  # (a bound for a loaded machine, not a figure)
                while sum(p.size for p in out.audio.get(req.id, [])) < (i - 2) * spf:
                    assert time.monotonic() < deadline, "frame not decoded while below low water"
                    time.sleep(0.002)
        worker.end(req, "length")
        assert out.done.wait(10)
    finally:
        worker.close()
    np.testing.assert_allclose(out.pcm(req), codec.decode(codes), atol=1e-4, rtol=0)
    kept = [p.size // codec.samples_per_frame for p in out.audio[req.id]]
    assert kept[0] == 1  # the first audio never waits
    if low_water_s == 0.0:
        assert all(k >= 6 for k in kept[1:-1]), kept  # big windows (the last one is the flush)
    else:
        assert kept[1:-1] == [1] * (len(kept) - 2) and len(kept) > 12, kept  # eager: one frame a window


def test_an_incremental_decode_failure_fails_only_its_request(codec, monkeypatch):
    from pipecat_localtts.codecs.snac_incremental import IncrementalSNACStream

    out = Collector()
    real = IncrementalSNACStream.decode_pending
    poisoned: set[int] = set()

    def decode_pending(self):
        if id(self) in poisoned:
            raise RuntimeError("codec blew up")
        return real(self)

    monkeypatch.setattr(IncrementalSNACStream, "decode_pending", decode_pending)
    real_new = codec.incremental_stream
    made = []

    def new_stream():
        stream = real_new()
        made.append(stream)
        if len(made) == 2:
            poisoned.add(id(stream))
        return stream

    monkeypatch.setattr(codec, "incremental_stream", new_stream)
    worker = Worker(codec, frames_per_decode=1, emit=out.emit, finish=out.finish, incremental=True)
    reqs = [request() for _ in range(3)]
    codes = [frames(9, seed=20 + i) for i in range(3)]
    try:
        run_interleaved(worker, out, reqs, codes)
    finally:
        worker.close()
    assert out.ended[reqs[1].id] == "error" and "codec blew up" in str(reqs[1].error) and reqs[1].cancelled
    for i in (0, 2):
        assert out.ended[reqs[i].id] == "length"
        np.testing.assert_allclose(out.pcm(reqs[i]), codec.decode(codes[i]), atol=1e-4, rtol=0)
