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
  before the limit, else at the last word boundary, and as a last resort (a
  URL, a base64 blob, one giant "word", text without spaces or punctuation)
  at the limit itself, on a grapheme boundary (never inside a character with
  its accents, an emoji sequence or a ``<tag>``). Such a cut is logged once
  per turn.

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

**Scripts without spaces.** Chinese and Japanese are cut at their own
punctuation, with or without a space after it: ``。！？`` (and the full-width
``．``) end a sentence, ``，、；：`` (and their full-width forms) end a clause,
closing brackets such as ``」`` stay with the text before them; an ASCII
``,.!?;:`` written straight after a Han or kana character counts the same.
Between two Han or kana characters a word boundary is assumed (the script
does not mark words), and for the first-chunk rule two such characters count
as one word. Thai, Lao, Khmer and Myanmar put spaces between phrases, not
words: a space after such text is a sentence boundary, and four of their
letters count as one word. Devanagari ``।`` ``॥`` and Arabic ``؟`` end a
sentence, Arabic ``،`` ``؛`` a clause.

**Cost.** The scan is incremental: each character is examined a bounded
number of times however the text is split into pieces, and a run of
whitespace is capped at :data:`MAX_WHITESPACE_RUN` characters (a newline in
it is kept), so the work per input character is bounded for every kind of
text.

What this module does not know:

* It is rule-based. It has no language model of sentence structure: an
  abbreviation at the very end of a sentence ("... and so on, etc. Then") is
  not taken as a sentence end, and a capital letter followed by a period
  ("Plan B. Then") is taken for an initial. Such text is merged into the next
  sentence, which is harmless for speech. It does not segment words of
  Chinese, Japanese or Thai: its word boundaries there are character or
  phrase boundaries.
* It does not normalise text for speech (numbers, symbols, markdown) and does
  not drop unspeakable chunks; use :func:`is_speakable` for that.
* It knows nothing of audio, timing, asyncio or Pipecat:
  :class:`pipecat_localtts.aggregator.AdaptiveTextAggregator` is the thin
  adapter that plugs it into ``pipecat.services.tts_service.TTSService``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import regex
from loguru import logger
from pipecat_localtts.validation import check_int

