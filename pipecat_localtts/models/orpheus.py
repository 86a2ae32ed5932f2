"""Orpheus: a Llama that speaks in SNAC codec tokens.

This adapter knows the Orpheus token layout (special tokens, prompt format, how the seven
audio tokens of a frame map to SNAC's three codebooks), the voices, the stop condition and
how to load a checkpoint. It knows nothing about threads, caches or Pipecat: the engine
drives it, the codec turns its frames into audio.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from pipecat_localtts.chunking import text_width
from pipecat_localtts.codecs.snac import SNAC_24KHZ_HUB_ID, SNACCodec, hub_offline, load_snac
from pipecat_localtts.engine.sampling import GenerationParams
from pipecat_localtts.errors import ModelLoadError, UnknownVoiceError
from pipecat_localtts.models.base import CodecDevice, TokenLayout

if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------------------
# The Orpheus token layout (canopylabs/orpheus-3b-0.1-ft). Named once, derived elsewhere.

DEFAULT_MODEL_ID = "canopylabs/orpheus-3b-0.1-ft"
VOCAB_SIZE = 156_940

BEGIN_OF_TEXT = 128_000
END_OF_TEXT = 128_009
CUSTOM_TOKEN_BASE = 128_256  # <custom_token_N> has id CUSTOM_TOKEN_BASE + N
START_OF_SPEECH = 128_257
END_OF_SPEECH = 128_258  # the stop token
START_OF_HUMAN = 128_259
END_OF_HUMAN = 128_260
START_OF_AI = 128_261
END_OF_AI = 128_262
PAD = 128_263
AUDIO_TOKEN_BASE = 128_266  # first audio token: <custom_token_10>

CODEBOOK_SIZE = 4096
TOKENS_PER_FRAME = 7  # one SNAC frame: 1 code of c0, 2 of c1, 4 of c2

# Orpheus interleaves a frame as [c0[t], c1[2t], c2[4t], c2[4t+1], c1[2t+1], c2[4t+2], c2[4t+3]].
# The codec takes a frame in canonical order [c0, c1_0, c1_1, c2_0, c2_1, c2_2, c2_3].
# SLOT_TO_CANONICAL[slot] is where the code of the slot-th token of a frame goes.
SLOT_TO_CANONICAL = (0, 1, 3, 4, 2, 5, 6)

PROMPT_PREFIX = (START_OF_HUMAN,)
PROMPT_SUFFIX = (END_OF_TEXT, END_OF_HUMAN, START_OF_AI, START_OF_SPEECH)
STOP_TOKENS = frozenset({END_OF_SPEECH})

ENGLISH_VOICES = ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe")
EMOTIVE_TAGS = ("laugh", "chuckle", "sigh", "cough", "sniffle", "groan", "yawn", "gasp")
DEFAULT_VOICE = "tara"

_TAG_RE = re.compile(r"<[a-z]+>")


def audio_token(position: int, code: int) -> int:
    """Token id of ``code`` at the ``position``-th audio token after start_of_speech."""
    assert 0 <= code < CODEBOOK_SIZE
    return AUDIO_TOKEN_BASE + CODEBOOK_SIZE * (position % TOKENS_PER_FRAME) + code


def slot_token_range(slot: int) -> tuple[int, int]:
    """Half-open id range ``[lo, hi)`` of the audio tokens valid at frame slot ``slot``."""
    lo = AUDIO_TOKEN_BASE + CODEBOOK_SIZE * slot
    return lo, lo + CODEBOOK_SIZE


def frame_to_tokens(frame: Sequence[int], first_position: int = 0) -> list[int]:
    """Orpheus tokens of one canonical SNAC frame (the inverse of :class:`OrpheusFrameParser`)."""
    assert len(frame) == TOKENS_PER_FRAME
    return [
        audio_token(first_position + slot, int(frame[SLOT_TO_CANONICAL[slot]]))
        for slot in range(TOKENS_PER_FRAME)
    ]


# --------------------------------------------------------------------------------------
# Token stream -> codec frames


class OrpheusFrameParser:
    """Turns the generated token stream into canonical SNAC frames, one every seven tokens.

    The slot of a token is its position after start_of_speech modulo seven, whatever the
    token is. A token outside its slot's range invalidates only the frame it belongs to:
    that frame is dropped (and logged), and the parsing of later tokens is unaffected.
    """

    def __init__(self) -> None:
        self._codes = [0] * TOKENS_PER_FRAME
        self.position = 0  # tokens consumed
        self.frames = 0  # frames emitted
        self.dropped_frames = 0
        self._frame_valid = True

    def reset(self) -> None:
        """Start a new utterance."""
        self.position = 0
        self.frames = 0
        self.dropped_frames = 0
        self._frame_valid = True

    def push(self, token: int) -> tuple[int, ...] | None:
        """Consume one generated token; return a complete canonical frame or ``None``."""
        slot = self.position % TOKENS_PER_FRAME
        code = token - AUDIO_TOKEN_BASE - CODEBOOK_SIZE * slot
        if 0 <= code < CODEBOOK_SIZE:
            self._codes[SLOT_TO_CANONICAL[slot]] = code
        else:
            if self._frame_valid:
                logger.warning(
                    f"Orpheus: token {token} at audio position {self.position} is outside "
                    f"slot {slot}'s range {slot_token_range(slot)}; dropping frame "
                    f"{self.position // TOKENS_PER_FRAME}"
                )
            self._frame_valid = False
        self.position += 1
        if slot != TOKENS_PER_FRAME - 1:
            return None
        valid, self._frame_valid = self._frame_valid, True
        if not valid:
            self.dropped_frames += 1
            return None
        self.frames += 1
        return tuple(self._codes)


# --------------------------------------------------------------------------------------
# The loaded model


@dataclass
class OrpheusModel(CodecDevice):
    """A loaded Orpheus checkpoint: language model, tokenizer and SNAC codec on one device.

    Build it with :func:`load_orpheus` (hub id or local directory) or
    :func:`pipecat_localtts.testing.tiny_orpheus` (tiny random weights, for tests).

    Attributes:
        lm: The causal language model (a transformers ``LlamaForCausalLM``), or ``None`` when
            it runs on a serving engine (``lm_url``): then only the tokenizer and codec are here.
        tokenizer: Its tokenizer (a transformers tokenizer with BOS added).
        codec: The SNAC codec used to turn frames into audio.
        name: Hub id or directory it came from, for logs.
        voices: The voices this checkpoint was fine-tuned on.
        synthetic: True for random weights (they produce noise, useful only for plumbing).
    """

    lm: Any
    tokenizer: Any
    codec: SNACCodec
    name: str = DEFAULT_MODEL_ID
    voices: tuple[str, ...] = ENGLISH_VOICES
    synthetic: bool = False
    stop_tokens: frozenset[int] = field(default=STOP_TOKENS)
    #: Cache room for a prompt: ``<voice>: text`` plus the framing tokens.
    prompt_budget: int = 512
    max_context: int | None = None  # Llama-3.2's 131k positions: never the limit here

    def __post_init__(self) -> None:
        assert self.codec.codes_per_frame == TOKENS_PER_FRAME
        assert self.codec.codebook_size == CODEBOOK_SIZE
        self._layout = TokenLayout.contiguous(
            AUDIO_TOKEN_BASE, CODEBOOK_SIZE, TOKENS_PER_FRAME, sorted(self.stop_tokens)
        )

    @property
    def default_params(self) -> GenerationParams:
        """The Orpheus reference's sampling (temperature 0.6, top-p 0.8, repetition penalty 1.3)."""
        return GenerationParams()

    @property
    def token_layout(self) -> TokenLayout:
        """Audio token ranges per frame slot (``<custom_token_{10 + 4096 s + code}>``) and the stop token."""
        return self._layout

    def check_voice(self, voice: str) -> str:
        """Return ``voice`` if the model knows it, else raise :class:`UnknownVoiceError`."""
        if voice not in self.voices:
            raise UnknownVoiceError(
                f"unknown voice {voice!r} for {self.name}; known voices: {', '.join(self.voices)}"
            )
        return voice

    def build_prompt(self, text: str, voice: str) -> list[int]:
        """Prompt ids: start_of_human, BOS + tokens of "voice: text", then the speech header.

        The text is always tokenized as text: a special-token string in it (``<|eot_id|>``,
        ``<custom_token_5>``) becomes the tokens of its characters, never a control token.
        """
        self.check_voice(voice)
        ids = self.tokenizer(
            f"{voice}: {text}", add_special_tokens=True, split_special_tokens=True
        )["input_ids"]
        if not ids or ids[0] != BEGIN_OF_TEXT:
            ids = [BEGIN_OF_TEXT, *ids]
        return [*PROMPT_PREFIX, *ids, *PROMPT_SUFFIX]

    def new_parser(self) -> OrpheusFrameParser:
        """A fresh token->frame parser for one utterance."""
        return OrpheusFrameParser()

    def token_budget(
        self, text: str, *, seconds_per_char: float, min_seconds: float, max_tokens: int
    ) -> int:
        """Max-token guard: audio long enough for slow speech of ``text``, whole frames.

        Random weights never emit the stop token and a real model sometimes runs on; this
        bounds both. Each emotive tag counts as one extra second; a wide (CJK) character counts
        as two characters.
        """
        tags = len(_TAG_RE.findall(text))
        # A Han character takes longer to say than a Latin letter: wide ones count twice.
        speakable_chars = text_width(_TAG_RE.sub("", text).strip())
        seconds = max(min_seconds, speakable_chars * seconds_per_char + tags * 1.0)
        frames = math.ceil(seconds / self.frame_seconds)
        budget = frames * TOKENS_PER_FRAME
        return min(budget, max_tokens - max_tokens % TOKENS_PER_FRAME)


