"""Where an engine's tokens come from: the ``TokenSource`` seam and the job it is given.

The engine front (:class:`~pipecat_localtts.engine.batched.BatchedEngine`) turns text into a
:class:`Job` (prompt ids, token budget, a fresh frame parser) and hands it to a token source;
the source generates the job's tokens and hands each to the engine's :class:`TokenSink`,
which parses it into codec frames and says whether the job goes on. The local batched LM
(:class:`~pipecat_localtts.engine.local_lm.LocalBatchedLM`) is one source; a remote serving
engine is another: the parser, the codec, the sinks and the Pipecat face stay the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pipecat_localtts.engine.request import Request
from pipecat_localtts.models.base import FrameParser

__all__ = ["Job", "TokenSink", "TokenSource"]


@dataclass(eq=False)
class Job:
    """One request as a token source sees it."""

    req: Request
    parser: FrameParser  # its position is the generation position (the frame slot's source)
    max_new: int  # tokens it may generate


class TokenSink(Protocol):
    """What a token source calls; implemented by the engine front. Called on the source's thread."""

    def on_token(self, job: Job, token: int) -> bool:
        """One generated token of ``job``; ``False``: the job is over (the sink has ended it),
        generate nothing more for it."""
        ...

    def on_end(self, job: Job, reason: str, error: BaseException | None = None) -> None:
        """The source ends ``job`` itself: ``"cancelled"`` (before or while generating),
        ``"length"`` (no room left) or ``"error"`` (with ``error``)."""
        ...


class TokenSource(Protocol):
    """Generates tokens for jobs, many at once."""

    def start(self, sink: TokenSink) -> None:
        """Start generating (blocking: call it off the event loop); idempotent."""
        ...

    def submit(self, job: Job) -> None:
        """Queue ``job``; its tokens go to the sink. Raises ``EngineClosedError`` when closed."""
        ...

    def close(self, timeout: float = 10.0) -> list[Job]:
        """Cancel everything and stop; returns the jobs it could not end itself."""
        ...

    @property
    def running(self) -> bool: ...

    @property
    def busy(self) -> bool:
        """Jobs waiting or generating."""
        ...

    @property
    def active(self) -> int:
        """Jobs generating."""
        ...

    @property
    def waiting(self) -> int:
        """Jobs waiting for capacity."""
        ...
