"""What the engine needs from a codec: the ``StreamingCodec`` and ``CodecStream`` protocols.

A codec turns frames of discrete codes (one frame = ``codes_per_frame`` integers, decoding
to ``samples_per_frame`` samples) into PCM, offline and streaming. Streaming happens in
*windows*: a stream buffers the frames of one utterance and, once enough have arrived, asks
for one window of frames to be decoded. How big a window is, how much context it carries
and how its audio is joined to the previous window's (trimmed, overlap-added, ...) is the
codec family's business; the engine only sees these protocols.

A stream works in two phases so that one worker can decode the windows of many streams
in one batched call::

    due = [(s, w) for s in streams if (w := s.pending_window()) is not None]
    audios = codec.decode_windows([w for _, w in due])      # one forward pass
    for (s, _), audio in zip(due, audios):
        emit(s, s.accept(audio))                             # PCM to play

``push``/``flush`` do the same for one stream on its own (decode, then accept).

This module knows nothing about any particular codec and imports no model code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

__all__ = ["CodecStream", "CodecWindow", "StreamingCodec"]


class CodecWindow(NamedTuple):
    """One window of frames to decode.

    Attributes:
        codes: Validated codes ``[n, codes_per_frame]`` (``torch.long``, on the codec's
            device), ``n >= 1``.
        start_frame: Absolute index of ``codes[0]`` in its utterance.
    """

    codes: torch.Tensor
    start_frame: int


@runtime_checkable
class CodecStream(Protocol):
    """Streaming decode state of one utterance (see the module docstring)."""

    frames_pushed: int  #: Frames received since the last reset.
    samples_emitted: int  #: Samples returned since the last reset.

    @property
    def frames_due(self) -> int:
        """Frames whose audio could be emitted now (what the next window would keep)."""
        ...

    @property
    def finished(self) -> bool:
        """The utterance was ended and every sample has been returned."""
        ...

    def feed(self, frames: Any) -> int:
        """Buffers ``[k, codes_per_frame]`` frames without decoding; returns ``k``.

        Raises:
            ValueError: Invalid frames (nothing is buffered then).
            RuntimeError: The utterance was ended and the stream not reset.
        """
        ...

    def end(self) -> None:
        """No more frames: from now on the remaining frames become due (the last windows)."""
        ...

    def pending_window(self) -> CodecWindow | None:
        """The window this stream would decode next, or ``None`` if none is due yet.

        Does not change the stream; calling it again before :meth:`accept` may return a
        larger window (if frames were fed in between) and supersedes the earlier one.
        """
        ...

    def accept(self, audio: torch.Tensor) -> np.ndarray:
        """Takes the decoded audio of the last :meth:`pending_window` and returns the float32
        PCM to emit (possibly empty), continuing the previously returned samples."""
        ...

    def push(self, frames: Any) -> np.ndarray:
        """``feed`` then decode every due window on its own; returns the PCM to emit."""
        ...

    def flush(self) -> np.ndarray:
        """``end`` then decode the remaining windows; returns the last PCM of the utterance."""
        ...

    def reset(self) -> None:
        """Forgets the current utterance; the stream is ready for a new one."""
        ...


@runtime_checkable
class StreamingCodec(Protocol):
    """A codec family's decoder, as the engine uses it.

    Attributes:
        sample_rate: Output sample rate in Hz.
        samples_per_frame: Samples decoded from one frame.
        codes_per_frame: Integer codes in one frame.
        lookahead_frames: Frames that must follow a frame before its audio can be emitted
            (right context of the decoder), i.e. the latency of the first audio in frames.
        device: Device the decoder runs on (windows' codes live there).
    """

    sample_rate: int
    samples_per_frame: int
    codes_per_frame: int
    device: torch.device

    @property
    def lookahead_frames(self) -> int: ...

    def validate_frames(self, frames: Any) -> torch.Tensor:
        """Checks frames and returns them as ``[n, codes_per_frame]`` long codes on :attr:`device`.

        Raises:
            ValueError: On a wrong shape, dtype or code value.
        """
        ...

    def stream(self, *, frames_per_decode: int = 1) -> CodecStream:
        """A new stream for one utterance; ``frames_per_decode`` frames per window once
        audio flows (more when more are waiting)."""
        ...

    def decode_windows(self, windows: Sequence[CodecWindow | tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
        """Decodes several windows (of any streams) together; one audio tensor
        ``[n_i * samples_per_frame]`` per window, in order, each as the window would decode
        on its own."""
        ...

    def decode(self, frames: Any) -> np.ndarray:
        """Offline decode of a whole utterance: float32 ``[n * samples_per_frame]``."""
        ...
