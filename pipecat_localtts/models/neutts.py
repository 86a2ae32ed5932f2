"""NeuTTS Air / Nano and Audar-TTS: a small LM that speaks in NeuCodec codes, in the voice
of a reference recording.

The NeuTTS prompt (Neuphonic's ``neutts`` package; DESIGN.md §6)::

    user: Convert the text to speech:<|TEXT_PROMPT_START|>{ref text} {text}<|TEXT_PROMPT_END|>
    assistant:<|SPEECH_GENERATION_START|><|speech_c0|><|speech_c1|>...

The reference transcript and the target text form one text block, and the reference
recording's codec codes follow the start marker, so the model goes on speaking in that voice.
Audar-TTS (the same stack, its own markers) keeps the reference and the target apart::

    user: Convert the text to speech:<|REF_TEXT_START|>{ref text}<|REF_TEXT_END|>
    <|REF_SPEECH_START|>{reference codes}<|REF_SPEECH_END|><|TARGET_TEXT_START|>{text}
    <|TARGET_TEXT_END|>\nassistant:<|TARGET_CODES_START|>

and stops at ``<|TARGET_CODES_END|>`` (one line in fact; broken here). Which layout a
checkpoint uses is read from its tokenizer's markers (:data:`STYLES`).
Each generated token is one NeuCodec frame (``<|speech_N|>``, N in [0, 65536), one FSQ
codebook, 50 per second); ``<|SPEECH_GENERATION_END|>`` ends the utterance. Text goes in as
espeak-ng phonemes (``phonemizer`` over Debian's espeak-ng) for the phoneme checkpoints, as
plain text for checkpoints that read BPE text.

Every id is read from the checkpoint's tokenizer by name, never assumed: a checkpoint that
placed its tokens elsewhere loads unchanged. Like :mod:`~pipecat_localtts.models.orpheus`, this
adapter knows nothing about threads, caches or Pipecat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from pipecat_localtts.chunking import text_width
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.errors import ModelLoadError, UnknownVoiceError
from pipecat_localtts.models.base import CodecDevice, TokenLayout

if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------------------
# The NeuTTS token layout, by name

SPEECH_TOKEN = "<|speech_{}|>"
CODEBOOK_SIZE = 65_536  # NeuCodec: one FSQ codebook, levels (4,) * 8
FRAMES_PER_SECOND = 50
TEXT_PROMPT_START = "<|TEXT_PROMPT_START|>"
TEXT_PROMPT_END = "<|TEXT_PROMPT_END|>"
SPEECH_GENERATION_START = "<|SPEECH_GENERATION_START|>"
SPEECH_GENERATION_END = "<|SPEECH_GENERATION_END|>"  # the stop token
MARKERS = (TEXT_PROMPT_START, TEXT_PROMPT_END, SPEECH_GENERATION_START, SPEECH_GENERATION_END)
# Audar-TTS's markers.
REF_TEXT_START, REF_TEXT_END = "<|REF_TEXT_START|>", "<|REF_TEXT_END|>"
REF_SPEECH_START, REF_SPEECH_END = "<|REF_SPEECH_START|>", "<|REF_SPEECH_END|>"
TARGET_TEXT_START, TARGET_TEXT_END = "<|TARGET_TEXT_START|>", "<|TARGET_TEXT_END|>"
TARGET_CODES_START, TARGET_CODES_END = "<|TARGET_CODES_START|>", "<|TARGET_CODES_END|>"
AUDAR_MARKERS = (
    REF_TEXT_START, REF_TEXT_END, REF_SPEECH_START, REF_SPEECH_END,
    TARGET_TEXT_START, TARGET_TEXT_END, TARGET_CODES_START, TARGET_CODES_END,
)  # fmt: skip
PROMPT_HEAD = "user: Convert the text to speech:"
PROMPT_MIDDLE = "\nassistant:"


@dataclass(frozen=True)
class PromptStyle:
    """A prompt layout of the NeuCodec family.

    Attributes:
        name: ``"neutts"`` or ``"audar"``.
        markers: Tokens the tokenizer must hold (the family test).
        stop: The token that ends the utterance.
        defaults: The layout's published sampling settings.
    """

    name: str
    markers: tuple[str, ...]
    stop: str
    defaults: GenerationParams


#: Known layouts, most specific first. NeuTTS: temperature 1.0, top-k 50 (the ``neutts``
#: package). Audar-TTS: temperature 0.3, top-k 40, top-p 0.95, repetition penalty 1.1.
STYLES = (
    PromptStyle(
        "audar", AUDAR_MARKERS, TARGET_CODES_END,
        GenerationParams(temperature=0.3, top_p=0.95, top_k=40, repetition_penalty=1.1),
    ),
    PromptStyle(
        "neutts", MARKERS, SPEECH_GENERATION_END,
        GenerationParams(temperature=1.0, top_p=1.0, top_k=50, repetition_penalty=1.0),
    ),
)  # fmt: skip

#: Context the checkpoints were trained with (prompt + generated tokens).
MAX_CONTEXT = 2048
#: Frames before the stop token may come (one second), as the reference's ``min_new_tokens``.
MIN_NEW_TOKENS = 50
#: Cache room for the prompt: reference codes (≈ 50 per second of reference), its
#: transcript and the text. A longer prompt is split by the service, as for Orpheus.
PROMPT_BUDGET = 1024

DEFAULT_MODEL_ID = "neuphonic/neutts-air"
#: The espeak-ng language of each published phoneme checkpoint (the ``neutts`` package's map).
LANGUAGES = {
    "neuphonic/neutts-air": "en-us",
    "neuphonic/neutts-nano": "en-us",
    "neuphonic/neutts-nano-german": "de",
    "neuphonic/neutts-nano-french": "fr-fr",
    "neuphonic/neutts-nano-spanish": "es",
    "audarai/audar_tts_flash_v1_gguf": "en-us",
}
#: NeuCodec decoder the checkpoints speak with.
NEUCODEC_HUB_ID = "neuphonic/neucodec"


def style_of(tokenizer: Any) -> PromptStyle | None:
    """The prompt layout whose markers ``tokenizer`` holds, with the speech tokens; else ``None``."""
    vocab = tokenizer.get_vocab()
    if SPEECH_TOKEN.format(0) not in vocab:
        return None
    return next((s for s in STYLES if all(m in vocab for m in s.markers)), None)


def is_neutts_tokenizer(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` holds the markers of a known layout and the speech tokens."""
    return style_of(tokenizer) is not None


