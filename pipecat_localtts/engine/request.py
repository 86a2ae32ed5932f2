"""A request to an engine and where its audio goes.

:class:`Request` is one utterance's handle and state: created by an engine's ``submit()``,
filled in by the engine's threads, cancellable from any thread. :class:`AudioSink` is what an
engine calls with the audio; :class:`BlockingSink` serves synchronous callers. Neither the
engine nor the codec worker is imported here, so both can import this module.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pipecat_localtts.engine.sampling import GenerationParams

__all__ = ["AudioSink", "BlockingSink", "NullSink", "Request"]


class AudioSink(Protocol):
    """Where a request's output goes. Called on the engine's codec thread; must not block."""

    def on_audio(self, pcm: np.ndarray) -> None:
        """A piece of float32 mono audio at the codec's sample rate."""

    def on_done(self, request: Request) -> None:
        """The request ended (see ``request.finish_reason`` and ``request.error``)."""


@dataclass(eq=False)
class Request:
    """One utterance to generate. Created by :meth:`~pipecat_localtts.engine.batched.BatchedEngine.submit`."""

    text: str
    prompt_ids: list[int]
    max_new_tokens: int
    params: GenerationParams
    sink: AudioSink
    id: int = field(default_factory=itertools.count().__next__)
    # Filled in by the engine thread:
    tokens: list[int] = field(default_factory=list)  # generated token ids
    steps: int = 0  # model forward passes run (prefill included)
    audio_samples: int = 0
    dropped_frames: int = 0
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: BaseException | None = None
    steps_at_cancel: int | None = None
    t_submit: float = field(default_factory=time.perf_counter)
    t_start: float | None = None
    t_prefilled: float | None = None
    t_first_window: float | None = None  # the codec decode that gave the first audio began
    t_first_audio: float | None = None
    t_lm_done: float | None = None  # the LM thread was free again
    t_done: float | None = None
    lm_seconds: float = 0.0  # time in model steps and sampling (prefill excluded)
    codec_seconds: float = 0.0  # time in codec decodes
    record: bool = True  # False for warm-up requests: kept out of the history
    voice: str = ""
    sample_seed: int = 0  # the sampler's seed: params.seed, or drawn once at submit
    t_admitted: float | None = None  # a batched engine gave it a slot (the wait ends)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Ask the engine to stop this request; safe from any thread, idempotent."""
        if not self._cancel.is_set():
            self.steps_at_cancel = self.steps
            self._cancel.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        """Whether the engine has finished with this request."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the engine has finished with the request."""
        return self._done.wait(timeout)


class BlockingSink:
    """A sink for synchronous callers: iterate it to get audio pieces as they come."""

    _END = object()

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()

    def on_audio(self, pcm: np.ndarray) -> None:
        self._queue.put(pcm)

    def on_done(self, request: Request) -> None:
        self._queue.put((self._END, request))

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            item = self._queue.get()
            if isinstance(item, tuple) and item[0] is self._END:
                if item[1].error is not None:
                    raise item[1].error
                return
            yield item


class NullSink:
    """Discards audio (warm-up)."""

    def on_audio(self, pcm: np.ndarray) -> None:
        pass

    def on_done(self, request: Request) -> None:
        pass
