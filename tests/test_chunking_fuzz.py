"""Fuzz test of the chunker: thousands of random texts of every nasty kind.

Each text is fed whole, char by char and in random pieces, under three configurations. For
every one: the same chunks however it was fed, nothing lost or added but whitespace, chunks
stripped and within the limit, and a cost (characters examined) linear in the input.

``LOCALTTS_FUZZ_ROUNDS=20000 bash scripts/test.sh tests/test_chunking_fuzz.py`` runs a longer
version (default 2000 texts per configuration).
"""

from __future__ import annotations

import os
import random
import unicodedata

import pytest

from pipecat_localtts.chunking import AdaptiveChunker, ChunkerConfig

ROUNDS = int(os.environ.get("LOCALTTS_FUZZ_ROUNDS", "2000"))

_ATOMS = [
    # words, numbers, abbreviations, tags
    "Hello", "world", "I", "3.14", "1,000", "$2.50", "10:30", "1990\u20142000", "25.5%",
    "Dr.", "Mr.", "e.g.", "U.S.", "J.", "etc.", "vs.", "a.m.", "1.", "12.",
    "<laugh>", "<long sigh>", "<", ">", "<|eot_id|>", "<custom_token_5>", "<unclosed",
    # punctuation
    ",", ".", "!", "?", "...", "\u2026", "\u2014", "\u2013", " - ", ":", ";", '"', ")", "(", "'",
    "?!", "!!!", "\u00bf", "\u00a1", "*", "**bold**", "`code`", "#", "-",
    # whitespace and control characters
    "\n", "\n\n", "\r\n", "\t", "\u00a0", "\u2028", "\x00", "\x07", "\u200b", "   ",
    # other scripts
    "\u4f60\u597d", "\u6211\u4eec\u53bb\u516c\u56ed", "\u3002", "\uff0c", "\u3001", "\uff01",
    "\uff1f", "\uff1b", "\uff1a", "\u300c", "\u300d", "\u3053\u3093\u306b\u3061\u306f",
    "\u30ab\u30bf\u30ab\u30ca", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35", "\u0e2f",
    "\u0645\u0631\u062d\u0628\u0627", "\u060c", "\u061f", "\u05e9\u05dc\u05d5\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947", "\u0964", "\uc548\ub155\ud558\uc138\uc694",
    "\u041f\u0440\u0438\u0432\u0435\u0442", "caf\u00e9", "e\u0301", "\u0338",
    # emoji
    "\U0001f600", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f1eb\U0001f1f7",
    "\U0001f44d\U0001f3fd", "\u2764\ufe0f",
]  # fmt: skip

_GIANTS = [
    "x" * 300,
    "<" * 300,
    "https://example.com/" + "path/" * 60,
    "QUJD" * 80,
    "9" * 300,
    "Dr. " * 80,
    "\u4f60" * 300,
    "\u0e01\u0e35" * 200,
    " " * 500,
    "\n" * 200,
    "\U0001f600" * 200,
    "e\u0301" * 200,
]

CONFIGS = {
    "default": ChunkerConfig(),
    "small": ChunkerConfig(first_chunk_min_words=1, first_chunk_max_words=3, min_chunk_chars=10, max_chunk_chars=30),
    "tiny-limit": ChunkerConfig(first_chunk_min_words=1, first_chunk_max_words=1, min_chunk_chars=0, max_chunk_chars=3),
}


def _random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 40)):
        parts.append(rng.choice(_GIANTS) if rng.random() < 0.03 else rng.choice(_ATOMS))
        parts.append(rng.choice(["", "", " ", " ", " ", "\n"]))
    return "".join(parts)


def _pieces(text: str, rng: random.Random, max_len: int) -> list[str]:
    out, i = [], 0
    while i < len(text):
        step = rng.randint(1, max_len)
        out.append(text[i : i + step])
        i += step
    return out


def _feed(pieces: list[str], config: ChunkerConfig) -> tuple[list[str], int]:
    chunker = AdaptiveChunker(config)
    chunks: list[str] = []
    for piece in pieces:
        chunks.extend(chunker.push(piece))
    chunks.extend(chunker.flush())
    return chunks, chunker.chars_examined


def _width(text: str) -> int:
    # The chunker's limits count East Asian wide and full-width characters twice.
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_random_texts_chunk_the_same_however_fed(name: str) -> None:
    config = CONFIGS[name]
    for seed in range(ROUNDS):
        rng = random.Random(seed)
        text = _random_text(rng)
        whole, cost = _feed([text], config)
        assert _feed(list(text), config)[0] == whole, (seed, text)
        pieces, pieces_cost = _feed(_pieces(text, rng, rng.choice([3, 12, 40])), config)
        assert pieces == whole, (seed, text)
        # Nothing lost or added but whitespace; chunks stripped, non-empty, in the limit.
        assert "".join("".join(whole).split()) == "".join(text.split()), (seed, text)
        for chunk in whole:
            assert chunk and chunk == chunk.strip(), (seed, chunk)
            assert _width(chunk) <= config.max_chunk_chars, (seed, chunk)
        # Cost linear in the input, whole or in pieces (each push copies what is pending).
        assert cost <= 20 * len(text) + 100, (seed, cost, len(text))
        assert pieces_cost <= 200 * len(text) + 1000, (seed, pieces_cost, len(text))
