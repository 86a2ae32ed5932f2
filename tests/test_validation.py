"""Wrong types and values are refused at construction, naming the field and what it takes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from pipecat_localtts import LocalTTSService
from pipecat_localtts.chunking import ChunkerConfig
from pipecat_localtts.engine.sampling import GenerationParams

NAN, INF = math.nan, math.inf

GENERATION_PARAMS_BAD = [
    # field, value, exception, message fragment
    ("temperature", "0.6", TypeError, "temperature must be a finite number >= 0"),
    ("temperature", None, TypeError, "temperature must be a finite number >= 0"),
    ("temperature", True, TypeError, "temperature must be a finite number >= 0"),
    ("temperature", NAN, ValueError, "temperature must be a finite number >= 0"),
    ("temperature", INF, ValueError, "temperature must be a finite number >= 0"),
    ("temperature", -0.1, ValueError, "temperature must be >= 0"),
    ("top_p", "0.8", TypeError, "top_p must be a finite number in (0, 1]"),
    ("top_p", True, TypeError, "top_p must be a finite number in (0, 1]"),
    ("top_p", NAN, ValueError, "top_p must be a finite number in (0, 1]"),
    ("top_p", 0, ValueError, "top_p must be in (0, 1]"),
    ("top_p", 1.5, ValueError, "top_p must be in (0, 1]"),
    ("top_k", 1.5, TypeError, "top_k must be an int >= 0 (0 = no limit)"),
    ("top_k", True, TypeError, "top_k must be an int >= 0 (0 = no limit)"),
    ("top_k", -1, ValueError, "top_k must be >= 0 (0 = no limit)"),
    ("repetition_penalty", "1.3", TypeError, "repetition_penalty must be a finite number >= 1"),
    ("repetition_penalty", INF, ValueError, "repetition_penalty must be a finite number >= 1"),
    ("repetition_penalty", NAN, ValueError, "repetition_penalty must be a finite number >= 1"),
    ("repetition_penalty", 0.9, ValueError, "repetition_penalty must be >= 1"),
    ("seed", "1", TypeError, "seed must be an int in [-2**63, 2**64) or None"),
    ("seed", 1.0, TypeError, "seed must be an int in [-2**63, 2**64) or None"),
    ("seed", True, TypeError, "seed must be an int in [-2**63, 2**64) or None"),
    ("seed", 2**64, ValueError, "seed must be in [-2**63, 2**64) or None"),
    ("seed", -(2**63) - 1, ValueError, "seed must be in [-2**63, 2**64) or None"),
    ("constrain_audio_tokens", 1, TypeError, "constrain_audio_tokens must be a bool"),
    ("constrain_audio_tokens", "yes", TypeError, "constrain_audio_tokens must be a bool"),
    ("constrain_audio_tokens", None, TypeError, "constrain_audio_tokens must be a bool"),
    ("guard_seconds_per_char", INF, ValueError, "guard_seconds_per_char must be a finite number > 0"),
    ("guard_seconds_per_char", -INF, ValueError, "guard_seconds_per_char must be a finite number > 0"),
    ("guard_seconds_per_char", NAN, ValueError, "guard_seconds_per_char must be a finite number > 0"),
    ("guard_seconds_per_char", "0.15", TypeError, "guard_seconds_per_char must be a finite number > 0"),
    ("guard_seconds_per_char", 0, ValueError, "guard_seconds_per_char must be > 0"),
    ("guard_min_seconds", NAN, ValueError, "guard_min_seconds must be a finite number > 0"),
    ("guard_min_seconds", INF, ValueError, "guard_min_seconds must be a finite number > 0"),
    ("guard_min_seconds", False, TypeError, "guard_min_seconds must be a finite number > 0"),
    ("guard_min_seconds", -1.0, ValueError, "guard_min_seconds must be > 0"),
    ("max_tokens", 2048.0, TypeError, "max_tokens must be an int >= 7"),
    ("max_tokens", True, TypeError, "max_tokens must be an int >= 7"),
    ("max_tokens", "2048", TypeError, "max_tokens must be an int >= 7"),
    ("max_tokens", INF, TypeError, "max_tokens must be an int >= 7"),
    ("max_tokens", None, TypeError, "max_tokens must be an int >= 7"),
    ("max_tokens", 6, ValueError, "max_tokens must allow at least one frame (>= 7)"),
]


@pytest.mark.parametrize(("field", "value", "error", "fragment"), GENERATION_PARAMS_BAD)
def test_generation_params_refuse_bad_values(field, value, error, fragment):
    with pytest.raises(error, match=re.escape(fragment)):
        GenerationParams(**{field: value})


def test_every_generation_params_field_is_checked():
    fields = set(GenerationParams.__dataclass_fields__)
    assert {row[0] for row in GENERATION_PARAMS_BAD} == fields


def test_generation_params_accept_good_values_including_ints_for_floats():
    p = GenerationParams(
        temperature=0, top_p=1, top_k=50, repetition_penalty=1, seed=0, constrain_audio_tokens=False,
        guard_seconds_per_char=1, guard_min_seconds=3, max_tokens=7,
    )
    assert (p.temperature, p.top_p, p.repetition_penalty, p.max_tokens) == (0, 1, 1, 7)
    assert GenerationParams(seed=-1).seed == -1 and GenerationParams(seed=2**64 - 1).seed == 2**64 - 1
    assert GenerationParams(seed=None).seed is None
    assert GenerationParams(temperature=np.float32(0.5), top_p=np.float64(0.9)).top_p == 0.9
    GenerationParams()  # the defaults


SERVICE_BAD = [
    # constructor argument, value, exception, message fragment
    ("params", {}, TypeError, "params must be a GenerationParams or None"),
    ("params", {"seed": 1}, TypeError, "params must be a GenerationParams or None"),
    ("chunking", {}, TypeError, "chunking must be a ChunkerConfig or None"),
    ("chunking", {"max_chunk_chars": 100}, TypeError, "chunking must be a ChunkerConfig or None"),
    ("frames_per_decode", True, TypeError, "frames_per_decode must be an int >= 1"),
    ("frames_per_decode", 2.0, TypeError, "frames_per_decode must be an int >= 1"),
    ("frames_per_decode", "1", TypeError, "frames_per_decode must be an int >= 1"),
    ("frames_per_decode", 0, ValueError, "frames_per_decode must be >= 1"),
    ("edge_fade_ms", NAN, ValueError, "edge_fade_ms must be a finite number >= 0"),
    ("edge_fade_ms", INF, ValueError, "edge_fade_ms must be a finite number >= 0"),
    ("edge_fade_ms", "5", TypeError, "edge_fade_ms must be a finite number >= 0"),
    ("edge_fade_ms", True, TypeError, "edge_fade_ms must be a finite number >= 0"),
    ("edge_fade_ms", -1, ValueError, "edge_fade_ms must be >= 0"),
    ("max_batch", 1.0, TypeError, "max_batch must be an int >= 1 or None"),
    ("max_batch", True, TypeError, "max_batch must be an int >= 1 or None"),
    ("max_batch", 0, ValueError, "max_batch must be >= 1"),
    ("voice", 5, TypeError, "voice must be a voice name (str) or None"),
    ("voice", b"tara", TypeError, "voice must be a voice name (str) or None"),
    ("voices", "tara", TypeError, "voices must be a sequence of voice names (str), a mapping"),
    ("voices", [1, 2], TypeError, "voices must be a sequence of voice names (str), a mapping"),
    ("voices", {}, TypeError, "voices must map voice names (str) to references"),
    ("model", None, TypeError, "model must be a hub id or directory (str or os.PathLike) or a loaded model"),
    ("model", 5, TypeError, "model must be a hub id or directory (str or os.PathLike) or a loaded model"),
    ("model", b"models/orpheus", TypeError, "model must be a hub id or directory"),
    ("model", "", ValueError, "model must be a hub id or directory"),
]


@pytest.mark.parametrize(("argument", "value", "error", "fragment"), SERVICE_BAD)
def test_service_refuses_bad_constructor_values(argument, value, error, fragment):
    with pytest.raises(error, match=re.escape(fragment)):
        LocalTTSService(**{argument: value})


def test_service_accepts_good_constructor_values():
    service = LocalTTSService(
        model=Path("models") / "orpheus",
        voice="leo",
        voices=["tara", "leo"],
        params=GenerationParams(seed=1),
        chunking=ChunkerConfig(),
        frames_per_decode=2,
        max_batch=4,
        edge_fade_ms=0,  # an int where a float is meant
    )
    assert service._settings.model == str(Path("models") / "orpheus")
    assert service._params.seed == 1 and service._edge_fade_ms == 0
    for max_batch in (None, 1, 64):
        LocalTTSService(max_batch=max_batch, edge_fade_ms=2.5, params=None, chunking=None)
