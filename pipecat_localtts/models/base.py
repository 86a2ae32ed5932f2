"""What the engine needs from a speech model: the ``SpeechModel`` protocol and ``TokenLayout``.

A speech-token model family (Orpheus on SNAC, NeuTTS on NeuCodec, ...) is a causal LM whose
generated tokens, after a prompt, are codec codes. The engine drives any family through
this interface and imports no family module:

* the prompt (:meth:`SpeechModel.build_prompt`) and the length guard
  (:meth:`SpeechModel.token_budget`);
* the tokens valid at each position (:class:`TokenLayout`: a frame is ``tokens_per_frame``
  consecutive tokens, position ``p`` of the generation is frame slot ``p % tokens_per_frame``,
  and each slot has one range of valid ids, all of the same width) and the stop tokens,
  allowed at a frame boundary only;
* a token -> frame parser per utterance (:class:`FrameParser`);
* the codec (:class:`~pipecat_localtts.codecs.base.StreamingCodec`) and the voices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from pipecat_localtts.codecs.base import StreamingCodec
    from pipecat_localtts.engine.sampling import GenerationParams

__all__ = ["CodecDevice", "FrameParser", "SpeechModel", "TokenLayout"]


class CodecDevice:
    """The device and audio properties every family derives the same way from ``lm`` and
    ``codec`` (a mixin of the model dataclasses)."""

    lm: Any
    codec: Any

    @property
    def device(self) -> torch.device:
        """The device the language model lives on (the codec's when the LM runs on a server)."""
        if self.lm is None:
            return self.codec.device
        return next(self.lm.parameters()).device

    @property
    def sample_rate(self) -> int:
        """Sample rate of the audio the codec produces."""
        return self.codec.sample_rate

    @property
    def frame_seconds(self) -> float:
        """Audio seconds per codec frame."""
        return self.codec.samples_per_frame / self.codec.sample_rate


@dataclass(frozen=True)
class TokenLayout:
    """The tokens a speech model may generate, per position of a frame.

    Attributes:
        slot_starts: First valid token id of each frame slot (one per token of a frame).
        width: Valid ids per slot: slot ``s`` allows ``[slot_starts[s], slot_starts[s] + width)``.
        stop_tokens: Ids that end the utterance; valid at slot 0 only (a frame boundary).
        min_tokens: Generated tokens before a stop token may be sampled (NeuTTS: 50, one
            second, as its reference; without it short texts tend to stop at once).
    """

    slot_starts: tuple[int, ...]
    width: int
    stop_tokens: tuple[int, ...]
    min_tokens: int = 0

    def __post_init__(self) -> None:
        if not self.slot_starts or self.width < 1 or not self.stop_tokens:
            raise ValueError("a token layout needs at least one slot, a width >= 1 and a stop token")
        if any(s < 0 for s in self.slot_starts) or any(t < 0 for t in self.stop_tokens):
            raise ValueError("token ids must be >= 0")
        if self.min_tokens < 0:
            raise ValueError("min_tokens must be >= 0")

    @classmethod
    def contiguous(cls, first: int, width: int, tokens_per_frame: int, stop_tokens: Sequence[int]) -> TokenLayout:
        """Slots laid end to end from ``first`` (Orpheus: ``first + width * slot``)."""
        return cls(tuple(first + width * s for s in range(tokens_per_frame)), width, tuple(stop_tokens))

    @property
    def tokens_per_frame(self) -> int:
        """Tokens (positions) per codec frame."""
        return len(self.slot_starts)

    @property
    def union_lo(self) -> int:
        """First id of the smallest id range holding every valid token and every stop token."""
        return min(min(self.slot_starts), min(self.stop_tokens))

    @property
    def union_hi(self) -> int:
        """End (exclusive) of that range."""
        return max(max(self.slot_starts) + self.width, max(self.stop_tokens) + 1)

    def slot(self, position: int) -> int:
        """Frame slot of generation position ``position``."""
        return position % self.tokens_per_frame

    def slot_range(self, slot: int) -> tuple[int, int]:
        """Half-open id range of the tokens valid at ``slot`` (stop tokens aside)."""
        lo = self.slot_starts[slot]
        return lo, lo + self.width


@runtime_checkable
class FrameParser(Protocol):
    """Turns one utterance's generated tokens into codec frames."""

    position: int  #: Tokens consumed.
    dropped_frames: int  #: Frames dropped because a token was outside its slot's range.

    def push(self, token: int) -> tuple[int, ...] | None:
        """Consume one generated (non-stop) token; return a complete frame (the codec's
        canonical code order) or ``None``."""
        ...


@runtime_checkable
class SpeechModel(Protocol):
    """A loaded speech-token model: LM, tokenizer, codec and voices on one device.

    Attributes:
        lm: The causal language model (transformers module), run by the engine's LM runner.
        codec: Its streaming codec.
        name: Hub id or directory it came from, for logs.
        voices: Voice names :meth:`build_prompt` accepts.
        synthetic: True for random weights (noise; for plumbing only).
        stop_tokens: Token ids that end an utterance.
        token_layout: The tokens valid at each position (:class:`TokenLayout`).
        prompt_budget: Cache positions reserved for a prompt; a longer one is refused (the
            service splits the text until every prompt fits).
        max_context: Positions (prompt + generated) the model was trained for, or ``None``:
            the engine stops an utterance there.
        default_params: The family's sampling defaults, used when a caller gives none.
    """

    lm: Any
    codec: StreamingCodec
    name: str
    voices: tuple[str, ...]
    synthetic: bool
    stop_tokens: frozenset[int]
    prompt_budget: int
    max_context: int | None
    default_params: GenerationParams

    @property
    def token_layout(self) -> TokenLayout: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def sample_rate(self) -> int: ...

    def check_voice(self, voice: str) -> str:
        """``voice`` if the model knows it; else raise ``UnknownVoiceError``."""
        ...

    def build_prompt(self, text: str, voice: str) -> list[int]:
        """The prompt token ids for ``text`` in ``voice`` (the text is never read as control tokens)."""
        ...

    def new_parser(self) -> FrameParser:
        """A fresh token -> frame parser for one utterance."""
        ...

    def token_budget(self, text: str, *, seconds_per_char: float, min_seconds: float, max_tokens: int) -> int:
        """The max-token guard for ``text``: whole frames, at most ``max_tokens``."""
        ...
