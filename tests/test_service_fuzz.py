"""Hostile text through a real pipeline: no input may crash, hang or fail the service.

First the guarantees one by one (every prompt fits the engine's prompt budget, lone
surrogates are harmless), then the fuzz: a fixed corpus of nasty inputs and seeded random
ones, each sent both as a ``TTSSpeakFrame`` and streamed as ``LLMTextFrame``s of random
sizes in an LLM turn, then a normal sentence that must still be spoken.

The default run (about 200 inputs, each both ways) takes a minute or two on two CPU cores.
A longer run: ``LOCALTTS_FUZZ_INPUTS=5000 LOCALTTS_FUZZ_SEED=7 pytest tests/test_service_fuzz.py``
(``LOCALTTS_FUZZ_INPUTS`` random inputs besides the corpus; the seed picks them).
"""

from __future__ import annotations

import os
import random
from collections import deque

import pytest
from live_pipeline import LivePipeline, streamed_turn
from loguru import logger
from pipecat.frames.frames import (
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSTextFrame,
)

from pipecat_localtts import LocalTTSService
from pipecat_localtts.chunking import ChunkerConfig, text_width
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.models.orpheus import OrpheusModel
from pipecat_localtts.testing import tiny_orpheus

# Every utterance a few codec frames long: the fuzz is about text, not audio.
SHORT = GenerationParams(seed=0, guard_seconds_per_char=0.001, guard_min_seconds=0.1)
RANDOM_INPUTS = int(os.environ.get("LOCALTTS_FUZZ_INPUTS", "150"))
SEED = int(os.environ.get("LOCALTTS_FUZZ_SEED", "0"))
FINAL = "And that is all for today, thank you."
ORPHEUS_PROMPT_BUDGET = OrpheusModel.prompt_budget
pytestmark = pytest.mark.timeout(max(600, 3 * RANDOM_INPUTS))  # slow is not hung (see speak_all)


def llm_turn(text: str, rng: random.Random) -> list:
    """``text`` streamed as an LLM turn, in pieces of random sizes."""
    return streamed_turn(text, rng, max_piece=24)


async def speak_all(service: LocalTTSService, frames: list, stall: float = 30) -> LivePipeline:
    """Send ``frames``, then FINAL; return the pipeline once FINAL has been spoken. Nothing
    coming out for ``stall`` seconds on the way is a hang."""
    async with LivePipeline(service) as p:
        service._request_log = deque()  # every request, not only the last 256
        for frame in frames:
            await p.send(frame)
        await p.send(TTSSpeakFrame(FINAL))

        def final_spoken() -> bool:
            return any(isinstance(f, TTSTextFrame) and f.text.strip() == FINAL for f in p.down)

        last = lambda: service.requests[-1].text if service.requests else None  # noqa: E731
        try:
            await p.until_stalled(final_spoken, stall, "the final sentence")
        except AssertionError as e:
            raise AssertionError(f"{e}; the engine's last request: {last()!r}") from None
    p.requests = list(service.requests)  # type: ignore[attr-defined]
    return p


def assert_final_sentence_spoken_last(p: LivePipeline) -> None:
    down = p.down
    final = next(f.context_id for f in down if isinstance(f, TTSTextFrame) and f.text.strip() == FINAL)
    audio = [i for i, f in enumerate(down) if isinstance(f, TTSAudioRawFrame) and f.context_id == final]
    others = [i for i, f in enumerate(down) if getattr(f, "context_id", final) not in (final, None)]
    assert audio, "the final sentence has audio"
    assert not others or max(others) < audio[0], "the final sentence comes after every input"


# ---------------------------------------------------------------------- prompt budget


