"""Tiny randomly initialised models of the real architectures, for tests, demos and benchmarks.

``tiny_orpheus()`` has the real Orpheus token layout (vocabulary size, special-token ids,
audio-token offsets) with a tiny Llama and a tiny SNAC, so every code path of the real model
runs on a CPU in milliseconds. Its audio is noise: it checks the plumbing, not the voice.
Nothing here touches the network.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pipecat_localtts.codecs.snac import SNAC_24KHZ_CONFIG, SNACCodec
from pipecat_localtts.models import orpheus as o

#: Same hop, strides, codebooks and receptive field as the real SNAC 24 kHz model, far fewer
#: channels: a few ms per streaming window on a CPU.
TINY_SNAC_CONFIG: dict[str, Any] = {**SNAC_24KHZ_CONFIG, "encoder_dim": 8, "decoder_dim": 64}

# The special tokens a Llama-3 tokenizer has at these ids (the rest of 128000..128255 are
# reserved tokens the Orpheus prompt never uses).
_SPECIAL_TOKENS = {
    "<|begin_of_text|>": o.BEGIN_OF_TEXT,
    "<|eot_id|>": o.END_OF_TEXT,
}

TINY_LLAMA = dict(
    vocab_size=o.VOCAB_SIZE,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
    bos_token_id=o.BEGIN_OF_TEXT,
    eos_token_id=o.END_OF_SPEECH,
    pad_token_id=o.PAD,
)


def _byte_level_chars() -> list[str]:
    """The byte-level BPE alphabet in byte order: the character standing for byte b is at b.

    Printable Latin-1 bytes stand for themselves; the others are shifted past 255.
    (``ByteLevel.alphabet()`` is a set: its order changes from process to process.)
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    chars, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


def tiny_tokenizer():
    """A byte-level tokenizer whose vocabulary holds Orpheus's special and audio tokens at
    their real ids. Text is tokenized byte by byte (no merges), BOS is prepended.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # Bytes get ids 0..255; special and custom tokens sit in the model vocab at their real
    # ids (the tokenizers library would renumber them if they were only "added" tokens).
    vocab = {ch: byte for byte, ch in enumerate(_byte_level_chars())}
    assert set(vocab) == set(pre_tokenizers.ByteLevel.alphabet())
    vocab.update(_SPECIAL_TOKENS)
    for token_id in range(o.CUSTOM_TOKEN_BASE, o.VOCAB_SIZE):
        vocab[f"<custom_token_{token_id - o.CUSTOM_TOKEN_BASE}>"] = token_id
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(_SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        special_tokens=[("<|begin_of_text|>", o.BEGIN_OF_TEXT)],
    )
    assert tok.token_to_id("<|begin_of_text|>") == o.BEGIN_OF_TEXT
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )


# Llama-3.2 rope scaling, as in Orpheus's config.
LLAMA3_ROPE = dict(
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
)

#: Llama shapes of :func:`random_orpheus`. Timing does not depend on the weights' values.
SHAPES: dict[str, dict] = {
    "tiny": TINY_LLAMA,
    # A CPU-sized stand-in with Orpheus's vocabulary and rope.
    "small": dict(
        TINY_LLAMA,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        **LLAMA3_ROPE,
    ),
    # The real Llama-3.2-3B shape of Orpheus (GPU only: 3.3 B parameters).
    "orpheus-3b": dict(
        TINY_LLAMA,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        **LLAMA3_ROPE,
    ),
}


def build_random_snac(config: dict[str, Any], seed: int = 0):
    """A randomly initialised ``snac.SNAC`` (no weights needed), on the CPU, in eval mode.

    Args:
        config: SNAC constructor arguments, e.g. :data:`TINY_SNAC_CONFIG` or
            :data:`~pipecat_localtts.codecs.snac.SNAC_24KHZ_CONFIG`.
        seed: Seed of the initialisation; the same seed gives the same weights. The global
            torch RNG state is left untouched.
    """
    import torch
    from snac import SNAC

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SNAC(**config)
    model.snac_config = dict(config)  # kept so the model can be saved as a checkpoint again
    return model.eval()


def tiny_llama(seed: int = 0, **overrides):
    """A randomly initialised ``LlamaForCausalLM`` with Orpheus's vocabulary (fp32, eval)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{**TINY_LLAMA, **overrides})
    return LlamaForCausalLM(config).eval()


