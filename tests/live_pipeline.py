"""A real Pipecat pipeline around one service, driven live from a test.

``run_test`` sends a fixed list of frames, spaced by sleeps; the reliability tests need to
act on what came out (barge in once the first audio has arrived, speak again once a turn has
ended), so they drive the pipeline themselves: ``send`` a frame, wait ``until`` a condition
on the frames seen so far. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, Self

from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner


def streamed_turn(text: str, rng: random.Random, max_piece: int) -> list[Frame]:
    """``text`` as an LLM turn: start, text frames of 1..``max_piece`` characters, end."""
    frames: list[Frame] = [LLMFullResponseStartFrame()]
    i = 0
    while i < len(text):
        n = rng.randint(1, max_piece)
        frames.append(LLMTextFrame(text[i : i + n]))
        i += n
    return [*frames, LLMFullResponseEndFrame()]


class _Tap(FrameProcessor):
    """Records the frames going one way past it, as ``(time, frame)``."""

    def __init__(self, direction: FrameDirection) -> None:
        super().__init__()
        self._direction = direction
        self.frames: list[tuple[float, Frame]] = []
        self.errors: list[ErrorFrame] = []  # kept when ``frames`` is drained

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self._direction:
            self.frames.append((time.monotonic(), frame))
            if isinstance(frame, ErrorFrame):
                self.errors.append(frame)
        await self.push_frame(frame, direction)


class LivePipeline:
    """``[up tap, service, down tap]`` in a running ``PipelineWorker``.

    Use as ``async with LivePipeline(service) as p:``; leaving the block sends an
    ``EndFrame`` and waits (bounded) for the pipeline to finish.
    """

    def __init__(self, service: FrameProcessor, *, start_timeout: float = 30.0, **worker_kwargs: Any) -> None:
        self.service = service
        self._up = _Tap(FrameDirection.UPSTREAM)
        self._down = _Tap(FrameDirection.DOWNSTREAM)
        worker_kwargs.setdefault("params", PipelineParams())
        self.worker = PipelineWorker(
            Pipeline([self._up, service, self._down]),
            cancel_on_idle_timeout=False,
            **worker_kwargs,
        )
        self._start_timeout = start_timeout
        self._started = asyncio.Event()
        self._task: asyncio.Task | None = None

        @self.worker.event_handler("on_pipeline_started")
        async def _on_started(worker, frame):
            self._started.set()

    async def __aenter__(self) -> Self:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        self._task = asyncio.create_task(runner.run())
        started = asyncio.create_task(self._started.wait())
        await asyncio.wait({started, self._task}, timeout=self._start_timeout, return_when=asyncio.FIRST_COMPLETED)
        if not self._started.is_set():
            started.cancel()
            await self.worker.cancel()
            raise TimeoutError("the pipeline did not start")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None
        if exc[0] is None:
            await self.worker.queue_frame(EndFrame())
        else:
            await self.worker.cancel()
        try:
            await asyncio.wait_for(self._task, 60)
        except TimeoutError:
            await self.worker.cancel()
            raise

    # ------------------------------------------------------------------ driving

    async def send(self, frame: Frame) -> None:
        """Queue a frame at the start of the pipeline (downstream)."""
        await self.worker.queue_frame(frame)

    async def interrupt(self) -> float:
        """Barge in (as a user would); returns the moment the interruption was sent."""
        at = time.monotonic()
        await self.send(InterruptionFrame())
        return at

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``predicate()`` holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.01)

    async def speak(self, text: str, timeout: float = 60.0) -> str:
        """Send ``TTSSpeakFrame(text)`` as the next turn and wait until its context has been
        spoken (started within 30 s, stopped within ``timeout``); returns the context id."""
        count = len(self.started_contexts())
        await self.send(TTSSpeakFrame(text))
        await self.until(lambda: len(self.started_contexts()) > count, 30, "the next turn's context")
        context = self.started_contexts()[count]
        await self.until(lambda: self.stopped(context), timeout, "the next turn")
        return context

    async def until_stalled(self, predicate: Callable[[], bool], stall: float, what: str) -> None:
        """Wait until ``predicate()`` holds; fail once no frame has come out for ``stall``
        seconds (a hang), however long the whole wait (a loaded machine is slow, not hung)."""
        seen, since = -1, time.monotonic()
        while not predicate():
            if len(self._down.frames) != seen:
                seen, since = len(self._down.frames), time.monotonic()
            elif time.monotonic() - since > stall:
                raise AssertionError(f"nothing came out for {stall} s waiting for {what}")
            await asyncio.sleep(0.05)

    def drain(self) -> list[tuple[float, Frame]]:
        """The downstream frames recorded so far, as ``down_timed``, forgetting them (a long
        run keeps memory flat); errors are kept."""
        frames, self._down.frames = self._down.frames, []
        self._up.frames = []
        return frames

    # ------------------------------------------------------------------ what came out

    @property
    def down(self) -> list[Frame]:
        """Frames that reached the end of the pipeline."""
        return [f for _, f in self._down.frames]

    @property
    def down_timed(self) -> list[tuple[float, Frame]]:
        """``(arrival time, frame)`` of the frames that reached the end of the pipeline."""
        return list(self._down.frames)

    @property
    def errors(self) -> list[ErrorFrame]:
        """Every ``ErrorFrame``, either way, drained or not."""
        return self._up.errors + self._down.errors

    def audio(self, context_id: str | None = None) -> list[TTSAudioRawFrame]:
        """Audio frames that came out (of one context, if given)."""
        return [
            f
            for f in self.down
            if isinstance(f, TTSAudioRawFrame) and (context_id is None or f.context_id == context_id)
        ]

    def stopped(self, context_id: str) -> bool:
        """Whether the context's ``TTSStoppedFrame`` came out."""
        return any(isinstance(f, TTSStoppedFrame) and f.context_id == context_id for f in self.down)

    def started_contexts(self) -> list[str]:
        """Context ids of the ``TTSStartedFrame``s that came out, in order."""
        return [f.context_id for f in self.down if isinstance(f, TTSStartedFrame)]


