"""NeuTTS through ``lm_url``: the same remote backend as Orpheus, on a real ``llama-server``.

The model is :func:`~pipecat_localtts.testing.tiny_neutts_nano`: NeuTTS Nano's layout (a Llama
over the real Llama-3 tokenizer, the NeuTTS controls and speech tokens at Nano's ids), tiny
random weights, converted to GGUF by llama.cpp's own converter. The tokenizer, the voices and
the NeuCodec decoder load from the checkpoint directory without the LM; the tokens come from
the server: the family seam holds for the remote backend too.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest
from live_pipeline import InterruptionAudit, LivePipeline
from llama_harness import F32_ARGS, LlamaServer, gguf_of, wait_slots_idle
from pipecat.frames.frames import TTSSpeakFrame

from pipecat_localtts import LocalTTSService
from pipecat_localtts.engine.batched import BatchedEngine
from pipecat_localtts.engine.remote import RemoteLM, RemoteTokenSource
from pipecat_localtts.engine.request import BlockingSink
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.models.neutts import NeuTTSModel, load_neutts
from pipecat_localtts.testing import NEUTTS_NANO_SPEECH_BASE, NEUTTS_NANO_VOCAB_SIZE, tiny_neutts_nano

TEXT = "Hello there, how are you today?"
SPF = 480


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("neutts-nano")
    # Unit-scale weights: peaked logits, so greedy decoding gives a varied continuation.
    model = tiny_neutts_nano(seed=1, initializer_range=1.0)
    gguf = gguf_of(model, directory)
    return model, directory, gguf


@pytest.fixture(scope="module")
def server(checkpoint):
    with LlamaServer(checkpoint[2], parallel=2, args=F32_ARGS) as running:
        yield running


def remote_engine(directory, url: str) -> BatchedEngine:
    model = load_neutts(str(directory), device="cpu", lm=False)
    assert model.lm is None and isinstance(model, NeuTTSModel)
    engine = BatchedEngine(model, max_batch=2, source=RemoteTokenSource(RemoteLM(url), model.token_layout, name="r"))
    engine.start()
    return engine


def speak(engine: BatchedEngine, text: str, params: GenerationParams):
    sink = BlockingSink()
    request = engine.submit(text, "ref", params, sink)
    pieces = list(sink)
    return request, np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def test_nano_layout_prompt_starts_with_bos_and_uses_nano_ids(checkpoint):
    model = checkpoint[0]
    ids = model.tokenizer.convert_tokens_to_ids
    assert ids("<|SPEECH_GENERATION_END|>") == 128_261 and ids("<|speech_0|>") == NEUTTS_NANO_SPEECH_BASE == 128_262
    prompt = model.build_prompt(TEXT, "ref")
    assert prompt[0] == 128_000  # <|begin_of_text|>, as Nano's tokenizer.encode adds
    assert prompt[-len(model.references["ref"].codes) - 1] == ids("<|SPEECH_GENERATION_START|>")


def test_greedy_audio_through_llama_server_equals_the_in_process_engine(checkpoint, server):
    model, directory, _ = checkpoint
    local = BatchedEngine(model, max_batch=1)
    local.start()
    remote = remote_engine(directory, server.url)
    try:
        assert remote.source.kind == "llama.cpp"
        params = GenerationParams(temperature=0.0, repetition_penalty=1.0, seed=0, guard_min_seconds=1.0)
        r_local, a_local = speak(local, TEXT, params)
        r_remote, a_remote = speak(remote, TEXT, params)
        assert r_remote.prompt_ids == r_local.prompt_ids == model.build_prompt(TEXT, "ref")
        assert r_remote.finish_reason == r_local.finish_reason == "length"
        assert len(set(r_local.tokens)) > 10  # a varied continuation, not a loop
        assert all(NEUTTS_NANO_SPEECH_BASE <= t < NEUTTS_NANO_VOCAB_SIZE for t in r_remote.tokens)
        assert r_remote.tokens == r_local.tokens
        assert a_remote.size == a_local.size == len(r_local.tokens) * SPF
        assert np.max(np.abs(a_remote - a_local)) < 1e-5
        # NeuTTS's sampling (top-k 50, temperature 1) with a seed: reproducible, audio only.
        seeded = replace(model.default_params, seed=3, guard_min_seconds=1.0)
        first, _ = speak(remote, TEXT, seeded)
        again, _ = speak(remote, TEXT, seeded)
        assert first.tokens == again.tokens and first.dropped_frames == 0
    finally:
        remote.close()
        local.close()


async def test_a_pipeline_through_llama_server_with_barge_in(checkpoint, server):
    await asyncio.to_thread(wait_slots_idle, server.url)
    tts = LocalTTSService(
        model=str(checkpoint[1]), lm_url=server.url, params=GenerationParams(seed=2, guard_min_seconds=20)
    )
    audit = InterruptionAudit(tts)
    async with LivePipeline(tts) as p:
        await p.send(TTSSpeakFrame("This answer goes on and on and would take a long time to say."))
        await p.until(lambda: p.started_contexts() and p.audio(p.started_contexts()[0]), 60, "audio")
        await p.interrupt()
        await p.until(lambda: audit.handled == 1, 10, "the interruption")
        await asyncio.to_thread(wait_slots_idle, server.url, 10)  # the server stopped generating
        assert [r for r in tts.requests if r.finish_reason == "cancelled"]
        tts._params = GenerationParams(seed=3, guard_seconds_per_char=0.01, guard_min_seconds=1.0)
        nxt = await p.speak("Okay, stopping.")
        assert len(p.started_contexts()) == 2
    assert not p.errors, [e.error for e in p.errors]
    assert not audit.stray, audit.stray
    assert sum(len(f.audio) // 2 for f in p.audio(nxt)) == tts.requests[-1].audio_samples == 50 * SPF


def test_a_gguf_checkpoint_loads_in_process_through_transformers(checkpoint, tmp_path):
    """The GGUF alone (as Audar-TTS ships), with the codec and voices beside it: transformers'
    GGUF support reads the tokenizer and the weights (f32 here: exactly the same weights)."""
    import shutil

    import torch

    from pipecat_localtts.models.families import family_of

    model, directory, gguf = checkpoint
    only = tmp_path / "gguf-only"
    only.mkdir()
    shutil.copy(gguf, only / "nano.gguf")
    shutil.copytree(directory / "neucodec", only / "neucodec")
    shutil.copytree(directory / "voices", only / "voices")
    assert family_of(str(only)).name == family_of(str(only / "nano.gguf")).name == "NeuTTS"
    loaded = load_neutts(str(only / "nano.gguf"), device="cpu")
    assert loaded.voices == ("ref",)
    assert loaded.tokenizer(TEXT)["input_ids"] == model.tokenizer(TEXT)["input_ids"]
    ours, theirs = model.lm.state_dict(), loaded.lm.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # No transformers config to say "bpe": a GGUF checkpoint reads phonemes, as the published ones.
    assert loaded.phonemize is not None
    plain = NeuTTSModel(lm=loaded.lm, tokenizer=loaded.tokenizer, codec=loaded.codec, references=loaded.references)
    assert plain.build_prompt(TEXT, "ref") == model.build_prompt(TEXT, "ref")