__all__ = [
    "ABBREVIATIONS",
    "BINDING_ABBREVIATIONS",
    "MAX_TAG_CHARS",
    "MAX_WHITESPACE_RUN",
    "AdaptiveChunker",
    "ChunkerConfig",
    "is_speakable",
    "split_text",
    "text_width",
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

#: Whitespace characters kept of one run; the rest of the run is dropped (but
#: a newline in it is kept), so the buffer cannot grow on whitespace alone.
MAX_WHITESPACE_RUN: Final[int] = 32

# A tag: "<", a non-space first character, then anything but brackets and
# line breaks, then ">", MAX_TAG_CHARS characters in all at most.
_TAG_RE: Final = re.compile(r"<[^<>\s][^<>\r\n]{0,%d}>" % (MAX_TAG_CHARS - 3))
# Characters that may close a sentence or clause after its punctuation.
_CLOSERS: Final[str] = "\"'\u201d\u2019)]}\u00bb*\u300d\u300f\uff09\u3011\u300b\u3009\u3015\u3017\u3019\u301b\uff3d\uff5d\uff63"
# Characters that may open a word before it (stripped for abbreviation lookup).
_OPENERS: Final[str] = "\"'\u201c\u2018([{\u00ab*\u300c\u300e\uff08\u3010\u300a\u3008\u3014\u3016\u3018\u301a\uff3b\uff5b\uff62"
# Sentence and clause punctuation of space-separated scripts (ends a token).
_SENTENCE_PUNCT: Final[str] = ".!?\u2026\u0964\u0965\u061f"  # . ! ? … । ॥ ؟
_STRONG_SENTENCE_PUNCT: Final[str] = "!?\u0964\u0965\u061f"  # always end a sentence
_CLAUSE_PUNCT: Final[str] = ",;:\u060c\u061b"  # , ; : ، ؛
# Punctuation of scripts without spaces: a boundary follows it, space or not.
# 。 ！ ？ ｡ ． (and Myanmar ။, Khmer ។) end a sentence; ， 、 ； ： ､ (Myanmar ၊) a clause.
_WIDE_SENTENCE: Final[str] = "\u3002\uff01\uff1f\uff61\uff0e\u104b\u17d4"
_WIDE_CLAUSE: Final[str] = "\uff0c\u3001\uff1b\uff1a\uff64\u104a"
# What may follow such punctuation and still belong to it (closers, repeats).
_WIDE_TRAIL: Final[str] = _WIDE_SENTENCE + _WIDE_CLAUSE + _CLOSERS + ".!?\u2026"
_SPACED_PUNCT: Final[str] = _SENTENCE_PUNCT + _CLAUSE_PUNCT
_MAX_TRAIL: Final[int] = 8  # a longer run of closers is decided without waiting for its end
_EM_DASH: Final[str] = "\u2014"
# Stand-alone tokens that mark a clause break when surrounded by spaces.
_SPACED_DASHES: Final[frozenset[str]] = frozenset({"-", "--", "\u2013", "\u2014"})
_NEWLINES: Final[frozenset[str]] = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
_TRAILING_PUNCT_RE: Final = re.compile("[%s]+$" % re.escape(_SENTENCE_PUNCT))
# Two or more single letters each followed by a period: "U.S.", "e.g.", "a.m.".
_DOTTED_LETTERS_RE: Final = re.compile(r"(?:[^\W\d_]\.){2,}")
# A numbered-list marker at the start of a line: "1.", "12.".
_LIST_MARKER_RE: Final = re.compile(r"\d{1,3}\.")
_WORD_SPLIT_RE: Final = re.compile(r"[\s\u2014]+")
_WHITESPACE_RUN_RE: Final = re.compile(r"\s+")
# One extended grapheme cluster (a character with its marks, an emoji sequence).
_GRAPHEME_RE: Final = regex.compile(r"\X")
# Han and kana: two count as one word. Letters of Thai, Lao, Myanmar, Khmer: four do.
_WIDE_RE: Final = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}]")
_PHRASE_LETTER_RE: Final = regex.compile(r"[\p{Thai}\p{Lao}\p{Myanmar}\p{Khmer}&&\p{L}]", regex.V1)
_SPACELESS_RE: Final = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Myanmar}\p{Khmer}]")


def _is_wide(ch: str) -> bool:
    """Whether ``ch`` is a Han or kana character (a script that does not mark words)."""
    c = ord(ch)
    return (
        0x3040 <= c <= 0x30FF  # hiragana, katakana
        or 0x31F0 <= c <= 0x31FF  # katakana extensions
        or 0x3400 <= c <= 0x4DBF  # CJK extension A
        or 0x4E00 <= c <= 0x9FFF  # CJK unified ideographs
        or 0xF900 <= c <= 0xFAFF  # compatibility ideographs
        or 0xFF66 <= c <= 0xFF9F  # half-width katakana
        or 0x20000 <= c <= 0x3134F  # CJK extensions B..G
    )


def _char_width(ch: str) -> int:
    """Length of ``ch`` for the chunk limits: 2 for a wide (East Asian) character, else 1.

    A Han character takes about as long to say as two or three Latin letters, so
    the limits count it twice (as terminals do), which keeps chunks of every
    script within a similar stretch of speech.
    """
    if ch < "\u1100":
        return 1
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def _text_width(buf: str, start: int, end: int) -> int:
    """Width of ``buf[start:end]``."""
    return sum(_char_width(c) for c in buf[start:end])


def text_width(text: str) -> int:
    """Length of ``text`` as the chunk limits count it: a wide (CJK) character counts twice.

    Args:
        text: Any text.

    Returns:
        The number of characters, plus one for each East Asian wide or full-width one.
    """
    return _text_width(text, 0, len(text))