def tiny_orpheus(seed: int = 0, device: str | None = None) -> o.OrpheusModel:
    """A loaded Orpheus model object with tiny random weights (synthetic: its audio is noise).

    Args:
        seed: Seed of the random weights (LM and codec).
        device: Torch device, CPU by default.
    """
    lm = tiny_llama(seed)
    codec = SNACCodec(build_random_snac(TINY_SNAC_CONFIG, seed=seed), device=device or "cpu")
    if device:
        lm.to(device)
    return o.OrpheusModel(
        lm=lm, tokenizer=tiny_tokenizer(), codec=codec, name="tiny", synthetic=True
    )


def slotted_llama(seed: int = 0, *, hidden_size: int = 64, **overrides):
    """A ``LlamaForCausalLM`` (tiny unless ``overrides`` say otherwise) whose random weights
    follow Orpheus's frame slots.

    Real Orpheus checkpoints learned to emit the audio token of the right frame slot at every
    position; random weights do not, so a remote engine that can only restrict output to the
    audio tokens as a whole (not per slot) gives them nothing but dropped frames. This model
    is random where it does not matter and structured where it does: each audio token of slot
    ``s`` embeds near direction ``s`` and the output rows of slot ``s + 1`` point along
    direction ``s`` (start-of-speech embeds as slot 6), with attention and MLP outputs scaled
    down so the residual stream carries the embedding. The next token is then in the right
    slot by a wide margin, and which of the slot's 4,096 codes it is varies with the input
    through the random parts. The stop token is never likely: the max-token guard ends speech.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = {**TINY_LLAMA, "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
              "head_dim": hidden_size, "num_attention_heads": 1, "num_key_value_heads": 1,
              "tie_word_embeddings": False, **overrides}
    torch.manual_seed(seed)
    lm = LlamaForCausalLM(LlamaConfig(**config)).eval()
    slots = o.TOKENS_PER_FRAME
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        embed = lm.get_input_embeddings().weight  # [V, H]
        head = lm.get_output_embeddings().weight  # [V, H]
        h = embed.shape[1]
        scale = (64 / h) ** 0.5  # the noise's norm as at hidden size 64, whatever the size
        for s in range(slots):
            lo = o.AUDIO_TOKEN_BASE + o.CODEBOOK_SIZE * s
            rows = slice(lo, lo + o.CODEBOOK_SIZE)
            noise = torch.randn(o.CODEBOOK_SIZE, h, generator=gen) * (0.3 * scale)
            noise[:, :slots] = 0
            embed[rows] = noise
            embed[rows, s] = 1.0
            # Output rows of slot s + 1 answer an input of slot s.
            nxt = (s + 1) % slots
            lo2 = o.AUDIO_TOKEN_BASE + o.CODEBOOK_SIZE * nxt
            rows2 = slice(lo2, lo2 + o.CODEBOOK_SIZE)
            noise = torch.randn(o.CODEBOOK_SIZE, h, generator=gen) * scale
            noise[:, :slots] = 0
            head[rows2] = noise
            head[rows2, s] = 12.0
        embed[o.START_OF_SPEECH] = 0
        embed[o.START_OF_SPEECH, slots - 1] = 1.0
        for layer in lm.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.05)
            layer.mlp.down_proj.weight.mul_(0.05)
    return lm


def slotted_orpheus(
    seed: int = 0, *, tokenizer=None, device: str | None = None, shape: str = "tiny"
) -> o.OrpheusModel:
    """An Orpheus model object on :func:`slotted_llama` (synthetic: its audio is noise).

    For a speech LM on a serving engine, which can restrict output to the audio tokens but not
    to each frame slot. ``tokenizer``: the tiny one by default; a real Llama-3 + Orpheus
    tokenizer where the serving engine needs one (llama.cpp's GGUF converter). ``shape``:
    ``tiny`` (hidden size 64, one layer, the tiny SNAC) or ``small`` (the Llama of
    :data:`SHAPES` ``small``, untied, with the real-size SNAC), for benchmarks.
    """
    if shape == "tiny":
        lm = slotted_llama(seed)
        snac = TINY_SNAC_CONFIG
    elif shape == "small":
        layers = {k: v for k, v in SHAPES["small"].items() if k != "tie_word_embeddings"}
        lm = slotted_llama(seed, **layers)
        snac = SNAC_24KHZ_CONFIG
    else:
        raise ValueError(f"unknown slotted shape {shape!r}; choose tiny or small")
    codec = SNACCodec(build_random_snac(snac, seed=seed), device=device or "cpu")
    if device:
        lm.to(device)
    return o.OrpheusModel(
        lm=lm, tokenizer=tokenizer or tiny_tokenizer(), codec=codec, name=f"{shape}-slotted", synthetic=True
    )


def random_orpheus(
    shape: str = "tiny", seed: int = 0, device: str | None = None, dtype=None
) -> o.OrpheusModel:
    """A model object of one of :data:`SHAPES` with random weights, for benchmarks.

    ``tiny`` is :func:`tiny_orpheus`; ``small`` and ``orpheus-3b`` use the real-size SNAC.
    Weights are created directly on ``device`` in ``dtype`` (default: bf16 on CUDA, fp32
    on CPU), so the 3B shape never materialises in host memory.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if shape == "tiny":
        return tiny_orpheus(seed=seed, device=device)
    dev = o.resolve_device(device)
    torch_dtype = o.resolve_dtype(dtype, dev)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch_dtype)
        try:
            with dev:
                lm = LlamaForCausalLM(LlamaConfig(**SHAPES[shape])).eval()
        finally:
            torch.set_default_dtype(previous)
    codec = SNACCodec(build_random_snac(SNAC_24KHZ_CONFIG, seed=seed), device=dev)
    return o.OrpheusModel(
        lm=lm, tokenizer=tiny_tokenizer(), codec=codec, name=f"random-{shape}", synthetic=True
    )


