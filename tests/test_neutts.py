"""NeuTTS (Qwen2 + NeuCodec) through the same engine, service, CLI and server as Orpheus.

Every model here is built by the test: ``tiny_neutts()`` has NeuTTS Air's token layout (the
byte tokens, Qwen2.5's specials, the NeuTTS control tokens and the 65,536 speech tokens at
their ids), a tiny random Qwen2 and a tiny random NeuCodec decoder. Its tokenizer maps each
byte to its own id, so prompts can be computed by hand.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from live_pipeline import InterruptionAudit, LivePipeline, streamed_turn
from pipecat.frames.frames import TTSSpeakFrame

from pipecat_localtts import LocalTTSService
from pipecat_localtts.engine.batched import BatchedEngine
from pipecat_localtts.engine.request import BlockingSink
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.errors import ModelLoadError, UnknownVoiceError
from pipecat_localtts.models import neutts as n
from pipecat_localtts.models.families import family_of, load_model
from pipecat_localtts.models.orpheus import OrpheusModel
from pipecat_localtts.testing import (
    AUDAR_TOKEN_BASE,
    NEUTTS_CONTROL_BASE,
    NEUTTS_SPEECH_BASE,
    NEUTTS_VOCAB_SIZE,
    save_neutts,
    save_orpheus,
    tiny_neutts,
    tiny_orpheus,
)

ROOT = Path(__file__).resolve().parent.parent
SPF = 480  # samples per NeuCodec frame
START, END = NEUTTS_CONTROL_BASE + 1, NEUTTS_CONTROL_BASE + 2  # TEXT_PROMPT_START / _END
GEN_START, STOP = NEUTTS_CONTROL_BASE + 4, NEUTTS_CONTROL_BASE + 5
#: Streaming vs offline decode of the same codes (tiny random decoder): the bound
#: tests/test_neucodec.py documents for the default settings.
STREAM_REL_RMS_BOUND = 0.25


def byte_ids(text: str) -> list[int]:
    return list(text.encode("utf-8"))


@pytest.fixture(scope="module")
def model() -> n.NeuTTSModel:
    return tiny_neutts()


def speak(engine: BatchedEngine, text: str, params: GenerationParams, voice: str = "ref"):
    sink = BlockingSink()
    request = engine.submit(text, voice, params, sink)
    pcm = list(sink)
    return request, (np.concatenate(pcm) if pcm else np.zeros(0, np.float32))


# ------------------------------------------------------------------ token layout and prompt


def test_tiny_layout_is_neutts_air_s():
    model = tiny_neutts()
    ids = model.tokenizer.convert_tokens_to_ids
    assert ids("<|TEXT_PROMPT_START|>") == START and ids("<|TEXT_PROMPT_END|>") == END
    assert ids("<|SPEECH_GENERATION_START|>") == GEN_START
    assert ids("<|SPEECH_GENERATION_END|>") == STOP
    assert ids("<|speech_0|>") == NEUTTS_SPEECH_BASE == 151_671
    assert ids("<|speech_65535|>") == NEUTTS_VOCAB_SIZE - 1
    assert model.lm.config.vocab_size == NEUTTS_VOCAB_SIZE and model.lm.config.model_type == "qwen2"
    layout = model.token_layout
    assert layout.slot_starts == (NEUTTS_SPEECH_BASE,) and layout.width == 65_536
    assert layout.stop_tokens == (STOP,) and model.stop_tokens == {STOP}
    assert model.codec.samples_per_frame == SPF and model.sample_rate == 24_000


def test_prompt_ids_match_the_hand_computed_ones(model):
    ref = model.references["ref"]
    expected = [
        *byte_ids("user: Convert the text to speech:"), START,
        *byte_ids(f"{ref.text} Hello there."), END,
        *byte_ids("\nassistant:"), GEN_START,
        *(NEUTTS_SPEECH_BASE + c for c in ref.codes),
    ]  # fmt: skip
    assert model.build_prompt("Hello there.", "ref") == expected
    # Whitespace is normalised like the reference package's single spaces.
    assert model.build_prompt("  Hello \n there. ", "ref") == expected


def test_prompt_with_phonemes_puts_the_phonemes_of_both_texts_in_one_block():
    base = tiny_neutts()
    phonemize = lambda text: f"/{text.lower()}/"  # noqa: E731 - a stand-in with a known output
    model = n.NeuTTSModel(
        lm=base.lm, tokenizer=base.tokenizer, codec=base.codec, references=base.references, phonemize=phonemize
    )
    ref = model.references["ref"]
    block = byte_ids(f"/{ref.text.lower()}/ /hi there./")
    prompt = model.build_prompt("Hi there.", "ref")
    assert prompt[prompt.index(START) + 1 : prompt.index(END)] == block


def test_espeak_phonemes_are_the_checkpoint_s_input():
    phonemize = n.EspeakPhonemizer("en-us")
    assert phonemize("Hello world.") == "həlˈoʊ wˈɜːld."
    model = tiny_neutts(phonemes=True)
    prompt = model.build_prompt("Hello world.", "ref")
    block = bytes(prompt[prompt.index(START) + 1 : prompt.index(END)]).decode("utf-8")
    assert block.endswith(" həlˈoʊ wˈɜːld.")
    assert block.startswith(phonemize(model.references["ref"].text))


def test_missing_phonemizer_is_a_clear_error_naming_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "phonemizer.backend", None)
    with pytest.raises(ModelLoadError, match="phonemizer.*pipecat-localtts\\[neutts\\].*espeak-ng"):
        n.EspeakPhonemizer("en-us")


def test_markers_spelled_in_the_text_are_read_as_characters(model):
    prompt = model.build_prompt("Say <|SPEECH_GENERATION_END|> now.", "ref")
    assert prompt.count(STOP) == 0 and prompt.count(GEN_START) == 1
    assert bytes(b for b in prompt if b < 256).decode().endswith("Say <|SPEECH_GENERATION_END|> now.\nassistant:")


def test_a_tokenizer_that_adds_bos_starts_the_prompt_with_it(model):
    """NeuTTS Nano's Llama-3 tokenizer adds BOS, and the reference package's encode() keeps it."""
    from tokenizers import processors

    tokenizer = model.tokenizer.__class__(tokenizer_object=model.tokenizer.backend_tokenizer.__class__.from_str(
        model.tokenizer.backend_tokenizer.to_str()))  # fmt: skip
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 151_643)]
    )
    with_bos = n.NeuTTSModel(lm=None, tokenizer=tokenizer, codec=model.codec, references=model.references)
    assert with_bos.build_prompt("Hi.", "ref") == [151_643, *model.build_prompt("Hi.", "ref")]


def test_audar_prompt_keeps_reference_and_target_apart_and_stops_at_its_own_token():
    model = tiny_neutts(style="audar")
    ids = model.tokenizer.convert_tokens_to_ids
    mark = {name: ids(f"<|{name}|>") for name in (
        "REF_TEXT_START", "REF_TEXT_END", "REF_SPEECH_START", "REF_SPEECH_END",
        "TARGET_TEXT_START", "TARGET_TEXT_END", "TARGET_CODES_START", "TARGET_CODES_END",
    )}  # fmt: skip
    assert mark["REF_TEXT_START"] == AUDAR_TOKEN_BASE and model.style.name == "audar"
    ref = model.references["ref"]
    assert model.build_prompt("Hello there.", "ref") == [
        *byte_ids("user: Convert the text to speech:"),
        mark["REF_TEXT_START"], *byte_ids(ref.text), mark["REF_TEXT_END"],
        mark["REF_SPEECH_START"], *(NEUTTS_SPEECH_BASE + c for c in ref.codes), mark["REF_SPEECH_END"],
        mark["TARGET_TEXT_START"], *byte_ids("Hello there."), mark["TARGET_TEXT_END"],
        *byte_ids("\nassistant:"), mark["TARGET_CODES_START"],
    ]  # fmt: skip
    assert model.stop_tokens == {mark["TARGET_CODES_END"]} and model.token_layout.stop_tokens == (mark["TARGET_CODES_END"],)
    params = model.default_params
    assert (params.temperature, params.top_k, params.top_p, params.repetition_penalty) == (0.3, 40, 0.95, 1.1)
    # The same engine speaks it.
    engine = BatchedEngine(model, max_batch=1, max_tokens=200)
    engine.start()
    try:
        request, audio = speak(engine, "Hi.", GenerationParams(seed=0, guard_min_seconds=0.5))
    finally:
        engine.close()
    assert len(request.tokens) == 25 and audio.size == 25 * SPF


def test_audar_checkpoint_is_detected_from_its_tokenizer(tmp_path):
    save_neutts(tiny_neutts(style="audar"), tmp_path)
    assert family_of(str(tmp_path)).name == "NeuTTS"
    assert family_of("audarai/audar_tts_flash_v1_gguf").name == "NeuTTS"
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.style.name == "audar"


# ------------------------------------------------------------------ tokens -> frames


def test_speech_tokens_map_to_codes_and_anything_else_is_dropped_and_counted(model):
    parser = model.new_parser()
    assert parser.push(NEUTTS_SPEECH_BASE) == (0,)
    assert parser.push(NEUTTS_SPEECH_BASE + 65_535) == (65_535,)
    assert parser.push(NEUTTS_SPEECH_BASE - 1) is None  # the stop token is not a frame
    assert parser.push(ord("a")) is None  # text
    assert parser.push(NEUTTS_VOCAB_SIZE) is None  # past the vocabulary
    assert parser.push(NEUTTS_SPEECH_BASE + 7) == (7,)
    assert (parser.position, parser.frames, parser.dropped_frames) == (6, 3, 3)


def test_token_budget_is_one_token_per_frame_at_50_per_second(model):
    assert model.token_budget("abcd", seconds_per_char=0.5, min_seconds=1.0, max_tokens=10_000) == 100
    assert model.token_budget("a", seconds_per_char=0.5, min_seconds=1.0, max_tokens=10_000) == 50
    assert model.token_budget("a" * 100, seconds_per_char=0.5, min_seconds=1.0, max_tokens=300) == 300


# ------------------------------------------------------------------ voices


def test_voices_load_from_pt_npy_and_txt_files(tmp_path):
    torch.save(torch.tensor([1, 2, 65_535], dtype=torch.int32), tmp_path / "emily.pt")
    (tmp_path / "emily.txt").write_text("Hi, I am Emily.\n")
    np.save(tmp_path / "paul.npy", np.array([[4, 5, 6]], dtype=np.int64))
    (tmp_path / "paul.txt").write_text("And I am Paul.")
    np.save(tmp_path / "orphan.npy", np.array([1]))  # no transcript: not a voice
    voices = n.voices_in(tmp_path)
    assert voices == {
        "emily": n.NeuTTSVoice((1, 2, 65_535), "Hi, I am Emily."),
        "paul": n.NeuTTSVoice((4, 5, 6), "And I am Paul."),
    }
    assert n.load_voice([7, 8], "Plain text.") == n.NeuTTSVoice((7, 8), "Plain text.")


@pytest.mark.parametrize(
    ("codes", "text", "match"),
    [
        ([], "text", "at least one code"),
        ([65_536], "text", "outside NeuCodec's range"),
        ([-1], "text", "outside NeuCodec's range"),
        ([1, 2], "  ", "transcript"),
        (np.zeros((2, 3), np.int64), "text", "1-D array of integers"),
        (np.zeros(3, np.float32), "text", "1-D array of integers"),
        ("missing.pt", "text", "does not exist"),
    ],
)
def test_bad_references_are_clear_errors(codes, text, match):
    with pytest.raises(ValueError, match=match):
        n.load_voice(codes, text)


def test_unknown_voice_is_the_same_clear_error_as_for_orpheus(model):
    with pytest.raises(UnknownVoiceError, match="unknown voice 'tara'.*known voices: ref"):
        model.build_prompt("Hello.", "tara")
    with pytest.raises(UnknownVoiceError, match="unknown voice 'nobody'"):
        LocalTTSService(model=model, voice="nobody")


# ------------------------------------------------------------------ engine


def test_engine_speaks_frames_of_480_samples_and_stops_at_the_guard(model):
    engine = BatchedEngine(model, max_batch=2, max_tokens=400)
    engine.start()
    try:
        params = GenerationParams(seed=1, guard_seconds_per_char=0.01, guard_min_seconds=1.0)
        request, audio = speak(engine, "Hello there.", params)
    finally:
        engine.close()
    assert request.finish_reason == "length" and len(request.tokens) == 50  # 1 s at 50 frames/s
    assert all(NEUTTS_SPEECH_BASE <= t < NEUTTS_VOCAB_SIZE for t in request.tokens)
    assert audio.size == request.audio_samples == 50 * SPF


def test_the_stop_token_ends_the_utterance():
    """A head whose stop logit is raised (bias e^8.2 against 65,536 near-zero logits: about a
    5% chance a step) stops a seeded utterance after some frames, well inside its guard, and
    never before the layout's 50 frames (NeuTTS's min_new_tokens)."""
    model = tiny_neutts(seed=3)
    weight = model.lm.lm_head.weight.detach().clone()
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.zero_()
        head.bias[STOP] = 8.2
    model.lm.lm_head = head
    engine = BatchedEngine(model, max_batch=1, max_tokens=400)
    engine.start(warm_up=False)
    try:
        request, audio = speak(engine, "Stop soon.", GenerationParams(seed=4, temperature=1.0, top_p=1.0, repetition_penalty=1.0, guard_min_seconds=5.0))
    finally:
        engine.close()
    assert request.finish_reason == "stop" and request.tokens[-1] == STOP
    frames = request.tokens[:-1]
    assert n.MIN_NEW_TOKENS == model.token_layout.min_tokens == 50
    assert 50 <= len(frames) < request.max_new_tokens - 1 and STOP not in frames
    assert audio.size == request.audio_samples == len(frames) * SPF


def test_streamed_audio_is_near_the_offline_decode_of_the_same_codes(model):
    engine = BatchedEngine(model, max_batch=1, max_tokens=400)
    engine.start()
    try:
        request, audio = speak(engine, "A longer sentence to speak.", GenerationParams(seed=2, guard_min_seconds=3.0))
    finally:
        engine.close()
    codes = np.array([t - NEUTTS_SPEECH_BASE for t in request.tokens if t != STOP])
    offline = model.codec.decode(codes)
    assert audio.shape == offline.shape == (len(codes) * SPF,)
    rel = np.sqrt(np.mean((audio - offline) ** 2)) / np.sqrt(np.mean(offline**2))
    assert rel < STREAM_REL_RMS_BOUND


def test_a_prompt_over_the_trained_context_leaves_room_or_is_refused(model):
    long = n.NeuTTSVoice(tuple(range(900)), "A long reference.")
    big = n.NeuTTSModel(lm=model.lm, tokenizer=model.tokenizer, codec=model.codec, references={"long": long})
    engine = BatchedEngine(big, max_batch=1, max_tokens=2048)
    engine.start(warm_up=False)
    try:
        request, _ = speak(engine, "Hi.", GenerationParams(seed=0, guard_min_seconds=60.0), voice="long")
        assert len(request.prompt_ids) + len(request.tokens) == n.MAX_CONTEXT  # stopped at the context
        huge = n.NeuTTSModel(
            lm=model.lm, tokenizer=model.tokenizer, codec=model.codec,
            references={"huge": n.NeuTTSVoice(tuple(range(1_100)), "Too long.")},
        )  # fmt: skip
        with pytest.raises(ValueError, match="exceeds the 1024-token budget"):
            BatchedEngine(huge, max_batch=1).submit("Hi.", "huge", GenerationParams(), BlockingSink())
    finally:
        engine.close()


def test_neutts_sampling_defaults_use_top_k_and_no_repetition_penalty(model):
    params = model.default_params
    assert (params.temperature, params.top_k, params.top_p, params.repetition_penalty) == (1.0, 50, 1.0, 1.0)
    assert OrpheusModel.default_params.fget(None) == GenerationParams()


# ------------------------------------------------------------------ checkpoints and families


def test_a_saved_checkpoint_is_detected_and_loaded_as_neutts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_neutts(seed=5)
    save_neutts(model, tmp_path / "neutts")
    save_orpheus(tiny_orpheus(), tmp_path / "orpheus")
    assert family_of(str(tmp_path / "neutts")).name == "NeuTTS"
    assert family_of(str(tmp_path / "orpheus")).name == "Orpheus"
    assert family_of("neuphonic/neutts-air").name == "NeuTTS"
    assert family_of("canopylabs/orpheus-3b-0.1-ft").name == "Orpheus"
    loaded = load_model(str(tmp_path / "neutts"), device="cpu")
    assert isinstance(loaded, n.NeuTTSModel)
    assert loaded.voices == ("ref",) and loaded.references["ref"] == model.references["ref"]
    assert loaded.phonemize is None  # saved as a plain-text checkpoint
    assert loaded.build_prompt("Hi.", "ref") == model.build_prompt("Hi.", "ref")
    codes = np.arange(0, 65_536, 997)[:60]
    assert np.allclose(loaded.codec.decode(codes), model.codec.decode(codes), atol=1e-6)
    with pytest.raises(ValueError, match="reference recordings"):
        load_model(str(tmp_path / "neutts"), voices=["tara"])


def test_a_checkpoint_without_voices_or_an_unloadable_one_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_neutts(tiny_neutts(), tmp_path)
    for path in (tmp_path / "voices").iterdir():
        path.unlink()
    with pytest.raises(ModelLoadError, match="no reference voices"):
        n.load_neutts(str(tmp_path), device="cpu")
    with pytest.raises(ModelLoadError, match="could not load NeuTTS model 'neuphonic/neutts-nano'.*offline"):
        n.load_neutts("neuphonic/neutts-nano", device="cpu", voices={"a": ([1], "x")})


# ------------------------------------------------------------------ Pipecat


async def test_pipeline_turn_barge_in_and_next_turn():
    tts = LocalTTSService(model=tiny_neutts(seed=7), params=GenerationParams(seed=1, guard_min_seconds=20.0))
    assert tts._settings.voice == "ref"  # the model's first (only) reference
    audit = InterruptionAudit(tts)
    async with LivePipeline(tts) as p:
        for frame in streamed_turn("Sure, I can help with that.", random.Random(1), 5):
            await p.send(frame)
        await p.until(lambda: p.started_contexts() and p.audio(p.started_contexts()[0]), 60, "first audio")
        first = p.started_contexts()[0]
        await p.interrupt()
        await p.until(lambda: audit.handled == 1, 10, "the interruption")
        cancelled = [r for r in tts.requests if r.finish_reason == "cancelled"]
        assert cancelled and all(r.steps - r.steps_at_cancel <= 1 for r in cancelled)
        assert all(len(r.tokens) < r.max_new_tokens for r in cancelled)
        tts._params = GenerationParams(seed=2, guard_seconds_per_char=0.01, guard_min_seconds=1.0)
        nxt = await p.speak("Okay, stopping.")
        assert p.started_contexts() == [first, nxt]
    assert not p.errors, [e.error for e in p.errors]
    assert not audit.stray, audit.stray
    assert p.audio(first)
    spoken = tts.requests[-1]
    assert spoken.text == "Okay, stopping." and spoken.finish_reason == "length"
    assert tts.sample_rate == 24_000
    assert sum(len(f.audio) // 2 for f in p.audio(nxt)) == spoken.audio_samples == 50 * SPF
    assert all(len(f.audio) // 2 <= SPF for f in p.audio(nxt))  # one codec frame at most each


async def test_orpheus_and_neutts_services_in_one_process_each_speak_their_own():
    quick = GenerationParams(seed=0, guard_seconds_per_char=0.01, guard_min_seconds=0.5)
    orpheus = LocalTTSService(model=tiny_orpheus(), params=quick)
    neu = LocalTTSService(model=tiny_neutts(), params=quick)

    async def call(tts: LocalTTSService, text: str):
        async with LivePipeline(tts) as p:
            await p.send(TTSSpeakFrame(text))
            await p.until(lambda: p.started_contexts() and p.stopped(p.started_contexts()[0]), 60, text)
            assert not p.errors, [e.error for e in p.errors]
            return sum(len(f.audio) // 2 for f in p.audio()), tts.requests[-1]

    (o_samples, o_req), (n_samples, n_req) = await asyncio.gather(
        call(orpheus, "Hello from Orpheus."), call(neu, "Hello from NeuTTS.")
    )
    assert o_samples == o_req.audio_samples > 0 and o_samples % 2048 == 0
    assert n_samples == n_req.audio_samples > 0 and n_samples % SPF == 0
    assert all(t >= NEUTTS_SPEECH_BASE for t in n_req.tokens)
    assert o_req.voice == "tara" and n_req.voice == "ref"


async def test_service_loads_a_neutts_directory_and_takes_its_first_voice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_neutts(tiny_neutts(seed=8), tmp_path)
    tts = LocalTTSService(model=str(tmp_path), params=GenerationParams(seed=0, guard_min_seconds=0.5))
    assert tts._settings.voice is None  # a NeuTTS checkpoint's voices are its references
    await tts.load()
    try:
        assert isinstance(tts.model, n.NeuTTSModel) and tts._settings.voice == "ref"
    finally:
        await tts._close_engine()
    with pytest.raises(TypeError, match="voices must map voice names"):
        LocalTTSService(model=str(tmp_path), voices={1: ([1], "x")})


# ------------------------------------------------------------------ CLI


def test_cli_says_with_the_tiny_neutts_model_and_a_saved_checkpoint(tmp_path):
    save_neutts(tiny_neutts(seed=9), tmp_path / "ckpt")
    for spec, voice in (("tiny-neutts", "ref"), (str(tmp_path / "ckpt"), "ref")):
        out = tmp_path / "out.wav"
        result = subprocess.run(
            [sys.executable, "-m", "pipecat_localtts.cli", "say", "Hello there.", "--out", str(out),
             "--model", spec, "--voice", voice, "--device", "cpu", "--seed", "1"],
            capture_output=True, text=True, timeout=180, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        with wave.open(str(out)) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24_000, 1, 2)
            assert wav.getnframes() > 0 and wav.getnframes() % SPF == 0
    bad = subprocess.run(
        [sys.executable, "-m", "pipecat_localtts.cli", "say", "Hi.", "--out", str(tmp_path / "x.wav"),
         "--model", "tiny-neutts", "--voice", "tara", "--device", "cpu"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown voice 'tara'" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------------ the server


def test_the_server_speaks_neutts_with_its_sampling_defaults_to_the_openai_sdk():
    import openai
    from server_harness import RunningServer, pcm_diff, solo_pcm

    def load() -> BatchedEngine:
        engine = BatchedEngine(tiny_neutts(seed=4), max_batch=2, max_tokens=400)
        engine.start()
        return engine

    with RunningServer(load, model_name="neutts", params=None) as server:
        tts = server.tts
        params = tts.params({"seed": 3, "max_tokens": 60})
        assert (params.temperature, params.top_k, params.repetition_penalty) == (1.0, 50, 1.0)  # NeuTTS's
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        with client.audio.speech.with_streaming_response.create(
            model="neutts", voice="ref", input="Hello from the server.", response_format="pcm",
            extra_body={"seed": 3, "max_tokens": 60},
        ) as response:  # fmt: skip
            assert response.status_code == 200 and response.headers["x-sample-rate"] == "24000"
            data = b"".join(response.iter_bytes())
        server.wait_idle()
        texts = tts.utterances("Hello from the server.", "ref")
        expected = solo_pcm(tts.engine, texts, "ref", params, round(0.005 * 24_000))
        assert len(data) == len(expected) == 2 * 60 * SPF  # the max_tokens cap: 60 frames
        assert pcm_diff(data, expected) <= 4
        with pytest.raises(openai.BadRequestError, match="unknown voice 'tara'"):
            client.audio.speech.create(model="neutts", voice="tara", input="Hi.", response_format="pcm")