# --------------------------------------------------------------------------------------
# Voices: a reference recording's codes plus its transcript


@dataclass(frozen=True)
class NeuTTSVoice:
    """A voice: the NeuCodec codes of a short reference recording and what it says.

    Attributes:
        codes: The reference's codes, each in [0, 65536) (≈ 50 per second of audio).
        text: Its transcript (plain text; phonemised with the model's language).
    """

    codes: tuple[int, ...]
    text: str

    def __post_init__(self) -> None:
        if not self.codes:
            raise ValueError("a reference voice needs at least one code")
        bad = next((c for c in self.codes if not 0 <= c < CODEBOOK_SIZE), None)
        if bad is not None:
            raise ValueError(f"reference code {bad} is outside NeuCodec's range [0, {CODEBOOK_SIZE})")
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError("a reference voice needs the transcript of its recording")


def _read_codes(source: Any) -> tuple[int, ...]:
    """Codes from a ``.pt`` (a 1-D integer tensor, as the ``neutts`` samples), ``.npy``, or
    an in-memory sequence / array / tensor."""
    import numpy as np

    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"reference codes file {path} does not exist")
        if path.suffix == ".pt":
            import torch

            source = torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".npy":
            source = np.load(path, allow_pickle=False)
        else:
            raise ValueError(f"reference codes must be a .pt or .npy file, not {path.name}")
    array = np.asarray(source.cpu() if hasattr(source, "cpu") else source)
    array = array.reshape(-1) if array.ndim > 1 and array.shape.count(1) >= array.ndim - 1 else array
    if array.ndim == 1 and array.size == 0:
        return ()  # NeuTTSVoice says what is wrong
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"reference codes must be a 1-D array of integers, got shape {array.shape} of {array.dtype}")
    return tuple(int(c) for c in array)