def save_orpheus(model: o.OrpheusModel, directory: str | Path) -> Path:
    """Write a model object as a checkpoint directory that :func:`load_orpheus` reads
    (transformers layout, with the SNAC codec in ``<directory>/snac``)."""
    import json

    import torch

    directory = Path(directory)
    model.lm.save_pretrained(directory)
    model.tokenizer.save_pretrained(directory)
    snac_dir = directory / "snac"
    snac_dir.mkdir(parents=True, exist_ok=True)
    assert model.codec.config is not None, "only codecs built by build_random_snac can be saved"
    (snac_dir / "config.json").write_text(json.dumps(model.codec.config))
    torch.save(model.codec.model.state_dict(), snac_dir / "pytorch_model.bin")
    return directory


#: The ``--model`` names of the tiny random models (noise, for plumbing checks).
TINY_MODELS = ("tiny", "tiny-neutts")


def model_from_spec(spec: str | None, *, device: str | None = None):
    """What ``--model`` / ``LOCALTTS_MODEL`` name: ``"tiny"`` gives :func:`tiny_orpheus` and
    ``"tiny-neutts"`` :func:`tiny_neutts` (noise, for plumbing checks); anything else (hub id or
    directory) is returned for ``LocalTTSService(model=...)`` to load; ``None`` or empty means
    the default Orpheus."""
    if not spec:
        return o.DEFAULT_MODEL_ID
    if spec == "tiny":
        return tiny_orpheus(device=device)
    if spec == "tiny-neutts":
        return tiny_neutts(device=device)
    return spec


# --- NeuTTS (Qwen2 + NeuCodec) -----------------------------------------------------------------

