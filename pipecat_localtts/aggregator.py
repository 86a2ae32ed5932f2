"""The Pipecat face of the chunker: :class:`AdaptiveTextAggregator`.

``TTSService`` cuts LLM text with a text aggregator; this one is backed by
:class:`~pipecat_localtts.chunking.AdaptiveChunker`, so the first clause of a reply is spoken
at once and later chunks are whole sentences. The chunker itself knows nothing of Pipecat.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pipecat.utils.text.base_text_aggregator import (
    Aggregation,
    BaseTextAggregator,
    TextType,
)

from pipecat_localtts.chunking import AdaptiveChunker, ChunkerConfig

__all__ = ["AdaptiveTextAggregator"]


class AdaptiveTextAggregator(BaseTextAggregator):
    """Pipecat text aggregator backed by an :class:`AdaptiveChunker`.

    Install it in a ``TTSService`` after ``super().__init__()``::

        self._text_aggregator = AdaptiveTextAggregator(config)

    The service calls :meth:`aggregate` for each text frame and speaks each
    aggregation yielded, and calls :meth:`flush` once at the end of the LLM
    response (or on ``EndFrame``). Since the interface allows a single
    aggregation at flush, the rest of the turn comes back as one aggregation,
    which in rare cases (an over-long word or tag at the end) may exceed
    ``max_chunk_chars``; the service should pass text longer than that limit
    through :func:`split_text`, as it must anyway for ``TTSSpeakFrame`` text,
    which Pipecat hands to ``run_tts`` without aggregating it.
    """

    def __init__(self, config: ChunkerConfig | None = None) -> None:
        """Create the aggregator.

        Args:
            config: The chunker knobs; the defaults of :class:`ChunkerConfig`
                if None.
        """
        super().__init__(aggregation_type=TextType.SENTENCE)
        self._chunker = AdaptiveChunker(config)

    @property
    def chunker(self) -> AdaptiveChunker:
        """The chunker doing the work."""
        return self._chunker

    @property
    def text(self) -> Aggregation:
        """The text buffered and not yet emitted."""
        return Aggregation(text=self._chunker.pending, type=TextType.SENTENCE)

    async def aggregate(self, text: str) -> AsyncIterator[Aggregation]:
        """Feed text and yield each chunk that became ready.

        Args:
            text: The next piece of LLM text.

        Yields:
            One sentence-type :class:`Aggregation` per ready chunk.
        """
        for chunk in self._chunker.push(text):
            yield Aggregation(text=chunk, type=TextType.SENTENCE)

    async def flush(self) -> Aggregation | None:
        """End the turn and return the rest of its text.

        Returns:
            The remaining chunks joined by a space as one sentence-type
            :class:`Aggregation`, or None if nothing was pending.
        """
        chunks = self._chunker.flush()
        if not chunks:
            return None
        return Aggregation(text=" ".join(chunks), type=TextType.SENTENCE)

    async def handle_interruption(self) -> None:
        """Drop the buffered text; the next turn starts with a fast chunk."""
        self._chunker.reset()

    async def reset(self) -> None:
        """Drop the buffered text; the next turn starts with a fast chunk."""
        self._chunker.reset()
