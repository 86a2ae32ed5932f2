"""Tests for pipecat_localtts.chunking: the adaptive chunker and its Pipecat adapter."""

from __future__ import annotations

import random
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

from pipecat_localtts.aggregator import AdaptiveTextAggregator
from pipecat_localtts.chunking import (
    MAX_WHITESPACE_RUN,
    AdaptiveChunker,
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
        # No chunk exceeds the limit, not even one made of an over-long word.
        assert all(len(c) <= config.max_chunk_chars for c in whole), text


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


def test_giant_word_is_cut_at_the_limit() -> None:
    config = ChunkerConfig(max_chunk_chars=20, min_chunk_chars=5)
    word = "x" * 50
    chunker = AdaptiveChunker(config)
    # The word can never fit: it is cut at the limit as soon as the limit is passed.
    assert chunker.push("Hi there my friend. " + word) == ["Hi there my friend.", "x" * 20, "x" * 20]
    assert chunker.hard_cuts == 2
    assert chunker.push("yz") == []  # the rest may still end within the limit
    # 21 characters pending: cut at the last word boundary within the limit.
    assert chunker.push(" and more") == ["x" * 10 + "yz and"]
    assert chunker.flush() == ["more"]
    assert chunker.hard_cuts == 0  # counted per turn


def test_giant_word_prefers_a_word_boundary_within_the_limit() -> None:
    config = ChunkerConfig(max_chunk_chars=20, min_chunk_chars=5)
    assert split_text("ab " + "x" * 30, config) == ["ab", "x" * 20, "x" * 10]


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
    chunks = split_text(text, config)
    assert len(chunks) > 20
    for chunk in chunks:
        assert chunk == chunk.strip() and chunk
        assert len(chunk) <= config.max_chunk_chars
    # All words, in order, none split but the one longer than the limit.
    assert " ".join(chunks[:-2]).split() == text.split()[:-1]
    assert chunks[-2:] == ["x" * 250, "x" * 50 + "."]
    # The same chunks when streamed in token-sized pieces.
    assert feed(random_pieces(text, seed=99, max_len=12), config) == chunks


# --------------------------------------------------------------------------- #
# Scripts without spaces
# --------------------------------------------------------------------------- #

_ZH = "我们今天去公园散步，天气非常好。你想一起来吗？我觉得会很有意思！然后我们可以去吃饭、喝茶，再回家休息。"
_JA = "今日はとてもいい天気ですね。明日は雨が降るかもしれませんが、週末は晴れるでしょう。「本当に？」と彼は聞いた。"
_TH = "สวัสดีครับ วันนี้อากาศดีมาก เราไปเดินเล่นที่สวนสาธารณะกันไหม ผมคิดว่าจะสนุกมาก"

SCRIPT_CASES: list[tuple[str, str, list[str]]] = [
    (
        "chinese",
        _ZH,
        [
            "我们今天去公园散步，",
            "天气非常好。你想一起来吗？我觉得会很有意思！",
            "然后我们可以去吃饭、喝茶，再回家休息。",
        ],
    ),
    (
        "japanese-brackets-stay-with-their-sentence",
        _JA,
        [
            "今日はとてもいい天気ですね。",
            "明日は雨が降るかもしれませんが、週末は晴れるでしょう。",
            "「本当に？」と彼は聞いた。",
        ],
    ),
    (
        "thai-space-separates-phrases",
        _TH,
        ["สวัสดีครับ วันนี้อากาศดีมาก", "เราไปเดินเล่นที่สวนสาธารณะกันไหม ผมคิดว่าจะสนุกมาก"],
    ),
    (
        "ascii-punctuation-straight-after-han",
        "你好,我是小明.今天我们去公园吧!好不好?",
        ["你好,我是小明.", "今天我们去公园吧!好不好?"],
    ),
    (
        "chinese-too-short-first-clause-waits",
        "你好，我是小明。今天天气很好，我们去公园吧。",
        ["你好，我是小明。", "今天天气很好，我们去公园吧。"],
    ),
    (
        "full-width-forms",
        "真的吗？！太好了．我们走吧；好的：出发，现在。",
        # Three Han characters are one and a half words: too few for a first chunk.
        ["真的吗？！太好了．", "我们走吧；好的：出发，现在。"],
    ),
    (
        "hindi-danda",
        "नमस्ते, आप कैसे हैं? मैं ठीक हूँ। आज मौसम बहुत अच्छा है।",
        ["नमस्ते, आप कैसे हैं?", "मैं ठीक हूँ। आज मौसम बहुत अच्छा है।"],
    ),
    (
        "arabic-punctuation",
        "مرحبا، كيف حالك؟ أنا بخير. الطقس جميل اليوم.",
        ["مرحبا، كيف حالك؟", "أنا بخير. الطقس جميل اليوم."],
    ),
    (
        "chinese-without-punctuation-first-chunk-by-characters",
        "我们今天去公园散步天气非常好你想一起来吗",
        ["我们今天去公园散步天气非常好你想", "一起来吗"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in SCRIPT_CASES], ids=[c[0] for c in SCRIPT_CASES])
def test_scripts_without_spaces_are_cut_at_their_punctuation(text: str, expected: list[str]) -> None:
    assert split_text(text) == expected
    assert feed(list(text)) == expected
    for seed in range(3):
        assert feed(random_pieces(text, seed)) == expected


@pytest.mark.parametrize(
    ("text", "n_chars"),
    [
        ("我们今天去公园散步，天气非常好。", 640),
        ("今日はとてもいい天気ですね。明日は雨かもしれません、", 600),
        ("สวัสดีครับ วันนี้อากาศดีมาก เราไปเดินเล่นที่สวนกันไหม ", 500),
    ],
    ids=["chinese-640", "japanese-600", "thai-500"],
)
def test_long_replies_without_spaces_stream_in_chunks(text: str, n_chars: int) -> None:
    reply = (text * (n_chars // len(text) + 1))[:n_chars]
    config = ChunkerConfig()
    chunker = AdaptiveChunker(config)
    streamed: list[str] = []
    for i in range(0, len(reply), 4):
        streamed.extend(chunker.push(reply[i : i + 4]))
    # The first chunk is out long before the turn ends, and it is a short one.
    assert streamed and len(streamed[0]) <= 40
    chunks = streamed + chunker.flush()
    assert len(chunks) >= 5
    assert "".join(chunks).replace(" ", "") == reply.replace(" ", "")
    # Wide characters count twice against the limit, as they take longer to say.
    assert all(sum(2 if "\u3040" <= c <= "\u9fff" else 1 for c in ch) <= config.max_chunk_chars for ch in chunks)
    assert chunker.hard_cuts == 0


def test_wide_characters_count_twice_against_the_limit() -> None:
    config = ChunkerConfig(max_chunk_chars=20, min_chunk_chars=4)
    # Ten Han characters fill the limit; the eleventh starts the next chunk.
    assert split_text("一二三四五六七八九十" * 3, config) == ["一二三四五六七八九十"] * 3
    assert split_text("一二三四五六七八九十ab", config) == ["一二三四五六七八九十", "ab"]


# --------------------------------------------------------------------------- #
# Unbreakable runs: cut at the limit on a grapheme boundary
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "unit",
    [
        "e\u0301",  # e + combining acute
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family: a ZWJ sequence
        "\U0001f1eb\U0001f1f7",  # a flag: two regional indicators
        "\U0001f44d\U0001f3fd",  # thumbs up with a skin tone
        "\u0e01\u0e35\u0e48",  # Thai consonant + vowel + tone mark
    ],
    ids=["combining-mark", "zwj-sequence", "flag", "skin-tone", "thai-marks"],
)
def test_unbreakable_run_is_cut_on_grapheme_boundaries(unit: str) -> None:
    import regex

    text = unit * 300
    config = ChunkerConfig()
    for chunks in (split_text(text, config), feed(random_pieces(text, 7), config), feed(list(text), config)):
        assert "".join(chunks) == text
        assert len(chunks) > 2
        for chunk in chunks:
            assert len(chunk) <= config.max_chunk_chars
            assert regex.findall(r"\X", chunk) == [unit] * (len(chunk) // len(unit)), chunk[:12]


@pytest.mark.parametrize(
    "run",
    [
        "https://example.com/" + "a1b2c3/" * 1500,
        "QUJD" * 2500,  # base64
        "<" * 10_000,
        "Dr." * 3000,
        "9" * 10_000,
    ],
    ids=["url", "base64", "angle-brackets", "titles", "digits"],
)
def test_runs_longer_than_the_model_s_room_become_bounded_chunks(run: str) -> None:
    config = ChunkerConfig()
    chunks = split_text("Here it is: " + run + " That was it.", config)
    assert all(len(c) <= config.max_chunk_chars for c in chunks)
    assert "".join("".join(chunks).split()) == "".join(("Here it is: " + run + " That was it.").split())


def test_hard_cut_is_logged_once_per_turn(caplog: pytest.LogCaptureFixture) -> None:
    from loguru import logger

    messages: list[str] = []
    handler = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        chunker = AdaptiveChunker(ChunkerConfig(max_chunk_chars=20, min_chunk_chars=5))
        chunker.push("x" * 100)
        chunker.flush()
        chunker.push("y" * 100)
        chunker.flush()
    finally:
        logger.remove(handler)
    cuts = [m for m in messages if "without a word boundary" in m]
    assert len(cuts) == 2  # one per turn, not one per cut (4 cuts each)


def test_hard_cut_never_splits_a_tag() -> None:
    config = ChunkerConfig(max_chunk_chars=30, min_chunk_chars=5)
    text = "x" * 26 + "<laugh>" + "y" * 10
    assert split_text(text, config) == ["x" * 26, "<laugh>" + "y" * 10]


def test_whitespace_runs_are_capped() -> None:
    chunker = AdaptiveChunker()
    assert chunker.push("Hello") == []
    for _ in range(2500):
        assert chunker.push("    ") == []
    # The buffer did not grow with the whitespace.
    assert len(chunker.pending) <= len("Hello") + MAX_WHITESPACE_RUN
    chunks = chunker.push("\n" + " " * 100 + "world") + chunker.flush()
    assert chunks == ["Hello" + " " * MAX_WHITESPACE_RUN + "\nworld"]


def test_newline_in_a_capped_run_still_starts_a_line() -> None:
    # "1." after a newline is a list marker (no cut after it), even when the
    # newline comes after a long run of spaces.
    text = "Here are your options:" + " " * 100 + "\n1. Take the bus and go home now please"
    assert split_text(text) == ["Here are your options:", "1. Take the bus and go home now please"]


# --------------------------------------------------------------------------- #
# Cost: linear in the input for every kind of run, however it is fed
# --------------------------------------------------------------------------- #

_RUNS = {
    "letters": "a",
    "angle-brackets": "<",
    "titles": "Dr. ",
    "initials": "J. ",
    "digits": "7",
    "number-commas": "1,",
    "periods": ".",
    "spaces": " ",
    "newlines": "\n",
    "em-dashes": "\u2014",
    "han": "\u4f60",
    "han-commas": "\u4f60\uff0c",
    "thai": "\u0e01\u0e35",
    "emoji": "\U0001f44d\U0001f3fd",
    "combining": "e\u0301",
    "open-tags": "<ab ",
    "tags": "<laugh>",
    "words": "hello ",
    "short-sentences": "Go. ",
    "clauses": "yes, ",
}


def _cost(text: str, piece: int) -> int:
    chunker = AdaptiveChunker()
    for i in range(0, len(text), piece):
        chunker.push(text[i : i + piece])
    chunker.flush()
    return chunker.chars_examined


@pytest.mark.parametrize("unit", list(_RUNS.values()), ids=list(_RUNS))
@pytest.mark.parametrize("piece", [1, 4, 10_000_000], ids=["chars", "4-chars", "whole"])
def test_cost_per_character_is_bounded(unit: str, piece: int) -> None:
    small = (unit * (2000 // len(unit) + 1))[:2000]
    large = (unit * (8000 // len(unit) + 1))[:8000]
    cost_small, cost_large = _cost(small, piece), _cost(large, piece)
    # x4 input costs at most about x5 (a quadratic scan costs x16) ...
    assert cost_large <= 5 * cost_small, (cost_small, cost_large)
    # ... and each character is examined a bounded number of times.
    assert cost_large <= 1000 * len(large), cost_large


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
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChunkerConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_chunk_chars": 250.0},
        {"first_chunk_min_words": True},
        {"min_chunk_chars": "40"},
        {"first_chunk_max_words": None},
    ],
)
def test_config_type_errors_name_the_field(kwargs: dict[str, object]) -> None:
    (name,) = kwargs
    with pytest.raises(TypeError, match=f"ChunkerConfig.{name} must be an int"):
        ChunkerConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("config", [{"max_chunk_chars": 100}, 250, "default"])
def test_chunker_refuses_a_config_that_is_not_a_chunker_config(config: object) -> None:
    with pytest.raises(TypeError, match="must be a ChunkerConfig"):
        AdaptiveChunker(config)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a ChunkerConfig"):
        split_text("Hello there.", config)  # type: ignore[arg-type]


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
    # A "<" that may still open a tag holds the decision until the flush.
    ready = await _aggregate(aggregator, ["Hi there my friend. ", "and y", "y" * 8, " <abcdefg"])
    assert [a.text for a in ready] == ["Hi there my friend."]
    remaining = await aggregator.flush()
    # The rest comes back as one aggregation (22 > 20 chars); the service splits it again.
    assert remaining is not None and remaining.text == "and " + "y" * 9 + " <abcdefg"


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