#: Qwen2.5's special tokens at their ids (its byte-level BPE vocabulary is ids 0..151642; the
#: tiny tokenizer keeps only the 256 byte tokens of it, at ids 0..255).
QWEN2_SPECIAL_TOKENS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
#: NeuTTS's control tokens, in their order after the base model's 22 special tokens. That order
#: (and the speech tokens right after it) was checked on NeuTTS Nano, a Llama-3 base (controls at
#: 128256..128261, ``<|speech_0|>`` at 128262); NeuTTS Air (a Qwen2.5 base) is laid out the
#: same way here, after Qwen2.5's specials. The adapter reads every id by name, so a checkpoint
#: laid out otherwise loads unchanged.
NEUTTS_CONTROL_TOKENS = (
    "<|TEXT_REPLACE|>", "<|TEXT_PROMPT_START|>", "<|TEXT_PROMPT_END|>",
    "<|SPEECH_REPLACE|>", "<|SPEECH_GENERATION_START|>", "<|SPEECH_GENERATION_END|>",
)  # fmt: skip
NEUTTS_CONTROL_BASE = 151_665
NEUTTS_SPEECH_BASE = NEUTTS_CONTROL_BASE + len(NEUTTS_CONTROL_TOKENS)  # 151671
NEUTTS_VOCAB_SIZE = NEUTTS_SPEECH_BASE + 65_536  # 217207
#: Audar-TTS's markers, after NeuTTS Air's vocabulary in :func:`tiny_neutts` (``style="audar"``).
#: Where the published tokenizer puts them is not checked here; the adapter reads them by name.
AUDAR_TOKEN_BASE = NEUTTS_VOCAB_SIZE

#: The tiny Qwen2 of :func:`tiny_neutts`: NeuTTS Air's vocabulary, tiny everything else.
TINY_QWEN2 = dict(
    vocab_size=NEUTTS_VOCAB_SIZE,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    tie_word_embeddings=True,
    max_position_embeddings=4096,
    bos_token_id=151643,
    eos_token_id=NEUTTS_SPEECH_BASE - 1,
    pad_token_id=151643,
)

#: NeuTTS Air's backbone (Qwen2.5-0.5B: 24 layers, 896 wide, 14 heads of 64, 2 KV heads) with
#: the NeuTTS vocabulary, for benchmarks (timing does not depend on the weights' values).
NEUTTS_AIR_QWEN2 = dict(
    TINY_QWEN2,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
)