class _Records:
    """Loguru messages at WARNING and above, while alive."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._id = logger.add(lambda m: self.messages.append(m.record["message"]), level="WARNING")

    def close(self) -> None:
        logger.remove(self._id)


@pytest.mark.parametrize(
    "text",
    [
        "\U0001d400\U0001d401\U0001d402" * 80,  # 240 math letters, no space: 4 tokens each
        "a\U0001d400\U0001d400 " * 60,  # words of them with spaces: split at a space
        "\u16a0\u16a2\u16a6" * 83,  # 249 runic letters: 3 byte-level tokens each
    ],
    # (Wide characters such as Han count twice against max_chunk_chars, so the chunker
    # already keeps their prompts within the budget; these narrow ones it cannot.)
    ids=["math-letters", "math-words", "runic"],
)
async def test_a_chunk_within_max_chunk_chars_whose_prompt_is_too_long_is_split_to_fit(text):
    assert text_width(text) <= ChunkerConfig().max_chunk_chars
    model = tiny_orpheus()
    assert len(model.build_prompt(text, "tara")) > ORPHEUS_PROMPT_BUDGET
    logs = _Records()
    try:
        p = await speak_all(LocalTTSService(model=model, params=SHORT), [TTSSpeakFrame(text)])
    finally:
        logs.close()
    assert not p.errors, [e.error for e in p.errors]
    spoken = [r for r in p.requests if r.text != FINAL]
    assert len(spoken) > 1 and all(len(r.prompt_ids) <= ORPHEUS_PROMPT_BUDGET for r in spoken)
    assert "".join(r.text for r in spoken).replace(" ", "") == text.replace(" ", "")  # all of it
    assert all(r.finish_reason in ("stop", "length") and r.audio_samples for r in p.requests)
    assert sum("split further" in m for m in logs.messages) == 1


async def test_a_prompt_larger_than_the_cache_is_no_error_and_the_split_is_logged_once_per_turn():
    # A chunker allowed long chunks: 600 rare ideographs are 2,400 prompt tokens, more than
    # the cache holds (512 + 2,048) -- the engine alone would reject it.
    text = "\U00020000" * 600 + ". " + "\U00020001" * 600 + "."
    chunking = ChunkerConfig(max_chunk_chars=1000)
    logs = _Records()
    try:
        service = LocalTTSService(model=tiny_orpheus(), params=SHORT, chunking=chunking)
        p = await speak_all(service, llm_turn(text, random.Random(0)))
    finally:
        logs.close()
    assert not p.errors, [e.error for e in p.errors]
    spoken = [r for r in p.requests if r.text != FINAL]
    assert len(spoken) >= 8 and all(len(r.prompt_ids) <= ORPHEUS_PROMPT_BUDGET for r in spoken)
    assert sum("split further" in m for m in logs.messages) == 1  # two chunks, one turn


async def test_lone_surrogates_are_spoken_around_not_failed_on():
    text = "Half a pair \ud83d here, a whole one split \ud83d\ude00 there, and \udfff."
    with pytest.raises(UnicodeEncodeError):
        text.encode("utf-8")  # what the tokenizer would choke on
    p = await speak_all(LocalTTSService(model=tiny_orpheus(), params=SHORT), [TTSSpeakFrame(text)])
    assert not p.errors, [e.error for e in p.errors]
    (request, _) = p.requests
    assert request.text.startswith("Half a pair \ufffd here") and "\U0001f600" in request.text
    assert_final_sentence_spoken_last(p)


# ---------------------------------------------------------------------- fuzz

NASTY = [
    "",
    " ",
    "\n\n\t  \r\n",
    "...",
    "?!?!",
    "— – ‒ ― ,;:",
    "😀🎉👍",
    "👩‍👩‍👧‍👦👨🏽‍💻🏳️‍🌈🧑🏿‍🤝‍🧑🏻",
    "a" + "\u0301" * 300,  # one grapheme of 301 code points
    "Z̸̧̛̖̗̘͙͚͛͆̾a̶̡̛͉̠̳l̷̰̀g̸̱͐o̷̫͂",
    "مرحبا بك في عالمنا، كيف حالك اليوم؟",
    "שלום עולם, מה שלומך?",
    "English then עברית then English \u202e reversed \u202c back",
    "这是一个没有空格的很长的中文句子它会一直持续下去直到结束为止" * 10,
    "日本語のテキストは句読点で区切られます。これは二番目の文です。",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำเลยแม้แต่น้อย" * 8,
    "https://example.com/" + "a1b2c3/" * 700,
    "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=" * 120,
    "a" * 5000,
    "<" * 5000,
    "<<<<" * 1250,
    "9" * 5000,
    "3.14159265358979323846264338327950288419716939937510" * 20,
    "-1e308 and 0x7fffffffffffffff and 1,000,000,000,000,000.00",
    "<|eot_id|>",
    "Hello <|eot_id|> there <|begin_of_text|> friend.",
    "<custom_token_5><custom_token_4100><custom_token_99999>",
    "<laugh> <sigh> <chuckle>",
    "<laugh",
    "an unclosed <tag and more < text",
    "</> <> <<>> <a href='x'>link</a>",
    "\x00",
    "before\x00after",
    "ctrl \x01\x02\x03\x07\x08\x1b[31mred\x1b[0m \x7f done",
    "\ud800",
    "lone \udc00 low and \ud83d high surrogates",
    "\ufeff\u200b\u200c\u200d\u2060 invisible",
    "\u00a0\u2003\u3000 odd spaces \u2028 line \u2029 para",
    "**bold** _it_ `code` ~~strike~~",
    "# Heading\n\n- item one\n- item two\n\n```python\nprint('x')\n```",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "[link](http://example.com) ![img](x.png)",
    "\\n\\t\\\\ escaped",
    "' OR 1=1; DROP TABLE users; --",
    "{{template}} ${var} %s %d {0}",
    "ﷺ ﷽ ꧅ ௵ 𒐫",
    "𝕳𝖊𝖑𝖑𝖔 𝔀𝓸𝓻𝓵𝓭",
    "\U0001f1fa\U0001f1f8\U0001f1ef\U0001f1f5" * 60,
    "Ok.",
    "a",
    "I",
]

_POOLS = [
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789.,-+%$",
    " \t\n",
    ".,;:!?…—\"'()[]{}",
    "😀🎉👍🔥❤️🇺🇸",
    "\u200d\u0301\u0308\u20e3\ufe0f",
    "مرحباשלום",
    "漢字中文日本語ひらがなカタカナ한국어",
    "ภาษาไทย",
    "<>|/\\*_#`~",
    "\x00\x01\x1b\x7f",
    "\ud800\udfff",
]


def random_text(rng: random.Random) -> str:
    """A random mix of a few character pools; now and then a very long one."""
    length = rng.choice([0, 1, 2, 5, 20, 60, 200, 400]) if rng.random() > 0.03 else 5000
    pools = rng.sample(_POOLS, rng.randint(1, 3))
    return "".join(rng.choice(rng.choice(pools)) for _ in range(length))


async def test_fuzz_no_text_crashes_hangs_or_fails_the_service():
    rng = random.Random(SEED)
    inputs = NASTY + [random_text(rng) for _ in range(RANDOM_INPUTS)]
    frames = []
    for text in inputs:
        frames.append(TTSSpeakFrame(text))
        frames += llm_turn(text, rng)
    service = LocalTTSService(model=tiny_orpheus(), params=SHORT)
    p = await speak_all(service, frames)
    assert not p.errors, [e.error for e in p.errors][:5]
    assert all(r.finish_reason in ("stop", "length") for r in p.requests)
    assert all(len(r.prompt_ids) <= ORPHEUS_PROMPT_BUDGET for r in p.requests)
    assert_final_sentence_spoken_last(p)