def _is_phrase_script(ch: str) -> bool:
    """Whether ``ch`` is Thai, Lao, Myanmar or Khmer (spaces separate phrases, not words)."""
    c = ord(ch)
    return 0x0E00 <= c <= 0x0EFF or 0x1000 <= c <= 0x109F or 0x1780 <= c <= 0x17FF


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
        max_chunk_chars: No chunk is longer than this: longer text is split at
            the last clause boundary before the limit, else at the last word
            boundary before it, else (one unbreakable run) at the limit.
    """

    first_chunk_min_words: int = 3
    first_chunk_max_words: int = 8
    min_chunk_chars: int = 40
    max_chunk_chars: int = 250

    def __post_init__(self) -> None:
        """Check the knobs.

        Raises:
            TypeError: If a knob is not an int (bool is not taken for one).
            ValueError: If a knob is out of range or inconsistent with another.
        """
        for name in (
            "first_chunk_min_words",
            "first_chunk_max_words",
            "min_chunk_chars",
            "max_chunk_chars",
        ):
            check_int(f"ChunkerConfig.{name}", getattr(self, name), "an int")
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
        cut: Offset in the buffer; the chunk would end at ``buffer[cut]``.
        kind: The strength of the boundary.
        width: Width of the chunk it would end (see :func:`_char_width`).
    """

    cut: int
    kind: _Kind
    width: int


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
        line_start: Whether the token starts a line (or the chunk).

    Returns:
        The boundary kind after the token, or None when no cut may follow it
        (a title, an initial or a list marker binds to the next word).
    """
    core = token.rstrip(_CLOSERS)
    if not core:
        return _Kind.WORD
    last = core[-1]
    if last in _WIDE_SENTENCE:
        return _Kind.SENTENCE
    if last in _WIDE_CLAUSE:
        return _Kind.CLAUSE
    if last in _SENTENCE_PUNCT:
        match = _TRAILING_PUNCT_RE.search(core)
        run = match.group() if match else last
        if any(c in _STRONG_SENTENCE_PUNCT for c in run):
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
    if _is_phrase_script(last):
        # Thai and its neighbours put a space between phrases and sentences.
        return _Kind.SENTENCE
    return _Kind.WORD


def _starts_line(buf: str, lo: int, start: int) -> bool:
    """Whether the token at ``start`` begins the chunk (at ``lo``) or a line."""
    j = start
    while j > lo and buf[j - 1].isspace():
        j -= 1
        if buf[j] in _NEWLINES:
            return True
    return j == lo


def _could_become_tag(buf: str, start: int) -> bool:
    """Whether the unmatched "<" at ``start`` may still turn into a tag."""
    n = len(buf)
    if start + 1 >= n:
        return True
    if buf[start + 1].isspace() or n - start - 1 > MAX_TAG_CHARS - 2:
        return False
    return not any(c in "<>\r\n" for c in buf[start + 1 :])  # at most MAX_TAG_CHARS chars


def _count_words(text: str) -> float:
    """Count the words in ``text``: runs holding a letter or digit outside tags.

    Scripts that do not separate words are estimated from their characters:
    two Han or kana characters, or four Thai/Lao/Myanmar/Khmer letters, make a word.
    """
    plain = _TAG_RE.sub(" ", text)
    spaceless = 0.0
    if _SPACELESS_RE.search(plain):
        spaceless = len(_WIDE_RE.findall(plain)) / 2 + len(_PHRASE_LETTER_RE.findall(plain)) / 4
        plain = _SPACELESS_RE.sub(" ", plain)
    words = sum(1 for part in _WORD_SPLIT_RE.split(plain) if any(c.isalnum() for c in part))
    return words + spaceless


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

        Raises:
            TypeError: If ``config`` is not a :class:`ChunkerConfig` (or None).
        """
        if config is not None and not isinstance(config, ChunkerConfig):
            raise TypeError(
                f"config must be a ChunkerConfig or None, got {type(config).__name__}"
                " (build one: ChunkerConfig(max_chunk_chars=...))"
            )
        self._config = config if config is not None else ChunkerConfig()
        self._examined = 0
        self.reset()

    @property
    def config(self) -> ChunkerConfig:
        """The knobs this chunker uses."""
        return self._config

    @property
    def pending(self) -> str:
        """The buffered text not yet emitted (leading whitespace dropped)."""
        return self._buf[self._start :]

    @property
    def awaiting_first_chunk(self) -> bool:
        """Whether the next chunk is the first of the turn (cut early)."""
        return self._first

    @property
    def hard_cuts(self) -> int:
        """Chunks of this turn cut inside an unbreakable run (no word boundary in reach)."""
        return self._hard_cuts

    @property
    def chars_examined(self) -> int:
        """Characters scanned, counted or copied since creation: the chunker's cost.

        For tests and benchmarks: it grows linearly with the input, however the
        input is split into pieces.
        """
        return self._examined

    # ------------------------------------------------------------------ public API

    def push(self, text: str) -> list[str]:
        """Feed a piece of text.

        Args:
            text: The next piece, of any size (a character, a token, a text).

        Returns:
            The chunks that became ready, in order: stripped and non-empty.
        """
        if not text:
            return []
        text = self._cap_whitespace(text)
        stripped = len(text.rstrip())
        if stripped:
            self._end = len(self._buf) + stripped
        self._examined += len(self._buf) + len(text)  # the concatenation copies both
        self._buf += text
        if self._start == self._pos and self._tok < 0 and not self._within:
            self._skip_whitespace()
            self._restart()
        chunks: list[str] = []
        while (cut := self._next_cut()) is not None:
            self._emit(cut, chunks)
        return chunks

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
        while self._start < self._end:
            if self._rest_fits():
                self._emit(self._end, chunks)
                break
            self._restart()
            for boundary in self._scan(final=True):
                if boundary.width > limit:
                    break
                self._within.append(boundary)
            self._emit(self._forced_cut(), chunks)
        self.reset()
        return chunks

    def reset(self) -> None:
        """Drop the buffered text and start a new turn."""
        self._buf = ""
        self._start = 0  # where the pending chunk begins (leading whitespace skipped)
        self._end = 0  # end of the last non-whitespace character of the buffer
        self._first = True
        self._ws_run = 0  # length of the whitespace run the input currently ends with
        self._ws_newline = False  # whether the kept part of that run holds a newline
        self._hard_cuts = 0
        self._restart()

    # ------------------------------------------------------------------ deciding cuts

    def _restart(self) -> None:
        """Forget the scan of the pending chunk: it is scanned again from its start."""
        self._pos = self._start  # next character to scan
        self._tok = -1  # start of the token being scanned, -1 between tokens
        self._width = 0  # width of buffer[start:pos]
        self._decided = False  # every boundary within the limit is known
        self._within: list[_Boundary] = []  # decided boundaries within the limit
        self._beyond = False  # a boundary beyond the limit was found
        self._counted = self._start  # first chunk: words counted up to here
        self._words = 0.0

    def _next_cut(self) -> int | None:
        """Decide where the next chunk ends, if that is decided yet."""
        if self._start >= len(self._buf):
            return None
        cfg = self._config
        for boundary in self._scan(final=False):
            if boundary.width > cfg.max_chunk_chars:
                self._beyond = True
                break
            self._within.append(boundary)
            if self._first:
                self._words += _count_words(self._buf[self._counted : boundary.cut])
                self._examined += boundary.cut - self._counted
                self._counted = boundary.cut
                if boundary.kind >= _Kind.CLAUSE and self._words >= cfg.first_chunk_min_words:
                    return boundary.cut
                if self._words >= cfg.first_chunk_max_words:
                    return boundary.cut
            elif boundary.kind is _Kind.SENTENCE and boundary.width >= cfg.min_chunk_chars:
                return boundary.cut
        if not self._beyond and (not self._decided or self._rest_fits()):
            # Everything within the limit may still change, or fits in one chunk.
            return None
        return self._forced_cut()

    def _rest_fits(self) -> bool:
        """Whether all pending text (trailing whitespace aside) fits in one chunk."""
        limit = self._config.max_chunk_chars
        width = 0
        for i in range(self._start, self._end):
            width += _char_width(self._buf[i])
            if width > limit:
                self._examined += i - self._start
                return False
        self._examined += self._end - self._start
        return True

    def _forced_cut(self) -> int:
        """Pick where to split text that would exceed ``max_chunk_chars``.

        Prefers the last clause (or sentence) boundary within the limit that
        leaves a chunk of at least ``min_chunk_chars``, then the last boundary
        within the limit, then - inside one unbreakable run - the limit itself.
        """
        for boundary in reversed(self._within):
            if boundary.kind >= _Kind.CLAUSE and boundary.width >= self._config.min_chunk_chars:
                return boundary.cut
        if self._within:
            return self._within[-1].cut
        return self._hard_cut()

    def _hard_cut(self) -> int:
        """The last grapheme boundary within the limit, outside any tag (the last resort)."""
        buf, start = self._buf, self._start
        limit = self._config.max_chunk_chars
        cut, width = start, 0
        for cluster in _GRAPHEME_RE.finditer(buf, start, min(len(buf), start + limit + 1)):
            width += sum(_char_width(c) for c in cluster.group())
            if width > limit:
                break
            cut = cluster.end()
        self._examined += cut - start
        if cut == start:
            # One "character" wider than the limit (endless combining marks): cut inside it.
            width, cut = _char_width(buf[start]), start + 1
            while cut < len(buf) and width + _char_width(buf[cut]) <= limit:
                width += _char_width(buf[cut])
                cut += 1
        for tag in _TAG_RE.finditer(buf, max(start, cut - MAX_TAG_CHARS), cut + MAX_TAG_CHARS):
            if tag.start() < cut < tag.end() and tag.start() > start:
                cut = tag.start()
                break
        if not self._hard_cuts:
            logger.warning(
                f"chunker: {limit} characters without a word boundary (a URL, code, or text "
                f"without spaces?): cutting at the limit: {buf[start:start + 40]!r}..."
            )
        self._hard_cuts += 1
        return cut

    def _emit(self, cut: int, chunks: list[str]) -> None:
        """Move ``buffer[start:cut]`` into ``chunks`` (if not blank) and rescan from ``cut``."""
        chunk = self._buf[self._start : cut].strip()
        self._examined += cut - self._start
        self._start = cut
        self._skip_whitespace()
        if self._start > len(self._buf) // 2:
            # Drop the emitted text; each compaction copies less than it removes.
            self._examined += len(self._buf) - self._start
            self._buf = self._buf[self._start :]
            self._end = max(0, self._end - self._start)
            self._start = 0
        self._restart()
        if chunk:
            chunks.append(chunk)
            self._first = False

    def _skip_whitespace(self) -> None:
        buf, i = self._buf, self._start
        while i < len(buf) and buf[i].isspace():
            i += 1
        self._examined += i - self._start
        self._start = i

    def _cap_whitespace(self, text: str) -> str:
        """Drop whitespace beyond :data:`MAX_WHITESPACE_RUN` in a run (keeping one newline)."""
        if not self._ws_run and not text[0].isspace() and not text[-1].isspace() and not _has_long_run(text):
            return text
        out: list[str] = []
        pos = 0
        for run in _WHITESPACE_RUN_RE.finditer(text):
            s, e = run.span()
            if s > pos:  # text before this run ends the previous run
                out.append(text[pos:s])
                self._ws_run, self._ws_newline = 0, False
            room = max(0, MAX_WHITESPACE_RUN - self._ws_run)
            kept = text[s : min(e, s + room)]
            out.append(kept)
            if not self._ws_newline and any(c in _NEWLINES for c in kept):
                self._ws_newline = True
            if not self._ws_newline and e - s > room:
                newline = next((c for c in text[s + room : e] if c in _NEWLINES), None)
                if newline is not None:
                    out.append(newline)
                    self._ws_newline = True
            self._ws_run += e - s
            pos = e
        if pos < len(text):
            out.append(text[pos:])
            self._ws_run, self._ws_newline = 0, False
        self._examined += len(text)
        return "".join(out)

    # ------------------------------------------------------------------ the scanner

    def _scan(self, final: bool) -> Iterator[_Boundary]:
        """Find the next decided boundaries of the pending chunk, in order.

        Scanning resumes where it stopped: at the end of the buffer or at a
        character that needs more text to be decided (an unmatched "<" that may
        become a tag, a dash or Han character or punctuation at the end). It
        goes no further than ``max_chunk_chars`` of width past the chunk's
        start: beyond that nothing can change where the chunk ends. The scan
        position is saved before each boundary is yielded, so the caller may
        stop at any boundary. On return ``self._decided`` says whether every
        boundary within the limit is known.

        Args:
            final: Whether the text is complete (end of turn).

        Yields:
            :class:`_Boundary` objects in increasing ``cut`` order.
        """
        buf = self._buf
        n = len(buf)
        lo = self._start
        limit = self._config.max_chunk_chars
        i, tok, w = self._pos, self._tok, self._width  # w: width of buf[lo:i]
        while i < n and w <= limit:
            ch = buf[i]
            if ch.isspace():
                if tok >= 0:
                    if ch in _NEWLINES:
                        kind: _Kind | None = _Kind.SENTENCE
                    else:
                        kind = _token_kind(buf[tok:i], _starts_line(buf, lo, tok))
                    tok = -1
                    if kind is not None:
                        self._save(i + 1, -1, w + _char_width(ch))
                        yield _Boundary(i, kind, w)
                w += _char_width(ch)
                i += 1
                continue
            if tok < 0:
                tok = i
            if ch == "<":
                tag = _TAG_RE.match(buf, i)
                if tag:
                    w += _text_width(buf, i, tag.end())
                    self._examined += tag.end() - i - 1
                    i = tag.end()
                    continue
                if not final and _could_become_tag(buf, i):
                    self._save(i, tok, w, decided=w + 1 > limit)
                    return
            elif ch in _WIDE_SENTENCE or ch in _WIDE_CLAUSE or (
                ch in _SPACED_PUNCT and i > lo and _is_wide(buf[i - 1])
            ):
                # Punctuation of a script without spaces: the boundary follows it and
                # its closing brackets, whether or not a space comes next.
                j = i + 1
                while j < n and j - i <= _MAX_TRAIL and buf[j] in _WIDE_TRAIL:
                    j += 1
                if j >= n and not final:
                    self._save(i, tok, w, decided=w + _char_width(ch) > limit)
                    return
                w_end = w + _text_width(buf, i, j)
                self._examined += j - i - 1
                if j < n and not buf[j].isspace():
                    run = buf[i:j]
                    sentence = any(c in _WIDE_SENTENCE or c in _STRONG_SENTENCE_PUNCT for c in run)
                    if not sentence and ch in _SENTENCE_PUNCT and run.rstrip(_CLOSERS) == ".":
                        sentence = True  # "好.他" : a period straight after Han text
                    self._save(j, -1, w_end)
                    yield _Boundary(j, _Kind.SENTENCE if sentence else _Kind.CLAUSE, w_end)
                    i, tok, w = j, -1, w_end
                    continue
                # A space (or the end) follows: the token ends there, as in other scripts.
                i, w = j, w_end
                continue
            elif _is_wide(ch):
                if i + 1 >= n:
                    if not final:
                        self._save(i, tok, w, decided=w + _char_width(ch) > limit)
                        return
                elif _is_wide(buf[i + 1]) or buf[i + 1].isalnum():
                    # Han and kana do not mark words: any two characters may be cut apart.
                    self._save(i + 1, tok, w + _char_width(ch))
                    yield _Boundary(i + 1, _Kind.WORD, w + _char_width(ch))
            elif ch.isalnum():
                if i + 1 >= n:
                    if not final:  # Han text may follow: "iPhone" + "拍照"
                        self._save(i, tok, w, decided=w + _char_width(ch) > limit)
                        return
                elif buf[i + 1] >= "\u3040" and _is_wide(buf[i + 1]):
                    # A Latin word or a number straight before Han text ("iPhone拍照").
                    self._save(i + 1, tok, w + _char_width(ch))
                    yield _Boundary(i + 1, _Kind.WORD, w + _char_width(ch))
            elif ch == _EM_DASH:
                if i + 1 >= n:
                    if not final:
                        self._save(i, tok, w, decided=w + 1 > limit)
                        return
                else:
                    nxt = buf[i + 1]
                    # "word—word" is a clause break; "1990—2000" and "——" are not. A
                    # dash followed by whitespace ends its token and is handled there.
                    if (
                        not nxt.isspace()
                        and nxt not in "-\u2013\u2014"
                        and not (i > lo and buf[i - 1].isdigit() and nxt.isdigit())
                    ):
                        self._save(i + 1, tok, w + 1)
                        yield _Boundary(i + 1, _Kind.CLAUSE, w + 1)
            w += _char_width(ch)
            i += 1
        if w > limit:  # past the limit: nothing after it can change this chunk's end
            self._save(i, tok, w, decided=True)
        elif tok < 0:
            # A new boundary needs at least one more character.
            self._save(i, tok, w, decided=final or w + 1 > limit)
        elif final:
            kind = _token_kind(buf[tok:], _starts_line(buf, lo, tok))
            self._save(n, -1, w, decided=True)
            yield _Boundary(n, kind or _Kind.WORD, w)
        else:
            self._save(i, tok, w, decided=False)  # the token may go on

    def _save(self, pos: int, tok: int, width: int, decided: bool | None = None) -> None:
        """Record where the scan resumes (and, when it stops, whether the limit is decided)."""
        self._examined += max(0, pos - self._pos)
        self._pos, self._tok, self._width = pos, tok, width
        if decided is not None:
            self._decided = decided