@functools.lru_cache(maxsize=2)
def _neutts_tokenizer_object(audar: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from pipecat_localtts.models.neutts import AUDAR_MARKERS

    vocab = {ch: byte for byte, ch in enumerate(_byte_level_chars())}
    vocab.update(QWEN2_SPECIAL_TOKENS)
    vocab.update({t: NEUTTS_CONTROL_BASE + i for i, t in enumerate(NEUTTS_CONTROL_TOKENS)})
    vocab.update({f"<|speech_{i}|>": NEUTTS_SPEECH_BASE + i for i in range(65_536)})
    extra = list(AUDAR_MARKERS) if audar else []
    vocab.update({t: AUDAR_TOKEN_BASE + i for i, t in enumerate(extra)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([*QWEN2_SPECIAL_TOKENS, *NEUTTS_CONTROL_TOKENS, *extra])
    return tok.to_str()


def tiny_neutts_tokenizer(audar: bool = False):
    """A byte-level tokenizer with NeuTTS Air's layout: bytes at ids 0..255, Qwen2.5's special
    tokens, the NeuTTS control tokens and the 65,536 ``<|speech_N|>`` tokens at their ids (see
    :data:`NEUTTS_CONTROL_TOKENS`); with ``audar``, Audar-TTS's markers after them. Like
    Qwen2's, it adds no BOS."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_neutts_tokenizer_object(audar))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_qwen2(seed: int = 0, **overrides):
    """A randomly initialised ``Qwen2ForCausalLM`` with NeuTTS's vocabulary (fp32, eval)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(Qwen2Config(**{**TINY_QWEN2, **overrides})).eval()


def tiny_neutts_voice(seed: int = 0, frames: int = 40):
    """A reference voice of random codes (``frames`` of them, 50 a second) and a transcript."""
    import numpy as np

    from pipecat_localtts.models.neutts import NeuTTSVoice

    codes = np.random.default_rng(seed).integers(0, 65_536, size=frames)
    return NeuTTSVoice(tuple(int(c) for c in codes), "This is my reference voice.")


def tiny_neutts(
    seed: int = 0,
    device: str | None = None,
    *,
    phonemes: bool = False,
    shape: str = "tiny",
    codec_shape: str = "tiny",
    style: str = "neutts",
):
    """A loaded NeuTTS model object with random weights (synthetic: its audio is noise).

    Args:
        seed: Seed of the random weights (LM, codec) and of the reference voice.
        device: Torch device, CPU by default.
        phonemes: Read text as espeak-ng phonemes (needs ``phonemizer`` and espeak-ng), as the
            published checkpoints do; ``False`` reads plain text (as BPE checkpoints do).
        shape: ``"tiny"`` or ``"air"`` (NeuTTS Air's real backbone size, for benchmarks).
        codec_shape: ``"tiny"`` or ``"real"`` (the real-size NeuCodec decoder, 188M).
        style: ``"neutts"`` or ``"audar"`` (Audar-TTS's prompt markers and stop token).

    Its voice is ``"ref"``: 40 random codes with a transcript.
    """
    from pipecat_localtts.codecs.neucodec import TINY_NEUCODEC_CONFIG, NeuCodecCodec, build_random_neucodec
    from pipecat_localtts.models.neutts import EspeakPhonemizer, NeuTTSModel

    if shape not in ("tiny", "air") or codec_shape not in ("tiny", "real") or style not in ("neutts", "audar"):
        raise ValueError(f"unknown shape {shape!r} / codec_shape {codec_shape!r} / style {style!r}")
    audar = style == "audar"
    lm_config = dict(NEUTTS_AIR_QWEN2) if shape == "air" else {}
    if audar:
        lm_config["vocab_size"] = AUDAR_TOKEN_BASE + 8
    lm = tiny_qwen2(seed, **lm_config)
    codec_config = TINY_NEUCODEC_CONFIG if codec_shape == "tiny" else None
    codec = NeuCodecCodec(build_random_neucodec(codec_config, seed=seed), device=device or "cpu")
    if device:
        lm.to(device)
    return NeuTTSModel(
        lm=lm,
        tokenizer=tiny_neutts_tokenizer(audar),
        codec=codec,
        references={"ref": tiny_neutts_voice(seed)},
        phonemize=EspeakPhonemizer("en-us") if phonemes else None,
        name=f"{'tiny' if shape == 'tiny' else 'random-air'}-{style}",
        synthetic=True,
    )


def save_neutts(model, directory: str | Path) -> Path:
    """Write a NeuTTS model object as a checkpoint directory that ``load_neutts`` reads: the
    LM and tokenizer (transformers layout), the codec in ``<directory>/neucodec``, the voices as
    ``<directory>/voices/NAME.pt`` + ``NAME.txt`` (the ``neutts`` samples' format)."""
    import torch

    from pipecat_localtts.codecs.neucodec import NeuCodecDecodeOnly

    directory = Path(directory)
    if model.phonemize is None:  # a plain-text model: say so, as BPE checkpoints do
        model.lm.config.text_input = "bpe"
    model.lm.save_pretrained(directory)
    model.tokenizer.save_pretrained(directory)

    decoder = NeuCodecDecodeOnly(model.codec.config)
    decoder.quantizer.load_state_dict(model.codec.quantizer.state_dict())
    decoder.acoustic_decoder.load_state_dict(model.codec.decoder.state_dict())
    decoder.save_pretrained(directory / "neucodec")
    voices = directory / "voices"
    voices.mkdir(parents=True, exist_ok=True)
    for name, ref in model.references.items():
        torch.save(torch.tensor(ref.codes, dtype=torch.int32), voices / f"{name}.pt")
        (voices / f"{name}.txt").write_text(ref.text + "\n", encoding="utf-8")
    return directory


# --- A real Llama-3 tokenizer and llama.cpp (tests that run llama.cpp's llama-server) ---------

#: Llama-3's pre-tokenizer split (from its tokenizer.json), applied before the byte-level map.
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_LLAMA3_VOCAB_GGUF = "models/ggml-vocab-llama-bpe.gguf"


def llama_cpp_dir() -> Path:
    """Where ``scripts/llama_server.sh`` put llama.cpp: ``<venv>/llama.cpp`` of this interpreter.

    It holds ``bin/llama-server``, ``convert_hf_to_gguf.py`` (with ``conversion/`` and
    ``gguf-py/``) and ``models/ggml-vocab-llama-bpe.gguf``.

    Raises:
        FileNotFoundError: the server binary is not there (run ``bash scripts/setup.sh``).
    """
    import sys

    directory = Path(sys.prefix) / "llama.cpp"
    if not (directory / "bin" / "llama-server").is_file():
        raise FileNotFoundError(
            f"llama.cpp's llama-server is not built: {directory / 'bin' / 'llama-server'} is "
            "missing. Run `bash scripts/setup.sh` (it builds it once, ~7 min; or "
            "`bash scripts/llama_server.sh` alone)."
        )
    return directory


def _read_gguf_metadata(path: Path, wanted: set[str]) -> dict[str, Any]:
    """The metadata values named in ``wanted`` of a GGUF file (v2/v3, little-endian).

    A minimal reader of the key/value section: enough for a vocabulary-only GGUF.
    """
    import struct

    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
              10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
    data = path.read_bytes()
    if data[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    version, _tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    if version < 2:
        raise ValueError(f"{path}: GGUF version {version} is not supported")
    pos = 24

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
        return data[pos - n : pos].decode("utf-8")

    def value(kind: int) -> Any:
        nonlocal pos
        if kind == 8:
            return string()
        if kind == 9:
            item_kind, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if item_kind in scalar:  # one unpack for the whole array
                fmt = scalar[item_kind]
                values = struct.unpack_from(f"<{count}{fmt[1]}", data, pos)
                pos += count * struct.calcsize(fmt)
                return list(values)
            return [value(item_kind) for _ in range(count)]
        fmt = scalar[kind]
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    found: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        (kind,) = struct.unpack_from("<I", data, pos)
        pos += 4
        v = value(kind)
        if key in wanted:
            found[key] = v
    missing = wanted - found.keys()
    if missing:
        raise ValueError(f"{path}: no {', '.join(sorted(missing))}")
    return found


_GGUF_CONTROL = 3  # llama.cpp's token type of control (special) tokens


#: Ids after Llama-3's specials in NeuTTS Nano's vocabulary: its six control tokens, then the
#: 65,536 speech tokens (checked on the published Nano; its IPA glyph tokens after them are
#: left out here).
NEUTTS_NANO_SPEECH_BASE = o.CUSTOM_TOKEN_BASE + len(NEUTTS_CONTROL_TOKENS)  # 128262
NEUTTS_NANO_VOCAB_SIZE = NEUTTS_NANO_SPEECH_BASE + 65_536  # 193798


@functools.lru_cache(maxsize=4)
def _llama3_tokenizer_cached(vocab_gguf: str, family: str = "orpheus"):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    meta = _read_gguf_metadata(
        Path(vocab_gguf),
        {"tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
         "tokenizer.ggml.token_type", "tokenizer.ggml.merges"},
    )  # fmt: skip
    if (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) != ("gpt2", "llama-bpe"):
        raise ValueError(f"{vocab_gguf}: not a Llama-3 (llama-bpe) vocabulary")
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    special_ids = [i for i, t in enumerate(types) if t == _GGUF_CONTROL]
    if special_ids != list(range(o.BEGIN_OF_TEXT, o.CUSTOM_TOKEN_BASE)):
        raise ValueError(f"{vocab_gguf}: special tokens are not at 128000..128255")
    # As in Llama-3's tokenizer.json: the BPE vocabulary holds the 128,000 ordinary tokens,
    # the specials are added tokens (which the tokenizers library numbers on from there).
    vocab = {tok: i for i, tok in enumerate(tokens[: o.BEGIN_OF_TEXT])}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    added = [tokens[i] for i in special_ids]
    if family == "orpheus":
        added += [f"<custom_token_{n}>" for n in range(o.VOCAB_SIZE - o.CUSTOM_TOKEN_BASE)]
        size = o.VOCAB_SIZE
    else:  # NeuTTS Nano
        added += [*NEUTTS_CONTROL_TOKENS, *(f"<|speech_{n}|>" for n in range(65_536))]
        size = NEUTTS_NANO_VOCAB_SIZE
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                special_tokens=[("<|begin_of_text|>", o.BEGIN_OF_TEXT)],
            ),
        ]
    )
    assert tok.get_vocab_size(with_added_tokens=True) == size
    last = f"<custom_token_{size - o.CUSTOM_TOKEN_BASE - 1}>" if family == "orpheus" else "<|speech_65535|>"
    first = added[len(special_ids)]
    for name, token_id in [("<|begin_of_text|>", o.BEGIN_OF_TEXT), ("<|eot_id|>", o.END_OF_TEXT),
                           (first, o.CUSTOM_TOKEN_BASE), (last, size - 1)]:  # fmt: skip
        assert tok.token_to_id(name) == token_id, (name, tok.token_to_id(name))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        model_max_length=131072,
    )