# --------------------------------------------------------------------------------------
# Loading


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means CUDA when available, else CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` means bf16 on CUDA, fp32 on CPU; strings like "bfloat16" are accepted."""
    import torch

    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'bfloat16', 'float16', 'float32'")
        return resolved
    return dtype


def _load_hint(model: str) -> str:
    return (
        f"could not load Orpheus model {model!r}. If the machine is offline or the repo is "
        f"gated, download it once (huggingface-cli download {model} --local-dir DIR, after "
        f"accepting the licence on the hub) and pass the directory instead: "
        f"--model DIR / LocalTTSService(model='DIR'). Put the SNAC codec in DIR/snac "
        f"(huggingface-cli download {SNAC_24KHZ_HUB_ID} --local-dir DIR/snac) to run fully offline."
    )


def _looks_like_path(model: str) -> bool:
    """Whether ``model`` is meant as a local directory rather than a hub id ("org/name").

    Absolute, ``./``, ``../`` and ``~`` paths are; so is a relative path whose first
    component is an existing directory here (``models/orpheus`` next to ``models/``), and one
    with more components than a hub id has.
    """
    if model.startswith(("./", "../", "~")) or model in (".", "..") or Path(model).is_absolute():
        return True
    parts = Path(model).parts
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def _check_local_checkpoint(model: str, local: Path) -> None:
    """Raise a clear :class:`ModelLoadError` when ``model`` names an unusable local path.

    A hub id passes (the hub is asked); so does a directory with a ``config.json``.
    """
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelLoadError(
                f"model directory {local.resolve()} has no config.json: it is not a "
                f"transformers checkpoint (expected config.json, the weights and the tokenizer "
                f"files, as written by save_pretrained or huggingface-cli download)"
            )
    elif local.exists():
        raise ModelLoadError(
            f"model path {local.resolve()} is a file, not a checkpoint directory; pass the "
            f"directory that holds config.json"
        )
    elif _looks_like_path(model):
        raise ModelLoadError(f"model directory {local.resolve()} does not exist")


def load_orpheus(
    model: str = DEFAULT_MODEL_ID,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    snac: str | None = None,
    voices: Sequence[str] | None = None,
    lm: bool = True,
) -> OrpheusModel:
    """Load an Orpheus checkpoint and its SNAC codec.

    Args:
        model: Hugging Face hub id or local directory of the Orpheus checkpoint.
        device: Torch device; ``None`` picks CUDA when available.
        dtype: Weight dtype of the LM; ``None`` picks bf16 on CUDA, fp32 on CPU.
        snac: Hub id or directory of the SNAC codec; ``None`` uses ``<model>/snac`` when that
            directory exists, else ``hubertsiuzdak/snac_24khz``.
        voices: Voices to accept; defaults to the English fine-tune's voices.
        lm: Load the language model's weights; ``False`` when it runs on a serving engine:
            only the tokenizer files and the codec are read (or downloaded).

    Raises:
        ModelLoadError: The weights, tokenizer or codec could not be had.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    local = Path(model).expanduser()
    _check_local_checkpoint(model, local)
    if local.is_dir():
        model = str(local)
        if snac is None and (local / "snac" / "config.json").is_file():
            snac = str(local / "snac")
    what = f"on {dev} ({torch_dtype})" if lm else f"(tokenizer and codec on {dev}; the LM runs on a server)"
    logger.info(f"Loading Orpheus {model} {what}")
    # huggingface_hub reads HF_HUB_OFFLINE once at import; honour it as set now.
    offline = {"local_files_only": True} if hub_offline() else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, **offline)
        weights = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, **offline) if lm else None
    except Exception as e:
        cause = " ".join(str(e).split())  # one line: the CLI prints it as its only message
        raise ModelLoadError(f"{_load_hint(model)} ({type(e).__name__}: {cause})") from e
    if weights is not None:
        weights.to(dev).eval()
        if weights.config.vocab_size != VOCAB_SIZE:
            logger.warning(
                f"{model}: vocabulary size {weights.config.vocab_size} differs from Orpheus's {VOCAB_SIZE}"
            )
    codec = SNACCodec(load_snac(snac or SNAC_24KHZ_HUB_ID, device=dev), device=dev)
    logger.info(f"Loaded Orpheus {model}")
    return OrpheusModel(
        lm=weights,
        tokenizer=tokenizer,
        codec=codec,
        name=model,
        voices=tuple(voices) if voices else ENGLISH_VOICES,
    )