def load_voice(codes: Any, text: str | Path) -> NeuTTSVoice:
    """A voice from its codes (``.pt`` / ``.npy`` path, or a sequence) and its transcript
    (the text, or a ``.txt`` path)."""
    if isinstance(text, Path) or (isinstance(text, str) and text.endswith(".txt") and Path(text).is_file()):
        text = Path(text).read_text(encoding="utf-8").strip()
    return NeuTTSVoice(_read_codes(codes), str(text))


def voices_in(directory: str | Path) -> dict[str, NeuTTSVoice]:
    """Every ``NAME.pt`` / ``NAME.npy`` with a ``NAME.txt`` beside it in ``directory``."""
    directory = Path(directory)
    found: dict[str, NeuTTSVoice] = {}
    for path in sorted(directory.glob("*")):
        if path.suffix in (".pt", ".npy") and path.with_suffix(".txt").is_file() and path.stem not in found:
            found[path.stem] = load_voice(path, path.with_suffix(".txt"))
    return found


def _as_voices(voices: Mapping[str, Any]) -> dict[str, NeuTTSVoice]:
    out = {}
    for name, voice in voices.items():
        if isinstance(voice, NeuTTSVoice):
            out[name] = voice
        elif isinstance(voice, (tuple, list)) and len(voice) == 2:
            out[name] = load_voice(*voice)
        else:
            raise ValueError(f"voice {name!r}: give a NeuTTSVoice or a (codes, transcript) pair")
    if not out:
        raise ValueError("a NeuTTS model needs at least one reference voice (voices={name: (codes, text)})")
    return out


# --------------------------------------------------------------------------------------
# Phonemes


class EspeakPhonemizer:
    """Text → espeak-ng phonemes, as the NeuTTS checkpoints were trained on (stress marks and
    punctuation kept, words separated by single spaces).

    Needs the ``phonemizer`` package (``pip install 'pipecat-localtts[neutts]'``) and the
    espeak-ng library (Debian/Ubuntu: ``apt-get install espeak-ng``).
    """

    def __init__(self, language: str) -> None:
        try:
            from phonemizer.backend import EspeakBackend
        except ImportError as e:
            raise ModelLoadError(
                "NeuTTS checkpoints read phonemes: install the 'phonemizer' package "
                "(pip install 'pipecat-localtts[neutts]') and espeak-ng (apt-get install espeak-ng)"
            ) from e
        try:
            self._backend = EspeakBackend(
                language=language, preserve_punctuation=True, with_stress=True,
                words_mismatch="ignore", language_switch="remove-flags",
            )  # fmt: skip
        except RuntimeError as e:  # no libespeak-ng, or a language it lacks
            raise ModelLoadError(
                f"espeak-ng is not usable for language {language!r} ({e}); install it: "
                f"apt-get install espeak-ng"
            ) from e
        self.language = language

    def __call__(self, text: str) -> str:
        phones = self._backend.phonemize([text], strip=True)[0]
        if self.language.startswith("fr"):
            phones = phones.replace("-", "")  # syllable marks the French checkpoint never saw
        return " ".join(phones.split())


# --------------------------------------------------------------------------------------
# Token stream -> codec frames


class NeuTTSFrameParser:
    """One token is one frame: ``<|speech_N|>`` → ``(N,)``; anything else is dropped, counted."""

    def __init__(self, speech_base: int) -> None:
        self._base = speech_base
        self.position = 0
        self.frames = 0
        self.dropped_frames = 0

    def push(self, token: int) -> tuple[int, ...] | None:
        self.position += 1
        code = token - self._base
        if 0 <= code < CODEBOOK_SIZE:
            self.frames += 1
            return (code,)
        if self.dropped_frames == 0:
            logger.warning(f"NeuTTS: token {token} at position {self.position - 1} is not a speech token; dropped")
        self.dropped_frames += 1
        return None


# --------------------------------------------------------------------------------------
# The loaded model


