"""Adaptive text chunking for streaming speech synthesis.

An LLM streams its reply in small pieces ("Hel", "lo", " there", ","). A
speech model wants whole phrases: too little text sounds choppy, too much
delays the first audio. :class:`AdaptiveChunker` cuts the stream in two
regimes:

* The **first chunk of a turn** goes out as soon as a speakable clause is
  there: at the first clause boundary (``,`` ``;`` ``:`` ``—`` ``–`` `` - ``,
  an ellipsis or a sentence end) once it holds at least
  ``first_chunk_min_words`` words, or at a word boundary once
  ``first_chunk_max_words`` complete words have arrived without one. This
  keeps time-to-first-audio low.
* **Later chunks** are whole sentences, which gives the model enough context
  for natural prosody. A sentence shorter than ``min_chunk_chars`` is held and
  merged with the sentences after it; a chunk is never longer than
  ``max_chunk_chars`` - a longer one is split at the last clause boundary
  before the limit, else at the last word boundary (never inside a word).

Text arrives in pieces, so a boundary is only decided once the character
after it has been seen ("3." may continue as "3.14", "1," as "1,000").
Because every decision depends only
on text already seen and never on how it was split into pieces, feeding the
same text char by char, token by token or all at once gives the same chunks.

Boundaries never fall inside a word, a number (``3.14``, ``1,000``,
``$2.50``, ``10:30``), a known abbreviation (see :data:`ABBREVIATIONS`), a
single capital initial (``J. R. R. Tolkien``) or an emotive tag such as
``<laugh>`` (anything of the form ``<...>``, up to :data:`MAX_TAG_CHARS`
characters, on one line, not starting with whitespace).

What this module does not know:

* It is rule-based and written for space-separated scripts (English first).
  Text without spaces between sentences (Chinese, Japanese, Thai) is only cut
  at newlines, at ``max_chunk_chars`` or at flush.
* It has no language model of sentence structure: an abbreviation at the very
  end of a sentence ("... and so on, etc. Then") is not taken as a sentence
  end, and a capital letter followed by a period ("Plan B. Then") is taken for
  an initial. Such text is merged into the next sentence, which is harmless
  for speech.
* It does not normalise text for speech (numbers, symbols, markdown) and does
  not drop unspeakable chunks; use :func:`is_speakable` for that.
* It knows nothing of audio, timing or asyncio. The one Pipecat-specific part
  is :class:`AdaptiveTextAggregator` at the bottom, a thin adapter that plugs
  the chunker into ``pipecat.services.tts_service.TTSService``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from pipecat.utils.text.base_text_aggregator import (
    Aggregation,
    BaseTextAggregator,
    TextType,
)

__all__ = [
    "ABBREVIATIONS",
    "BINDING_ABBREVIATIONS",
    "MAX_TAG_CHARS",
    "AdaptiveChunker",
    "AdaptiveTextAggregator",
    "ChunkerConfig",
    "is_speakable",
    "split_text",
]

#: Abbreviations that belong to the word after them ("Dr. Smith"): no cut of
#: any kind is made between them and the next word. Single capital initials
#: ("J.") bind the same way.
BINDING_ABBREVIATIONS: Final[frozenset[str]] = frozenset(
    "mr. mrs. ms. dr. prof. st. mt. rev. hon. gen. col. capt. lt. sgt.".split()
)

#: Abbreviations (lower case, with their final period) whose period never ends
#: a sentence: the titles above, name suffixes, Latin and common short forms,
#: places and times. Dotted letter sequences such as "U.S.A." or "e.g." and
#: single capital initials ("J.") are recognised by pattern in addition to this set.
ABBREVIATIONS: Final[frozenset[str]] = BINDING_ABBREVIATIONS | frozenset(
    "jr. sr. vs. etc. e.g. i.e. cf. approx. dept. inc. ltd. corp. u.s. u.k. a.m. p.m.".split()
)

#: The longest ``<...>`` span, brackets included, taken as a tag. Longer spans
#: are ordinary text, so a stray "<" holds back decisions only briefly.
MAX_TAG_CHARS: Final[int] = 40

# A tag: "<", a non-space first character, then anything but brackets and
# line breaks, then ">", MAX_TAG_CHARS characters in all at most.
_TAG_RE: Final = re.compile(r"<[^<>\s][^<>\r\n]{0,%d}>" % (MAX_TAG_CHARS - 3))
# Characters that may close a sentence or clause after its punctuation.
_CLOSERS: Final[str] = "\"'\u201d\u2019)]}\u00bb*"
# Characters that may open a word before it (stripped for abbreviation lookup).
_OPENERS: Final[str] = "\"'\u201c\u2018([{\u00ab*"
_SENTENCE_PUNCT: Final[str] = ".!?\u2026"
_CLAUSE_PUNCT: Final[str] = ",;:"
_EM_DASH: Final[str] = "\u2014"
# Stand-alone tokens that mark a clause break when surrounded by spaces.
_SPACED_DASHES: Final[frozenset[str]] = frozenset({"-", "--", "\u2013", "\u2014"})
_NEWLINES: Final[frozenset[str]] = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
_TRAILING_PUNCT_RE: Final = re.compile(r"[.!?\u2026]+$")
# Two or more single letters each followed by a period: "U.S.", "e.g.", "a.m.".
_DOTTED_LETTERS_RE: Final = re.compile(r"(?:[^\W\d_]\.){2,}")
# A numbered-list marker at the start of a line: "1.", "12.".
_LIST_MARKER_RE: Final = re.compile(r"\d{1,3}\.")
_WORD_SPLIT_RE: Final = re.compile(r"[\s\u2014]+")


@dataclass(frozen=True)
class ChunkerConfig:
    """Knobs of :class:`AdaptiveChunker`.

    Attributes:
        first_chunk_min_words: The first chunk of a turn is cut at the first
            clause boundary or sentence end once it holds at least this many
            words.
        first_chunk_max_words: Without such a boundary, the first chunk is cut
            at a word boundary once this many complete words have arrived (a
            word is complete when whitespace follows it).
        min_chunk_chars: Later chunks: a complete sentence shorter than this is
            held and merged with the following sentence(s) until the merged
            text reaches this length, or the turn is flushed. 0 disables
            merging.
        max_chunk_chars: No chunk is longer than this (unless a single word
            is): longer text is split at the last clause boundary before the
            limit, else at the last word boundary before it.
    """

    first_chunk_min_words: int = 3
    first_chunk_max_words: int = 8
    min_chunk_chars: int = 40
    max_chunk_chars: int = 250

    def __post_init__(self) -> None:
        """Check the knobs.

        Raises:
            ValueError: If a knob is not an int, out of range, or inconsistent
                with another knob.
        """
        for name in (
            "first_chunk_min_words",
            "first_chunk_max_words",
            "min_chunk_chars",
            "max_chunk_chars",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"ChunkerConfig.{name} must be an int, got {value!r}")
        if self.first_chunk_min_words < 1:
            raise ValueError(
                "ChunkerConfig.first_chunk_min_words must be at least 1, "
                f"got {self.first_chunk_min_words}"
            )
        if self.first_chunk_max_words < self.first_chunk_min_words:
            raise ValueError(
                "ChunkerConfig.first_chunk_max_words must be at least "
                f"first_chunk_min_words ({self.first_chunk_min_words}), "
                f"got {self.first_chunk_max_words}"
            )
        if self.max_chunk_chars < 1:
            raise ValueError(
                f"ChunkerConfig.max_chunk_chars must be at least 1, got {self.max_chunk_chars}"
            )
        if not 0 <= self.min_chunk_chars <= self.max_chunk_chars:
            raise ValueError(
                "ChunkerConfig.min_chunk_chars must be between 0 and max_chunk_chars "
                f"({self.max_chunk_chars}), got {self.min_chunk_chars}"
            )


class _Kind(IntEnum):
    """Strength of a boundary; a stronger one may serve where a weaker is asked."""

    WORD = 1
    CLAUSE = 2
    SENTENCE = 3


@dataclass(frozen=True, slots=True)
class _Boundary:
    """A decided place where a chunk may end.

    Attributes:
        cut: Offset in the buffer; the chunk would be ``buffer[:cut]``.
        kind: The strength of the boundary.
    """

    cut: int
    kind: _Kind


def _is_abbreviation(word: str) -> bool:
    """Whether ``word`` (ending with one period) is an abbreviation or initial."""
    lower = word.lower()
    if lower in ABBREVIATIONS or _DOTTED_LETTERS_RE.fullmatch(word):
        return True
    return len(word) == 2 and word[0].isalpha() and word[0].isupper()


def _is_binding(word: str) -> bool:
    """Whether ``word`` belongs to the next word ("Dr." in "Dr. Smith", "J.")."""
    if word.lower() in BINDING_ABBREVIATIONS:
        return True
    return len(word) == 2 and word[0].isalpha() and word[0].isupper()


def _token_kind(token: str, line_start: bool) -> _Kind | None:
    """Classify the boundary after a whitespace-delimited token.

    Args:
        token: The token, without surrounding whitespace.
        line_start: Whether the token starts a line (or the buffer).

    Returns:
        The boundary kind after the token, or None when no cut may follow it
        (a title, an initial or a list marker binds to the next word).
    """
    core = token.rstrip(_CLOSERS)
    if not core:
        return _Kind.WORD
    last = core[-1]
    if last in _SENTENCE_PUNCT:
        match = _TRAILING_PUNCT_RE.search(core)
        run = match.group() if match else last
        if "!" in run or "?" in run:
            return _Kind.SENTENCE
        if run != ".":
            # "..", "..." or "…": a pause inside a sentence more often than an end.
            return _Kind.CLAUSE
        word = core.lstrip(_OPENERS)
        if _is_abbreviation(word):
            return None if _is_binding(word) else _Kind.WORD
        if line_start and _LIST_MARKER_RE.fullmatch(word):
            return None
        return _Kind.SENTENCE
    if last in _CLAUSE_PUNCT or last == _EM_DASH or core in _SPACED_DASHES:
        return _Kind.CLAUSE
    return _Kind.WORD


def _starts_line(buf: str, start: int) -> bool:
    """Whether the token at ``start`` begins the buffer or a line."""
    j = start
    while j > 0 and buf[j - 1].isspace():
        j -= 1
        if buf[j] in _NEWLINES:
            return True
    return j == 0


def _could_become_tag(buf: str, start: int) -> bool:
    """Whether the unmatched "<" at ``start`` may still turn into a tag."""
    rest = buf[start + 1 :]
    if not rest:
        return True
    if rest[0].isspace() or len(rest) > MAX_TAG_CHARS - 2:
        return False
    return not any(c in "<>\r\n" for c in rest)


_UNBOUNDED: Final[int] = 1 << 62


def _scan(buf: str, final: bool) -> Iterator[_Boundary | int]:
    """Find the decided boundaries of ``buf``, in order.

    A boundary is yielded only once it is decided: the character after it has
    been seen (or ``final`` says no more text comes) and no undecided text
    lies before it.

    Args:
        buf: The buffered text, without leading whitespace.
        final: Whether the text is complete (end of turn).

    Yields:
        :class:`_Boundary` objects in increasing ``cut`` order, then one int,
        the horizon: every boundary with a cut below it has been yielded.
    """
    n = len(buf)
    i = 0
    tok_start = -1
    while i < n:
        ch = buf[i]
        if ch.isspace():
            if tok_start >= 0:
                if ch in _NEWLINES:
                    yield _Boundary(i, _Kind.SENTENCE)
                else:
                    kind = _token_kind(buf[tok_start:i], _starts_line(buf, tok_start))
                    if kind is not None:
                        yield _Boundary(i, kind)
                tok_start = -1
            i += 1
            continue
        if tok_start < 0:
            tok_start = i
        if ch == "<":
            tag = _TAG_RE.match(buf, i)
            if tag:
                i = tag.end()
                continue
            if not final and _could_become_tag(buf, i):
                yield i + 1
                return
        elif ch == _EM_DASH and i + 1 < n:
            nxt = buf[i + 1]
            # "word—word" is a clause break; "1990—2000" and "——" are not. A
            # dash followed by whitespace ends its token and is handled there.
            if (
                not nxt.isspace()
                and nxt not in "-\u2013\u2014"
                and not (i > 0 and buf[i - 1].isdigit() and nxt.isdigit())
            ):
                yield _Boundary(i + 1, _Kind.CLAUSE)
        i += 1
    if tok_start < 0:
        yield _UNBOUNDED if final else n + 1
    elif final:
        kind = _token_kind(buf[tok_start:], _starts_line(buf, tok_start))
        yield _Boundary(n, kind or _Kind.WORD)
        yield _UNBOUNDED
    else:
        yield n


def _count_words(text: str) -> int:
    """Count the words in ``text``: runs holding a letter or digit outside tags."""
    plain = _TAG_RE.sub(" ", text)
    return sum(1 for part in _WORD_SPLIT_RE.split(plain) if any(c.isalnum() for c in part))


class AdaptiveChunker:
    """Cut streamed text into speakable chunks; pure and synchronous.

    Feed pieces of a turn with :meth:`push`, which returns the chunks that
    became ready; end the turn with :meth:`flush`, which returns the rest and
    makes the next turn start with a fast first chunk again.

    Example::

        chunker = AdaptiveChunker()
        for piece in ["Sure", ",", " I can", " help", " with", " that", "."]:
            for chunk in chunker.push(piece):
                speak(chunk)
        for chunk in chunker.flush():
            speak(chunk)
    """

    def __init__(self, config: ChunkerConfig | None = None) -> None:
        """Create a chunker.

        Args:
            config: The knobs; the defaults of :class:`ChunkerConfig` if None.
        """
        self._config = config if config is not None else ChunkerConfig()
        self._buf = ""
        self._first = True

    @property
    def config(self) -> ChunkerConfig:
        """The knobs this chunker uses."""
        return self._config

    @property
    def pending(self) -> str:
        """The buffered text not yet emitted (leading whitespace dropped)."""
        return self._buf

    @property
    def awaiting_first_chunk(self) -> bool:
        """Whether the next chunk is the first of the turn (cut early)."""
        return self._first

    def push(self, text: str) -> list[str]:
        """Feed a piece of text.

        Args:
            text: The next piece, of any size (a character, a token, a text).

        Returns:
            The chunks that became ready, in order: stripped and non-empty.
        """
        if not text:
            return []
        self._buf = (self._buf + text).lstrip()
        chunks: list[str] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                return chunks
            self._emit(cut, chunks)

    def flush(self) -> list[str]:
        """End the turn: return the rest as chunks and reset.

        Held sentences and undecided text are emitted; text longer than
        ``max_chunk_chars`` is still split. The next :meth:`push` starts a new
        turn, whose first chunk is cut early again.

        Returns:
            The remaining chunks, in order (empty if nothing was pending).
        """
        chunks: list[str] = []
        limit = self._config.max_chunk_chars
        while self._buf:
            if len(self._buf.rstrip()) <= limit:
                self._emit(len(self._buf), chunks)
                break
            within, beyond = self._boundaries(final=True)
            cut = self._forced_cut(within, beyond)
            self._emit(cut if cut is not None else len(self._buf), chunks)
        self.reset()
        return chunks

    def reset(self) -> None:
        """Drop the buffered text and start a new turn."""
        self._buf = ""
        self._first = True

    def _emit(self, cut: int, chunks: list[str]) -> None:
        """Move ``buffer[:cut]`` into ``chunks`` (if not blank)."""
        chunk = self._buf[:cut].strip()
        self._buf = self._buf[cut:].lstrip()
        if chunk:
            chunks.append(chunk)
            self._first = False

    def _boundaries(self, final: bool) -> tuple[list[_Boundary], _Boundary | None]:
        """Collect the decided boundaries up to ``max_chunk_chars``.

        Args:
            final: Whether the text is complete.

        Returns:
            The boundaries with a cut within the limit, and the first one
            beyond it (None if not decided yet).
        """
        limit = self._config.max_chunk_chars
        within: list[_Boundary] = []
        for item in _scan(self._buf, final):
            if isinstance(item, int):
                return within, None
            if item.cut > limit:
                return within, item
            within.append(item)
        return within, None  # pragma: no cover - _scan always ends with an int

    def _next_cut(self) -> int | None:
        """Decide where the next chunk ends, if that is decided yet."""
        buf = self._buf
        if not buf:
            return None
        cfg = self._config
        limit = cfg.max_chunk_chars
        within: list[_Boundary] = []
        beyond: _Boundary | None = None
        horizon = 0
        words = 0
        counted = 0
        for item in _scan(buf, final=False):
            if isinstance(item, int):
                horizon = item
                break
            if item.cut > limit:
                beyond = item
                break
            within.append(item)
            if self._first:
                words += _count_words(buf[counted : item.cut])
                counted = item.cut
                if item.kind >= _Kind.CLAUSE and words >= cfg.first_chunk_min_words:
                    return item.cut
                if words >= cfg.first_chunk_max_words:
                    return item.cut
            elif item.kind is _Kind.SENTENCE and item.cut >= cfg.min_chunk_chars:
                return item.cut
        if beyond is None and (horizon <= limit or len(buf.rstrip()) <= limit):
            # Everything within the limit may still change, or fits in one chunk.
            return None
        return self._forced_cut(within, beyond)

    def _forced_cut(self, within: list[_Boundary], beyond: _Boundary | None) -> int | None:
        """Pick where to split text that would exceed ``max_chunk_chars``.

        Prefers the last clause (or sentence) boundary within the limit that
        leaves a chunk of at least ``min_chunk_chars``, then the last boundary
        within the limit, then - when a single word is longer than the limit -
        the end of that word.

        Args:
            within: Decided boundaries with a cut within the limit, in order.
            beyond: The first decided boundary beyond the limit, if known.

        Returns:
            The cut, or None while the end of an over-long word is undecided.
        """
        for boundary in reversed(within):
            if boundary.kind >= _Kind.CLAUSE and boundary.cut >= self._config.min_chunk_chars:
                return boundary.cut
        if within:
            return within[-1].cut
        return beyond.cut if beyond is not None else None


def split_text(text: str, config: ChunkerConfig | None = None) -> list[str]:
    """Chunk a whole text at once, as a fresh turn.

    Args:
        text: The text, of any length.
        config: The knobs; the defaults of :class:`ChunkerConfig` if None.

    Returns:
        The chunks, in order: the first cut early, none longer than
        ``max_chunk_chars`` unless a single word is.
    """
    chunker = AdaptiveChunker(config)
    return chunker.push(text) + chunker.flush()


def is_speakable(text: str) -> bool:
    """Whether a TTS has something to say in ``text``.

    Args:
        text: Any text.

    Returns:
        True if it holds a Unicode letter or digit outside ``<...>`` tags, or
        a tag itself ("<laugh>"); False for empty, whitespace, punctuation or
        emoji-only text ("...", "?!", "😀🎉").
    """
    if _TAG_RE.search(text):
        return True
    return any(c.isalnum() for c in text)


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
