"""Tests for pipecat_localtts.chunking: the adaptive chunker and its Pipecat adapter."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator

import pytest
from pipecat.frames.frames import (
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.tests.utils import run_test
from pipecat.utils.text.base_text_aggregator import Aggregation, TextType

from pipecat_localtts.chunking import (
    AdaptiveChunker,
    AdaptiveTextAggregator,
    ChunkerConfig,
    is_speakable,
    split_text,
)

# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def feed(pieces: list[str], config: ChunkerConfig | None = None) -> list[str]:
    """Push the pieces into a fresh chunker, then flush; return all chunks."""
    chunker = AdaptiveChunker(config)
    out: list[str] = []
    for piece in pieces:
        out.extend(chunker.push(piece))
    out.extend(chunker.flush())
    return out


def random_pieces(text: str, seed: int, max_len: int = 7) -> list[str]:
    """Cut ``text`` into random pieces of 1..max_len characters (seeded)."""
    rng = random.Random(seed)
    pieces: list[str] = []
    i = 0
    while i < len(text):
        step = rng.randint(1, max_len)
        pieces.append(text[i : i + step])
        i += step
    return pieces


def token_pieces(text: str) -> list[str]:
    """Cut ``text`` like an LLM tokenizer would: words with their leading space,
    punctuation as separate tokens."""
    pieces: list[str] = []
    current = ""
    for ch in text:
        if ch.isspace() and current and not current.isspace():
            pieces.append(current)
            current = ch
        elif ch in ",.!?;:" and current:
            pieces.append(current)
            current = ch
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


_LONG_CLAUSE_SENTENCE = (
    "After the long meeting with the whole product team yesterday afternoon we "
    "decided to move the launch date back by two full weeks, because the new "
    "payment integration still fails in several regions and the support team "
    "needs more time to prepare documentation for the customers who will be "
    "affected by this change."
)
_GREEK = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
_LONG_PLAIN_SENTENCE = " ".join([_GREEK] * 5) + "."

# (id, text, expected chunks with the default config)
CASES: list[tuple[str, str, list[str]]] = [
    (
        "first-clause-fast",
        "Well, I checked the calendar, and the meeting moved to Friday afternoon. "
        "I will send you the new invite right away.",
        [
            "Well, I checked the calendar,",
            "and the meeting moved to Friday afternoon.",
            "I will send you the new invite right away.",
        ],
    ),
    (
        "first-sentence-when-first-clause-too-short",
        "Sure, I can help with that. Let me check the schedule for tomorrow morning. "
        "It should only take a moment.",
        [
            "Sure, I can help with that.",
            "Let me check the schedule for tomorrow morning.",
            "It should only take a moment.",
        ],
    ),
    (
        "first-chunk-by-word-count",
        "I have been looking into the thing that you mentioned earlier today and",
        ["I have been looking into the thing that", "you mentioned earlier today and"],
    ),
    (
        "later-clauses-wait-for-sentence-end",
        "Right, so here is the thing. Now, this part, with its commas, waits until "
        "the whole sentence has ended. Bye.",
        [
            "Right, so here is the thing.",
            "Now, this part, with its commas, waits until the whole sentence has ended.",
            "Bye.",
        ],
    ),
    (
        "short-sentences-merged",
        "Okay, here is the plan. Go left. Then right. Stop at the big red door and "
        "knock twice. Done.",
        [
            "Okay, here is the plan.",
            "Go left. Then right. Stop at the big red door and knock twice.",
            "Done.",
        ],
    ),
    (
        "long-sentence-split-at-clause",
        "Right away, here it is. " + _LONG_CLAUSE_SENTENCE,
        [
            "Right away, here it is.",
            "After the long meeting with the whole product team yesterday afternoon we "
            "decided to move the launch date back by two full weeks,",
            "because the new payment integration still fails in several regions and the "
            "support team needs more time to prepare documentation for the customers "
            "who will be affected by this change.",
        ],
    ),
    (
        "long-sentence-split-at-word",
        "Right away, here it is. " + _LONG_PLAIN_SENTENCE,
        [
            "Right away, here it is.",
            " ".join([_GREEK] * 3) + " alpha beta gamma delta epsilon zeta eta theta",
            "iota kappa lambda mu " + _GREEK + ".",
        ],
    ),
    (
        "numbers-not-split",
        "The value of pi is about 3.14 and the prize is 1,000 dollars. The train "
        "leaves at 10:30 and a coffee costs $2.50 at the station.",
        [
            "The value of pi is about 3.14 and",
            "the prize is 1,000 dollars. The train leaves at 10:30 and a coffee costs "
            "$2.50 at the station.",
        ],
    ),
    (
        "number-first-clause",
        "It is 3.14, roughly speaking. That is the whole answer you need today.",
        ["It is 3.14,", "roughly speaking. That is the whole answer you need today."],
    ),
    (
        "abbreviations",
        "Please call Dr. Smith tomorrow. Bring documents, e.g. your passport and a "
        "bill, from the U.S. office. Mr. J. R. R. Tolkien wrote books, i.e. novels, "
        "etc. and more.",
        [
            "Please call Dr. Smith tomorrow.",
            "Bring documents, e.g. your passport and a bill, from the U.S. office.",
            "Mr. J. R. R. Tolkien wrote books, i.e. novels, etc. and more.",
        ],
    ),
    (
        "title-binds-to-name-in-word-count-cut",
        "We will meet with the famous surgeon Dr. Smith at the clinic",
        ["We will meet with the famous surgeon Dr. Smith", "at the clinic"],
    ),
    (
        "emotive-tags",
        "<laugh> Oh wow, that is hilarious <chuckle>. <sigh> Okay, fine, let me try "
        "again. That one was really good <laugh>, honestly!",
        [
            "<laugh> Oh wow, that is hilarious <chuckle>.",
            "<sigh> Okay, fine, let me try again. That one was really good <laugh>, "
            "honestly!",
        ],
    ),
    (
        "tag-with-punctuation-inside",
        "Oh no <long, sad sigh> I dropped it, the whole cake. What a mess this is.",
        ["Oh no <long, sad sigh> I dropped it,", "the whole cake. What a mess this is."],
    ),
    (
        "quotes-after-periods",
        'She said, "I will be there at noon." Then she left. "Wait!" he shouted '
        "(too late.) Nobody answered him at all that day.",
        [
            'She said, "I will be there at noon."',
            'Then she left. "Wait!" he shouted (too late.)',
            "Nobody answered him at all that day.",
        ],
    ),
    (
        "ellipsis",
        "Hmm... I am not sure about that... maybe we could try it. Well... let us "
        "see what happens next, shall we?",
        [
            "Hmm... I am not sure about that...",
            "maybe we could try it. Well... let us see what happens next, shall we?",
        ],
    ),
    (
        "dashes",
        "I thought about it\u2014and honestly\u2014it makes sense. We could go on "
        "Friday - or Saturday \u2013 whichever works for you.",
        [
            "I thought about it\u2014",
            "and honestly\u2014it makes sense. We could go on Friday - or Saturday "
            "\u2013 whichever works for you.",
        ],
    ),
    (
        "number-range-with-dash",
        "Between 1990\u20142000 the city grew by 25.5% overall and that was "
        "remarkable. More later.",
        [
            "Between 1990\u20142000 the city grew by 25.5%",
            "overall and that was remarkable. More later.",
        ],
    ),
    (
        "newlines-and-list-markers",
        "Here are your options:\n1. Take the bus\n2. Walk to the station\n"
        "3. Call a taxi from the hotel lobby",
        [
            "Here are your options:",
            "1. Take the bus\n2. Walk to the station\n3. Call a taxi from the hotel lobby",
        ],
    ),
    ("single-short-sentence", "Yes.", ["Yes."]),
    ("only-whitespace", "  \n\t ", []),
]


# --------------------------------------------------------------------------- #
# The table, fed whole and incrementally
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_table_whole_text(text: str, expected: list[str]) -> None:
    assert feed([text]) == expected
    assert split_text(text) == expected


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_table_char_by_char(text: str, expected: list[str]) -> None:
    assert feed(list(text)) == expected


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_table_token_pieces(text: str, expected: list[str]) -> None:
    pieces = token_pieces(text)
    assert "".join(pieces) == text
    assert feed(pieces) == expected


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_table_random_pieces(text: str, expected: list[str], seed: int) -> None:
    assert feed(random_pieces(text, seed)) == expected


_FUZZ_ATOMS = [
    "Hello", "world", "3.14", "1,000", "$2.50", "10:30", "Dr.", "e.g.", "U.S.", "J.",
    "<laugh>", "<long sigh>", "<", ">", ",", ".", "!", "?", "...", "\u2026", "\u2014",
    "\u2013", " - ", "\n", "1.", '"', ")", "x" * 60, "I", "etc.", "\U0001f600", ":",
]  # fmt: skip


@pytest.mark.parametrize(
    "config",
    [
        ChunkerConfig(),
        ChunkerConfig(
            first_chunk_min_words=1, first_chunk_max_words=3, min_chunk_chars=10, max_chunk_chars=30
        ),
    ],
    ids=["default", "small"],
)
def test_fuzz_piece_boundaries_do_not_matter(config: ChunkerConfig) -> None:
    for seed in range(150):
        rng = random.Random(seed)
        text = "".join(
            rng.choice(_FUZZ_ATOMS) + rng.choice(["", " ", " ", "\n"])
            for _ in range(rng.randint(1, 60))
        )
        whole = feed([text], config)
        assert feed(list(text), config) == whole, text
        assert feed(random_pieces(text, seed), config) == whole, text
        # Nothing lost or added but whitespace; chunks stripped and non-empty.
        assert "".join("".join(whole).split()) == "".join(text.split())
        assert all(chunk and chunk == chunk.strip() for chunk in whole)
        # Only a chunk holding an over-long word (with a title such as "Dr."
        # bound to it) may exceed the limit.
        assert all(len(c) <= config.max_chunk_chars or "x" * 60 in c for c in whole), text


def test_first_chunk_is_emitted_before_the_turn_ends() -> None:
    chunker = AdaptiveChunker()
    emitted: list[str] = []
    for piece in token_pieces("Well, I checked the calendar, and the meeting moved"):
        emitted.extend(chunker.push(piece))
    # The clause is out as soon as the space after its comma arrived.
    assert emitted == ["Well, I checked the calendar,"]
    assert chunker.pending == "and the meeting moved"


def test_chunks_never_exceed_max_in_table() -> None:
    for _, text, _ in CASES:
        assert all(len(chunk) <= ChunkerConfig().max_chunk_chars for chunk in split_text(text))


# --------------------------------------------------------------------------- #
# Decisions wait for the next character
# --------------------------------------------------------------------------- #


def test_period_at_end_of_buffer_is_undecided() -> None:
    chunker = AdaptiveChunker()
    assert chunker.push("It costs about 3.") == []
    assert chunker.push("14 dollars") == []
    assert chunker.pending == "It costs about 3.14 dollars"
    assert chunker.push(" total, okay") == ["It costs about 3.14 dollars total,"]


def test_period_confirmed_by_whitespace() -> None:
    chunker = AdaptiveChunker()
    assert chunker.push("I have exactly three.") == []
    assert chunker.push(" ") == ["I have exactly three."]
    assert chunker.pending == ""


def test_comma_at_end_of_buffer_is_undecided() -> None:
    chunker = AdaptiveChunker()
    assert chunker.push("We sold about 1,") == []
    assert chunker.push("000 units") == []
    assert chunker.push(", sadly") == ["We sold about 1,000 units,"]


def test_open_tag_holds_decisions() -> None:
    chunker = AdaptiveChunker()
    assert chunker.push("Oh my, oh my <deep, long") == []
    assert chunker.pending == "Oh my, oh my <deep, long"
    assert chunker.push(" sigh>, what a day") == ["Oh my, oh my <deep, long sigh>,"]


def test_stray_angle_bracket_is_plain_text() -> None:
    # "a < b" cannot be a tag (space after "<"), so the clause is cut.
    assert split_text("I know that a < b, and also that c is big.") == [
        "I know that a < b,",
        "and also that c is big.",
    ]


def test_unclosed_tag_is_plain_text_at_flush() -> None:
    chunker = AdaptiveChunker()
    assert chunker.push("Hello there <unfinished") == []
    assert chunker.flush() == ["Hello there <unfinished"]


def test_giant_word_is_emitted_whole() -> None:
    config = ChunkerConfig(max_chunk_chars=20, min_chunk_chars=5)
    word = "x" * 50
    chunker = AdaptiveChunker(config)
    assert chunker.push("Hi there my friend. " + word) == ["Hi there my friend."]
    assert chunker.push("yz") == []  # the long word may still go on
    assert chunker.push(" and more") == [word + "yz"]
    assert chunker.flush() == ["and more"]


# --------------------------------------------------------------------------- #
# flush, reset, pending
# --------------------------------------------------------------------------- #


def test_new_turn_after_flush_gets_fast_first_chunk() -> None:
    chunker = AdaptiveChunker()
    first = chunker.push("Sure, I can help with that. Now, this clause, and that one, ")
    assert first == ["Sure, I can help with that."]
    assert chunker.awaiting_first_chunk is False
    # Later in the turn a clause is not enough: nothing comes out.
    assert chunker.push("keep waiting for the end") == []
    assert chunker.flush() == ["Now, this clause, and that one, keep waiting for the end"]
    assert chunker.awaiting_first_chunk is True
    assert chunker.pending == ""
    # The next turn is cut at its first clause again.
    assert chunker.push("Alright, one more thing, ") == ["Alright, one more thing,"]


def test_flush_releases_held_short_sentences() -> None:
    chunker = AdaptiveChunker()
    assert chunker.push("Okay, here is the plan. Go left. Then right. ") == [
        "Okay, here is the plan."
    ]
    assert chunker.pending == "Go left. Then right. "
    assert chunker.flush() == ["Go left. Then right."]
    assert chunker.flush() == []


def test_flush_respects_max_chunk_chars() -> None:
    config = ChunkerConfig(max_chunk_chars=30, min_chunk_chars=10)
    chunker = AdaptiveChunker(config)
    # Everything held because the last word never ended: flush must still split.
    text = "one two three four five six seven eight nine ten eleven twelve"
    chunks = chunker.push(text[:-7]) + chunker.flush()
    assert all(len(c) <= 30 for c in chunks)
    assert " ".join(chunks).split() == text[:-7].split()


def test_reset_drops_text_and_restarts_turn() -> None:
    chunker = AdaptiveChunker()
    assert chunker.push("Sure, I can help with that. Half a sent") == [
        "Sure, I can help with that."
    ]
    assert chunker.pending == "Half a sent"
    chunker.reset()
    assert chunker.pending == ""
    assert chunker.awaiting_first_chunk is True
    assert chunker.flush() == []
    assert chunker.push("Fine, then we start over, ") == ["Fine, then we start over,"]


def test_pending_drops_leading_whitespace() -> None:
    chunker = AdaptiveChunker()
    assert chunker.push("\n\n  ") == []
    assert chunker.pending == ""
    assert chunker.push("  Hello") == []
    assert chunker.pending == "Hello"


def test_push_empty_string_is_noop() -> None:
    chunker = AdaptiveChunker()
    chunker.push("Hello")
    assert chunker.push("") == []
    assert chunker.pending == "Hello"


def test_custom_first_chunk_knobs() -> None:
    config = ChunkerConfig(first_chunk_min_words=1, first_chunk_max_words=2)
    assert split_text("Sure, I can help with that.", config) == [
        "Sure,",
        "I can help with that.",
    ]
    assert split_text("one two three four", config) == ["one two", "three four"]


def test_min_chunk_chars_zero_disables_merging() -> None:
    config = ChunkerConfig(min_chunk_chars=0)
    assert split_text("Okay, here is the plan. Go left. Then right. Done.", config) == [
        "Okay, here is the plan.",
        "Go left.",
        "Then right.",
        "Done.",
    ]


# --------------------------------------------------------------------------- #
# split_text on long text
# --------------------------------------------------------------------------- #


def _long_text() -> str:
    rng = random.Random(1234)
    vocabulary = (
        "the quick brown fox jumps over lazy dog while seven engineers debate "
        "latency budgets streaming audio tokens 3.14 1,000 $2.50 10:30 Dr. Smith "
        "e.g. U.S. <laugh> <sigh> quietly"
    ).split()
    parts: list[str] = []
    while sum(len(p) + 1 for p in parts) < 6000:
        n_words = rng.choice([2, 5, 9, 15, 30, 60, 90])
        words = [rng.choice(vocabulary) for _ in range(n_words)]
        for k in range(4, n_words - 1, rng.randint(5, 12)):
            words[k] += ","
        parts.append(" ".join(words) + rng.choice([".", "!", "?", "...", "."]))
    parts.append("x" * 300 + ".")  # a single word longer than the limit
    return " ".join(parts)


def test_split_text_long_text() -> None:
    text = _long_text()
    assert len(text) > 5000
    config = ChunkerConfig()
    start = time.perf_counter()
    chunks = split_text(text, config)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    assert len(chunks) > 20
    giant = "x" * 300 + "."
    for chunk in chunks:
        assert chunk == chunk.strip() and chunk
        assert len(chunk) <= config.max_chunk_chars or chunk == giant
    # All words, in order, none split.
    assert " ".join(chunks).split() == text.split()
    # The same chunks when streamed in token-sized pieces.
    assert feed(random_pieces(text, seed=99, max_len=12), config) == chunks


# --------------------------------------------------------------------------- #
# is_speakable
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello", True),
        ("  a ", True),
        ("42", True),
        ("3.14", True),
        ("Привет", True),
        ("你好", True),
        ("<laugh>", True),
        ("  <sigh>  ", True),
        ("<laugh> ha", True),
        ("", False),
        ("   \n\t", False),
        ("...", False),
        ("?!", False),
        ("\u2014 - , ;", False),
        ("\U0001f600\U0001f389", False),
        ("<>", False),
        ("< >", False),
    ],
)
def test_is_speakable(text: str, expected: bool) -> None:
    assert is_speakable(text) is expected


# --------------------------------------------------------------------------- #
# Config validation
# --------------------------------------------------------------------------- #


def test_default_config() -> None:
    config = ChunkerConfig()
    assert (
        config.first_chunk_min_words,
        config.first_chunk_max_words,
        config.min_chunk_chars,
        config.max_chunk_chars,
    ) == (3, 8, 40, 250)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"first_chunk_min_words": 0}, "first_chunk_min_words must be at least 1"),
        ({"first_chunk_min_words": 5, "first_chunk_max_words": 4}, "first_chunk_max_words"),
        ({"max_chunk_chars": 0}, "max_chunk_chars must be at least 1"),
        ({"min_chunk_chars": -1}, "min_chunk_chars must be between 0 and max_chunk_chars"),
        ({"min_chunk_chars": 300, "max_chunk_chars": 250}, "min_chunk_chars"),
        ({"max_chunk_chars": 250.0}, "max_chunk_chars must be an int"),
        ({"first_chunk_min_words": True}, "first_chunk_min_words must be an int"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChunkerConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    config = ChunkerConfig()
    with pytest.raises(AttributeError):
        config.max_chunk_chars = 10  # type: ignore[misc]


# --------------------------------------------------------------------------- #
# Pipecat adapter, driven directly
# --------------------------------------------------------------------------- #


async def _aggregate(aggregator: AdaptiveTextAggregator, pieces: list[str]) -> list[Aggregation]:
    out: list[Aggregation] = []
    for piece in pieces:
        async for aggregation in aggregator.aggregate(piece):
            out.append(aggregation)
    return out


async def test_adapter_aggregate_and_flush() -> None:
    aggregator = AdaptiveTextAggregator()
    assert aggregator.aggregation_type == TextType.SENTENCE
    text = "Sure, I can help with that. Let me check the schedule for tomorrow morning. Okay"
    ready = await _aggregate(aggregator, token_pieces(text))
    assert [a.text for a in ready] == [
        "Sure, I can help with that.",
        "Let me check the schedule for tomorrow morning.",
    ]
    assert all(a.type == TextType.SENTENCE for a in ready)
    assert aggregator.text == Aggregation(text="Okay", type=TextType.SENTENCE)
    remaining = await aggregator.flush()
    assert remaining == Aggregation(text="Okay", type=TextType.SENTENCE)
    assert aggregator.text.text == ""
    assert await aggregator.flush() is None


async def test_adapter_flush_joins_oversized_remainder() -> None:
    config = ChunkerConfig(max_chunk_chars=20, min_chunk_chars=5)
    aggregator = AdaptiveTextAggregator(config)
    ready = await _aggregate(aggregator, ["Hi there my friend. ", "y" * 30])
    assert [a.text for a in ready] == ["Hi there my friend."]
    remaining = await aggregator.flush()
    assert remaining is not None and remaining.text == "y" * 30


async def test_adapter_handle_interruption_clears_state() -> None:
    aggregator = AdaptiveTextAggregator()
    ready = await _aggregate(aggregator, ["Sure, I can help with that. ", "And then some"])
    assert [a.text for a in ready] == ["Sure, I can help with that."]
    await aggregator.handle_interruption()
    assert aggregator.text.text == ""
    assert await aggregator.flush() is None
    # A fresh turn: the first clause comes out fast again.
    ready = await _aggregate(aggregator, ["Alright, one more thing, "])
    assert [a.text for a in ready] == ["Alright, one more thing,"]


async def test_adapter_reset_clears_state() -> None:
    aggregator = AdaptiveTextAggregator()
    await _aggregate(aggregator, ["Half a"])
    assert aggregator.text.text == "Half a"
    await aggregator.reset()
    assert aggregator.text.text == ""
    assert aggregator.chunker.awaiting_first_chunk is True
    assert await aggregator.flush() is None


# --------------------------------------------------------------------------- #
# Through a real Pipecat pipeline
# --------------------------------------------------------------------------- #


class _RecordingTTS(TTSService):
    """A TTS service that records the text it is asked to speak."""

    def __init__(self, config: ChunkerConfig | None = None) -> None:
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            sample_rate=24000,
            settings=TTSSettings(model=None, voice=None, language=None),
            # No audio ever comes, so don't idle 3 s before TTSStoppedFrame.
            stop_frame_timeout_s=0.05,
        )
        self._text_aggregator = AdaptiveTextAggregator(config)
        self.spoken: list[str] = []
        # Text still buffered in the aggregator when each chunk was spoken.
        self.pending_at_call: list[str] = []

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        self.spoken.append(text)
        self.pending_at_call.append(self._text_aggregator.text.text)
        return
        yield  # pragma: no cover - makes this an async generator


async def test_pipeline_speaks_the_chunks() -> None:
    text = (
        "Well, I checked the calendar, and the meeting moved to Friday afternoon. "
        "Go left. Then right. I will send you the new invite right"
    )
    tts = _RecordingTTS()
    frames = [
        LLMFullResponseStartFrame(),
        *[LLMTextFrame(piece) for piece in token_pieces(text)],
        LLMFullResponseEndFrame(),
    ]
    await run_test(tts, frames_to_send=frames)
    expected = split_text(text)
    assert expected == [
        "Well, I checked the calendar,",
        "and the meeting moved to Friday afternoon.",
        "Go left. Then right. I will send you the new invite right",
    ]
    assert tts.spoken == expected
    # The first chunks were spoken mid-turn, the last one by the flush at the end.
    assert tts.pending_at_call[0] != ""
    assert tts.pending_at_call[-1] == ""
