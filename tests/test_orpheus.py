"""Orpheus adapter: prompt ids, token->code mapping, voices, guard, loading."""

from __future__ import annotations

import time

import pytest

from pipecat_localtts.errors import ModelLoadError, UnknownVoiceError
from pipecat_localtts.models import orpheus as o
from pipecat_localtts.models.orpheus import OrpheusFrameParser, frame_to_tokens
from pipecat_localtts.testing import save_orpheus, tiny_orpheus


@pytest.fixture(scope="module")
def model():
    return tiny_orpheus(seed=0)


def test_constants_match_the_orpheus_layout():
    # Hand-checked against the Orpheus release: <custom_token_N> is 128256 + N and the first
    # audio token is <custom_token_10>.
    assert o.AUDIO_TOKEN_BASE == o.CUSTOM_TOKEN_BASE + 10 == 128266
    assert (o.START_OF_SPEECH, o.END_OF_SPEECH) == (128257, 128258)
    assert (o.START_OF_HUMAN, o.END_OF_HUMAN, o.START_OF_AI) == (128259, 128260, 128261)
    # The last audio token fits in the vocabulary.
    assert o.AUDIO_TOKEN_BASE + 7 * 4096 - 1 < o.VOCAB_SIZE


def test_prompt_ids_wrap_voice_and_text_in_the_speech_header(model):
    ids = model.build_prompt("Hi there", "tara")
    # The tiny tokenizer is byte level: "tara: Hi there" is its UTF-8 bytes.
    text_ids = [116, 97, 114, 97, 58, 32, 72, 105, 32, 116, 104, 101, 114, 101]
    assert ids == [128259, 128000, *text_ids, 128009, 128260, 128261, 128257]
    assert model.tokenizer.decode(ids[2:-4]) == "tara: Hi there"


def test_emotive_tags_pass_through_to_the_model_verbatim(model):
    ids = model.build_prompt("Well <laugh> that is funny", "leo")
    assert model.tokenizer.decode(ids[2:-4]) == "leo: Well <laugh> that is funny"


def test_unknown_voice_is_a_clear_error(model):
    with pytest.raises(UnknownVoiceError, match="unknown voice 'bob'.*tara"):
        model.build_prompt("Hello", "bob")


def test_token_to_code_mapping_hand_computed():
    # One frame: slot s holds code (10 * (s + 1)); the Orpheus interleaving is
    # [c0, c1_0, c2_0, c2_1, c1_1, c2_2, c2_3].
    tokens = [128276, 132382, 136488, 140594, 144700, 148806, 152912]
    parser = OrpheusFrameParser()
    out = [parser.push(t) for t in tokens]
    assert out[:6] == [None] * 6
    #             c0  c1_0 c1_1 c2_0 c2_1 c2_2 c2_3
    assert out[6] == (10, 20, 50, 30, 40, 60, 70)
    assert frame_to_tokens(out[6]) == tokens


def test_code_zero_and_top_code_are_valid():
    parser = OrpheusFrameParser()
    zero = [o.AUDIO_TOKEN_BASE + 4096 * slot for slot in range(7)]
    assert [parser.push(t) for t in zero][-1] == (0,) * 7
    top = [o.AUDIO_TOKEN_BASE + 4096 * slot + 4095 for slot in range(7)]
    assert [parser.push(t) for t in top][-1] == (4095,) * 7
    assert parser.dropped_frames == 0 and parser.frames == 2


@pytest.mark.parametrize(
    "bad_token",
    [
        o.AUDIO_TOKEN_BASE + 4096 * 2 + 4096,  # code 4096 of its slot = next slot's code 0
        o.AUDIO_TOKEN_BASE + 4096 * 2 - 1,  # previous slot's last code
        o.END_OF_TEXT,  # a text token
        o.VOCAB_SIZE - 1,  # beyond the seventh slot
    ],
)
def test_bad_token_drops_only_its_frame_and_never_shifts_later_parsing(bad_token):
    good1, good2 = (1, 2, 3, 4, 5, 6, 7), (0, 4095, 17, 0, 9, 100, 2)
    tokens = frame_to_tokens(good1) + frame_to_tokens(good1) + frame_to_tokens(good2)
    tokens[7 + 2] = bad_token  # slot 2 of the second frame
    parser = OrpheusFrameParser()
    frames = [f for f in (parser.push(t) for t in tokens) if f is not None]
    assert frames == [good1, good2]
    assert parser.dropped_frames == 1 and parser.position == 21


def test_token_budget_is_proportional_to_text_and_whole_frames(model):
    kw = dict(seconds_per_char=0.15, min_seconds=2.0, max_tokens=4096)
    short = model.token_budget("Hi.", **kw)
    medium = model.token_budget("x" * 100, **kw)
    long = model.token_budget("x" * 200, **kw)
    assert short % 7 == medium % 7 == long % 7 == 0
    assert short == 24 * 7  # 2 s floor = 23.4 frames -> 24
    assert long > medium > short
    assert abs(long / medium - 2) < 0.05
    assert model.token_budget("x" * 10_000, **kw) == 4095  # capped, whole frames (585 * 7)
    # A tag is not read out letter by letter, but it makes time.
    assert model.token_budget("<laugh>", **kw) == model.token_budget("", **kw)
    assert model.token_budget("a <laugh> " + "x" * 40, **kw) > model.token_budget("a " + "x" * 40, **kw)


def test_load_from_local_directory_gives_the_same_model(tmp_path, model):
    import torch

    save_orpheus(model, tmp_path / "ckpt")
    loaded = o.load_orpheus(str(tmp_path / "ckpt"), device="cpu")
    ids = model.build_prompt("Hello", "tara")
    assert loaded.build_prompt("Hello", "tara") == ids
    with torch.inference_mode():
        a = model.lm(input_ids=torch.tensor([ids])).logits
        b = loaded.lm(input_ids=torch.tensor([ids])).logits
    torch.testing.assert_close(a, b)
    frames = [[1, 2, 3, 4, 5, 6, 7]] * 5
    assert (model.codec.decode(frames) == loaded.codec.decode(frames)).all()


def test_unreachable_hub_id_is_a_clear_load_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        o.load_orpheus("canopylabs/no-such-orpheus-model", device="cpu")
    assert time.perf_counter() - t0 < 30
    message = str(info.value)
    assert "canopylabs/no-such-orpheus-model" in message and "--model DIR" in message
