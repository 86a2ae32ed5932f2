"""The codec thread: adaptive windows, exact audio, cancellation, failures."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipecat_localtts.codecs.snac import TINY_SNAC_CONFIG, SNACCodec, build_random_snac
from pipecat_localtts.engine.codec_worker import CodecWorker
from pipecat_localtts.engine.engine import Request
from pipecat_localtts.engine.sampling import GenerationParams


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
    worker = CodecWorker(codec, frames_per_decode=1, emit=out.emit, finish=out.finish)
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
    worker = CodecWorker(codec, frames_per_decode=1, emit=out.emit, finish=out.finish)
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
    worker = CodecWorker(codec, frames_per_decode=1, emit=out.emit, finish=out.finish)
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