def _has_long_run(text: str) -> bool:
    """Whether ``text`` holds a whitespace run longer than :data:`MAX_WHITESPACE_RUN`."""
    return len(text) > MAX_WHITESPACE_RUN and any(
        len(run.group()) > MAX_WHITESPACE_RUN for run in _WHITESPACE_RUN_RE.finditer(text)
    )


def split_text(text: str, config: ChunkerConfig | None = None) -> list[str]:
    """Chunk a whole text at once, as a fresh turn.

    Args:
        text: The text, of any length.
        config: The knobs; the defaults of :class:`ChunkerConfig` if None.

    Returns:
        The chunks, in order: the first cut early, none longer than
        ``max_chunk_chars``.
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


def well_formed(text: str) -> str:
    """``text`` as valid Unicode: a Python str may hold lone surrogates, UTF-8 (and so a
    tokenizer) cannot. A split pair becomes its character again, a lone half U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def middle_cut(text: str) -> int:
    """Where to halve ``text`` (0 < cut < len): the space nearest its middle, else the
    grapheme boundary nearest it, else (one grapheme of many code points) the middle."""
    assert len(text) > 1
    middle = len(text) // 2
    cuts = [i for i in range(1, len(text)) if text[i].isspace()]
    if not cuts:
        cuts = [m.end() for m in regex.finditer(r"\X", text)][:-1]
    return min(cuts, key=lambda i: abs(i - middle)) if cuts else middle


def fit_pieces(text: str, fits: Callable[[str], bool]) -> list[str]:
    """``text`` halved (at a space where it has one) until every piece ``fits``.

    Chunks are bounded in characters, but one character can be several tokens (up to 4
    byte-level tokens for emoji or rare CJK), so a chunk's prompt can still exceed a token
    budget; ``fits`` says whether a piece's prompt is within it. A single code point is
    returned as it is.
    """
    if len(text) <= 1 or fits(text):
        return [text]
    cut = middle_cut(text)
    return fit_pieces(text[:cut].rstrip(), fits) + fit_pieces(text[cut:].lstrip(), fits)