def llama3_tokenizer(vocab_gguf: str | Path | None = None, family: str = "orpheus"):
    """The real Llama-3 tokenizer with Orpheus's (or NeuTTS Nano's) vocabulary, rebuilt from a
    vocabulary GGUF.

    Byte-level BPE with Llama-3's split regex; its 256 special tokens at 128000..128255;
    ``<|begin_of_text|>`` prepended by the post-processor; eos ``<|eot_id|>`` (as Orpheus's
    tokenizer); and Orpheus's ``<custom_token_N>`` (N = 0..28683) as special tokens at
    128256 + N: 156,940 ids, tokenizing as Orpheus does. With ``family="neutts"``, NeuTTS
    Nano's six control tokens and 65,536 speech tokens instead (193,798 ids). llama.cpp's
    ``convert_hf_to_gguf.py`` recognises it as ``llama-bpe``.

    Args:
        vocab_gguf: A Llama-3 vocabulary GGUF; by default llama.cpp's
            ``models/ggml-vocab-llama-bpe.gguf`` that ``scripts/llama_server.sh`` keeps in
            :func:`llama_cpp_dir`.
        family: ``"orpheus"`` or ``"neutts"``.

    Building takes a few seconds; the tokenizer is cached per file: the same path gives the
    same object (do not modify it).
    """
    if vocab_gguf is None:
        vocab_gguf = llama_cpp_dir() / _LLAMA3_VOCAB_GGUF
    if family not in ("orpheus", "neutts"):
        raise ValueError(f"family must be 'orpheus' or 'neutts', not {family!r}")
    return _llama3_tokenizer_cached(str(Path(vocab_gguf).resolve()), family)


