"""The TTS server run by the tests: a real uvicorn on 127.0.0.1, in a thread of the test process.

In-process so a test can look at the server's engine (which requests were cancelled, after
how many steps); ``test_cli_serve`` runs ``pipecat-localtts serve`` as its own process too.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import uvicorn

from pipecat_localtts.audio import EdgeFade
from pipecat_localtts.engine.batched import BatchedEngine
from pipecat_localtts.engine.request import BlockingSink
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.server.app import ServerConfig, TTSServer, create_app
from pipecat_localtts.server.streams import to_pcm16
from pipecat_localtts.testing import tiny_orpheus

# Short utterances keep the tests fast: random weights always run to the guard.
QUICK = GenerationParams(guard_seconds_per_char=0.004, guard_min_seconds=0.3)


def tiny_engine(max_batch: int = 8) -> BatchedEngine:
    engine = BatchedEngine(tiny_orpheus(), max_batch=max_batch, max_tokens=QUICK.max_tokens)
    engine.start()
    return engine


class RunningServer:
    """``create_app`` under uvicorn on a free loopback port; ``with`` it to run it."""

    def __init__(
        self,
        load: Callable[[], BatchedEngine] | None = None,
        *,
        sndbuf: int | None = None,
        port: int = 0,
        wait_ready: bool = True,
        **config: Any,
    ) -> None:
        config.setdefault("model_name", "tiny")
        config.setdefault("params", QUICK)
        self.config = ServerConfig(**config)
        self.app = create_app(load or tiny_engine, self.config)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sndbuf is not None:  # accepted sockets inherit it (Linux)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                log_level="warning",
                ws_max_size=self.config.max_body_bytes,
                timeout_graceful_shutdown=3,
            )
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._wait_ready = wait_ready

    @property
    def tts(self) -> TTSServer:
        return self.app.state.tts

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/audio/stream"

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def __enter__(self) -> RunningServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            assert self._thread.is_alive(), "server thread died"
            time.sleep(0.02)
        if self._wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.tts.ready:
            assert time.monotonic() < deadline, "server did not get ready"
            assert self.tts.load_error is None, f"load failed: {self.tts.load_error}"
            time.sleep(0.02)

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self.sock.close()

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the server's Prometheus registry (0 if absent)."""
        value = self.tts.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    def wait_idle(self, timeout: float = 30) -> None:
        """Every engine request of the server done, no stream open."""
        deadline = time.monotonic() + timeout
        while self.tts.streams or not all(r.done for r in list(self.tts.recent)):
            assert time.monotonic() < deadline, "server did not go idle"
            time.sleep(0.02)


def speech(server: RunningServer, text: str, **fields: Any) -> httpx.Response:
    """One ``/v1/audio/speech`` request, read whole (httpx, no SDK)."""
    headers = fields.pop("headers", None) or {}
    body = {"model": "tiny", "input": text, "voice": "tara", "response_format": "pcm", **fields}
    return httpx.post(f"{server.url}/v1/audio/speech", json=body, headers=headers, timeout=60)


def solo_pcm(engine: BatchedEngine, texts: list[str], voice: str, params: GenerationParams, fade: int) -> bytes:
    """What the server streams for ``texts``, computed on the engine directly, one request at a time."""
    out = []
    for text in texts:
        sink = BlockingSink()
        engine.submit(text, voice, params, sink)
        edges = EdgeFade(fade)
        pieces = [edges.push(p) for p in sink] + [edges.finish()]
        out.append(to_pcm16(np.concatenate(pieces)))
    return b"".join(out)


def pcm_diff(a: bytes, b: bytes) -> int:
    """Largest sample difference of two int16 PCM byte strings of the same length."""
    assert len(a) == len(b), f"lengths differ: {len(a)} vs {len(b)} bytes"
    if not a:
        return 0
    x = np.frombuffer(a, "<i2").astype(np.int32)
    y = np.frombuffer(b, "<i2").astype(np.int32)
    return int(np.abs(x - y).max())