class InterruptionAudit:
    """Watches a service for frames of an interrupted turn that leave it after the interruption.

    It watches the service itself, not what reaches the end of the pipeline: Pipecat's input
    queues let a system frame overtake frames queued before it, so a frame pushed before an
    interruption can arrive after it, and a frame sent before a barge-in can reach the
    service after it (a new turn, then). A context is of an interrupted turn if the service
    opened it before it began handling an interruption; none of its frames may leave the
    service once it has handled that interruption (pushed the ``InterruptionFrame`` on).
    Create it before the pipeline runs.
    """

    def __init__(self, service: FrameProcessor) -> None:
        self.begun = 0  # interruptions the service began handling
        self.handled = 0  # ... and finished handling
        self.opened: dict[str, int] = {}  # context id -> interruptions begun before it opened
        self.stray: list[tuple[str, str]] = []  # (frame type, context id) out too late
        service.add_event_handler("on_before_process_frame", self._on_process)
        service.add_event_handler("on_before_push_frame", self._on_push)
        create_audio_context = service.create_audio_context

        async def open_and_record(context_id: str) -> None:
            self.opened[context_id] = self.begun
            await create_audio_context(context_id)

        service.create_audio_context = open_and_record

    def _on_process(self, service: FrameProcessor, frame: Frame) -> None:
        self.begun += isinstance(frame, InterruptionFrame)

    def _on_push(self, service: FrameProcessor, frame: Frame) -> None:
        self.handled += isinstance(frame, InterruptionFrame)
        context_id = getattr(frame, "context_id", None)
        if context_id in self.opened and self.opened[context_id] < self.handled:
            self.stray.append((type(frame).__name__, context_id))