def tiny_orpheus_llama3(seed: int = 0, device: str | None = None, **lm_overrides) -> o.OrpheusModel:
    """:func:`tiny_orpheus` (same tiny Llama and SNAC for a seed) with :func:`llama3_tokenizer`
    as its tokenizer, so its prompts are the real Orpheus prompts: for converting to GGUF and
    serving with llama.cpp, whose converter needs a tokenizer it recognises.

    ``lm_overrides`` change the tiny Llama's config (e.g. ``initializer_range=1.0``: at the
    default 0.02 its logits are nearly flat and greedy decoding repeats one token).
    """
    tokenizer = llama3_tokenizer()
    lm = tiny_llama(seed, **lm_overrides)
    codec = SNACCodec(build_random_snac(TINY_SNAC_CONFIG, seed=seed), device=device or "cpu")
    if device:
        lm.to(device)
    return o.OrpheusModel(
        lm=lm, tokenizer=tokenizer, codec=codec, name="tiny-llama3", synthetic=True
    )


def tiny_neutts_nano(seed: int = 0, device: str | None = None, **lm_overrides):
    """A NeuTTS Nano-layout model with tiny random weights: a tiny Llama over the real Llama-3
    tokenizer with NeuTTS's tokens (:func:`llama3_tokenizer` ``family="neutts"``: controls at
    128256..128261, ``<|speech_0|>`` at 128262, as the published Nano), a tiny NeuCodec decoder and
    the voice ``"ref"``. Its tokenizer adds BOS, as Nano's does; llama.cpp's converter takes it.
    """
    from pipecat_localtts.codecs.neucodec import TINY_NEUCODEC_CONFIG, NeuCodecCodec, build_random_neucodec
    from pipecat_localtts.models.neutts import NeuTTSModel

    lm = tiny_llama(seed, **{"vocab_size": NEUTTS_NANO_VOCAB_SIZE, "eos_token_id": o.CUSTOM_TOKEN_BASE + 5,
                             "pad_token_id": o.END_OF_TEXT, **lm_overrides})  # fmt: skip
    codec = NeuCodecCodec(build_random_neucodec(TINY_NEUCODEC_CONFIG, seed=seed), device=device or "cpu")
    if device:
        lm.to(device)
    return NeuTTSModel(
        lm=lm, tokenizer=llama3_tokenizer(family="neutts"), codec=codec,
        references={"ref": tiny_neutts_voice(seed)}, name="tiny-neutts-nano", synthetic=True,
    )  # fmt: skip