@dataclass
class NeuTTSModel(CodecDevice):
    """A loaded NeuTTS checkpoint: the Qwen2 LM, its tokenizer, the NeuCodec decoder, voices.

    Build it with :func:`load_neutts` or :func:`pipecat_localtts.testing.tiny_neutts`.

    Attributes:
        lm: The causal LM (transformers ``Qwen2ForCausalLM``), ``None`` when it runs on a server.
        tokenizer: Its tokenizer, holding the markers and the 65,536 speech tokens.
        codec: The NeuCodec streaming decoder.
        references: Voice name → reference (codes + transcript).
        phonemize: Text → the model's text input (espeak phonemes for the phoneme
            checkpoints); ``None`` for checkpoints that read plain (BPE) text.
        name: Hub id or directory, for logs.
        synthetic: True for random weights (noise).
    """

    lm: Any
    tokenizer: Any
    codec: Any
    references: dict[str, NeuTTSVoice]
    phonemize: Callable[[str], str] | None = None
    name: str = DEFAULT_MODEL_ID
    synthetic: bool = False
    prompt_budget: int = PROMPT_BUDGET
    max_context: int | None = MAX_CONTEXT
    stop_tokens: frozenset[int] = field(init=False)
    style: PromptStyle = field(init=False)  # read from the tokenizer's markers

    def __post_init__(self) -> None:
        self.references = _as_voices(self.references)
        style = style_of(self.tokenizer)
        if style is None:
            raise ModelLoadError(f"{self.name}: the tokenizer lacks the NeuTTS (or Audar-TTS) markers or speech tokens")
        self.style = style
        ids = self.tokenizer.convert_tokens_to_ids
        self.speech_base = ids(SPEECH_TOKEN.format(0))
        last = ids(SPEECH_TOKEN.format(CODEBOOK_SIZE - 1))
        if last != self.speech_base + CODEBOOK_SIZE - 1:
            raise ModelLoadError(f"{self.name}: the speech tokens are not consecutive ids")
        self.marker_ids = {m: ids(m) for m in style.markers}
        self.stop_tokens = frozenset({self.marker_ids[style.stop]})
        self._layout = TokenLayout((self.speech_base,), CODEBOOK_SIZE, tuple(self.stop_tokens), MIN_NEW_TOKENS)
        # What the tokenizer puts first (Nano's Llama-3 tokenizer: BOS; Air's Qwen2: nothing),
        # as the ``neutts`` package's ``tokenizer.encode(prompt)`` does.
        self._prefix = list(self.tokenizer("", add_special_tokens=True)["input_ids"])
        self._head = self._text_ids(PROMPT_HEAD)
        self._middle = self._text_ids(PROMPT_MIDDLE)
        self._reference_text: dict[str, str] = {}  # voice -> its transcript as model input

    @property
    def voices(self) -> tuple[str, ...]:
        """Voice names :meth:`build_prompt` accepts."""
        return tuple(self.references)

    @property
    def default_params(self) -> GenerationParams:
        """The layout's published sampling (NeuTTS: temperature 1.0, top-k 50; Audar-TTS:
        temperature 0.3, top-k 40, top-p 0.95, repetition penalty 1.1)."""
        return self.style.defaults

    @property
    def token_layout(self) -> TokenLayout:
        """One slot per frame: the 65,536 speech tokens; the stop token, from the 50th frame."""
        return self._layout

    def check_voice(self, voice: str) -> str:
        if voice not in self.references:
            raise UnknownVoiceError(f"unknown voice {voice!r} for {self.name}; known voices: {', '.join(self.voices)}")
        return voice

    def _text_ids(self, text: str) -> list[int]:
        # split_special_tokens: a marker spelled in the text is read as its characters.
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def text_input(self, text: str) -> str:
        """What the model reads for ``text``: its phonemes, or the text itself."""
        text = " ".join(text.split())
        return self.phonemize(text) if self.phonemize is not None else text

    def build_prompt(self, text: str, voice: str) -> list[int]:
        """The prompt ids. NeuTTS: the instruction, the reference transcript and ``text`` in one
        text block, then the reference's speech tokens after the generation marker. Audar-TTS:
        the reference transcript, its codes and ``text`` each in their own markers, then the
        generation marker."""
        self.check_voice(voice)
        reference = self.references[voice]
        if voice not in self._reference_text:
            self._reference_text[voice] = self.text_input(reference.text)
        m = self.marker_ids
        codes = [self.speech_base + c for c in reference.codes]
        if self.style.name == "audar":
            return [
                *self._prefix, *self._head,
                m[REF_TEXT_START], *self._text_ids(self._reference_text[voice]), m[REF_TEXT_END],
                m[REF_SPEECH_START], *codes, m[REF_SPEECH_END],
                m[TARGET_TEXT_START], *self._text_ids(self.text_input(text)), m[TARGET_TEXT_END],
                *self._middle, m[TARGET_CODES_START],
            ]  # fmt: skip
        block = self._text_ids(f"{self._reference_text[voice]} {self.text_input(text)}")
        return [
            *self._prefix, *self._head, m[TEXT_PROMPT_START], *block, m[TEXT_PROMPT_END], *self._middle,
            m[SPEECH_GENERATION_START], *codes,
        ]  # fmt: skip

    def new_parser(self) -> NeuTTSFrameParser:
        return NeuTTSFrameParser(self.speech_base)

    def token_budget(self, text: str, *, seconds_per_char: float, min_seconds: float, max_tokens: int) -> int:
        """Max-token guard: slow speech of ``text`` (wide characters count twice), one token per
        frame, within ``max_tokens`` and the trained context."""
        seconds = max(min_seconds, text_width(text.strip()) * seconds_per_char)
        return min(math.ceil(seconds * FRAMES_PER_SECOND), max_tokens)


# --------------------------------------------------------------------------------------
# Loading


def language_of(model: str, config: Any = None) -> str:
    """The espeak-ng language of a checkpoint: the published map, else the config's
    ``language``, else American English."""
    if model in LANGUAGES:
        return LANGUAGES[model]
    return str(getattr(config, "language", None) or "en-us")


def reads_phonemes(config: Any) -> bool:
    """Phoneme checkpoints unless the config says ``text_input: "bpe"`` (checkpoints that
    read BPE text)."""
    return str(getattr(config, "text_input", "phonemes")).lower() != "bpe"


def load_neutts(
    model: str = DEFAULT_MODEL_ID,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    voices: Mapping[str, Any] | None = None,
    codec: str | None = None,
    language: str | None = None,
    lm: bool = True,
) -> NeuTTSModel:
    """Load a NeuTTS checkpoint, its NeuCodec decoder and its voices.

    Args:
        model: Hub id or local directory of the checkpoint (Qwen2 or Llama + the NeuTTS
            tokenizer), or a GGUF checkpoint: a ``.gguf`` file, or a directory holding one and
            no ``config.json`` (read by transformers' GGUF support, dequantised; needs the
            ``gguf`` and ``accelerate`` packages: ``pip install 'pipecat-localtts[neutts]'``).
        device: Torch device; ``None`` picks CUDA when available.
        dtype: LM weight dtype; ``None`` picks bf16 on CUDA, fp32 on CPU.
        voices: Voice name → ``NeuTTSVoice`` or ``(codes, transcript)`` (codes: ``.pt`` /
            ``.npy`` path or a sequence; transcript: text or ``.txt`` path). Default: the
            references in ``<model>/voices`` or ``<model>/samples`` (``NAME.pt`` + ``NAME.txt``).
        codec: NeuCodec hub id or directory; default ``<model>/neucodec`` when it exists,
            else ``neuphonic/neucodec``.
        language: espeak-ng language for the phonemes (default: per checkpoint).
        lm: Load the LM weights (``False`` when it runs on a serving engine).

    Raises:
        ModelLoadError: Weights, tokenizer, codec, voices or espeak-ng could not be had.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from pipecat_localtts.codecs.neucodec import NeuCodecCodec, load_neucodec
    from pipecat_localtts.codecs.snac import hub_offline
    from pipecat_localtts.models.orpheus import resolve_device, resolve_dtype

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    local = Path(model).expanduser()
    offline: dict[str, Any] = {"local_files_only": True} if hub_offline() else {}
    gguf = _gguf_file(local)
    if gguf is not None:
        local = gguf.parent
        offline["gguf_file"] = gguf.name
        for package in ("gguf", "accelerate"):
            try:
                __import__(package)
            except ImportError as e:
                raise ModelLoadError(
                    f"{gguf}: a GGUF checkpoint needs the {package!r} package "
                    "(pip install 'pipecat-localtts[neutts]')"
                ) from e
    if local.is_dir():
        model = str(local)
        if codec is None and (local / "neucodec" / "config.json").is_file():
            codec = str(local / "neucodec")
    logger.info(f"Loading NeuTTS {model} on {dev}" + ("" if lm else " (tokenizer and codec; the LM runs on a server)"))
    try:
        config = AutoConfig.from_pretrained(model, **offline)
        tokenizer = AutoTokenizer.from_pretrained(model, **offline)
        weights = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, **offline) if lm else None
    except Exception as e:
        cause = " ".join(str(e).split())
        raise ModelLoadError(
            f"could not load NeuTTS model {model!r}; offline, download it once "
            f"(huggingface-cli download {model} --local-dir DIR) and pass DIR ({type(e).__name__}: {cause})"
        ) from e
    if weights is not None:
        weights.to(dev).eval()
    if voices is None:
        voices = {}
        for sub in ("voices", "samples"):
            if local.is_dir() and (local / sub).is_dir():
                voices = voices_in(local / sub)
                if voices:
                    break
        if not voices:
            raise ModelLoadError(
                f"{model}: no reference voices; pass voices={{name: (codes.pt, transcript)}} or put "
                f"NAME.pt + NAME.txt files in {Path(model) / 'voices'}"
            )
    phonemize = EspeakPhonemizer(language or language_of(model, config)) if reads_phonemes(config) else None
    decoder = NeuCodecCodec(load_neucodec(codec or NEUCODEC_HUB_ID, device=dev), device=dev)
    logger.info(f"Loaded NeuTTS {model}")
    return NeuTTSModel(lm=weights, tokenizer=tokenizer, codec=decoder, references=dict(voices),
                       phonemize=phonemize, name=model)  # fmt: skip


def _gguf_file(path: Path) -> Path | None:
    """The GGUF checkpoint ``path`` names: the file itself, or the one ``.gguf`` of a directory
    without a transformers ``config.json``."""
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        files = sorted(path.glob("*.gguf"))
        if files:
            return files[0]
    return None


def _gguf_holds(path: Path, needles: tuple[bytes, ...], limit: int = 64 << 20) -> bool:
    """Whether the head of a GGUF file (its metadata: the vocabulary comes before the
    tensors) holds every needle."""
    try:
        with path.open("rb") as f:
            head = f.read(limit)
    except OSError:
        return False
    return head[:4] == b"GGUF" and all(n in head for n in needles)


def is_neutts_checkpoint(model: str) -> bool:
    """Whether a local directory or hub id holds a NeuTTS checkpoint: a known hub id, or a
    tokenizer with the NeuTTS markers (read from ``tokenizer.json`` / ``added_tokens.json``
    without loading anything)."""
    if model in LANGUAGES:
        return True
    local = Path(model).expanduser()
    gguf = _gguf_file(local)
    if gguf is not None:
        speech = SPEECH_TOKEN.format(0).encode()
        return any(_gguf_holds(gguf, (marker.encode(), speech)) for marker in (SPEECH_GENERATION_START, TARGET_CODES_START))
    if not local.is_dir():
        return model.startswith(("neuphonic/neutts", "audarai/audar"))
    for name in ("added_tokens.json", "tokenizer.json", "tokenizer_config.json"):
        path = local / name
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except OSError:
                continue
            markers = SPEECH_GENERATION_START in text or TARGET_CODES_START in text
            if markers and SPEECH_TOKEN.format(0) in text:
                return True
    return False

