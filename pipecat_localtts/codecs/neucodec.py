"""NeuCodec decoder for NeuTTS: offline decode and windowed streaming with crossfaded seams.

NeuTTS Air / Nano emit one token per NeuCodec frame: ``<|speech_N|>`` with ``N`` in
``[0, 65536)``, the index into NeuCodec's single FSQ codebook (levels ``(4,) * 8``), 50 frames
per second, each decoding to 480 samples at 24 kHz. All of these numbers are read from the
model's configuration here, not hard-coded.

Decoding uses only two parts of ``transformers.NeuCodecModel``: ``quantizer.from_codes`` (FSQ
codebook -> ``Linear 8 -> 2048``) and ``acoustic_decoder`` (``Linear 2048 -> 1024``, a k=7
conv, two ResNet blocks, 12 transformer layers, two ResNet blocks, LayerNorm and an ISTFT
head with ``n_fft = 1920``, ``hop = 480`` and "same" padding, so ``n`` frames give exactly
``n * 480`` samples). The 387M-parameter w2v-BERT semantic encoder and the acoustic encoder
are never needed: :class:`NeuCodecDecodeOnly` holds just the decode path, under the same
parameter names, so a full transformers checkpoint loads into it (the encoders' weights are
skipped) and a random one is cheap to build (:func:`build_random_neucodec`).

That decoder is not causal, and not even local: the transformer layers attend over the whole
sequence in both directions (their RoPE runs over the head dimension, not over time), and
every ResNet block starts with a ``GroupNorm`` whose statistics are taken over all time steps.
Every output sample therefore depends on every code, so streaming cannot be exact (unlike
SNAC). :class:`NeuCodecStream` decodes fixed windows with look-back and look-ahead context and
joins consecutive windows' audio with a short linear crossfade; see its docstring for the
exact schedule. Because the windows depend only on the settings and the utterance length,
never on how frames arrived, the streamed audio is the same however the frames are fed.

How much context matters was measured with ``benchmarks/neucodec_seams.py`` (a random
real-size decoder against its own offline decode; figures next to the defaults below). Random
weights attend everywhere and normalise over the whole window, so those figures say how much
context matters for this architecture with untrained weights, not exactly for the trained
NeuCodec (whose attention may well be more local, making seams matter relatively more).

Batched decoding (:meth:`NeuCodecCodec.decode_windows`) stacks windows of equal length into
one forward pass. Windows of different lengths are not padded into one pass: padding changes
the GroupNorm statistics and what the edge convolutions see, and even with the transformers
attention mask (``NeuCodecModel.decode(audio_codes_mask=...)``) a padded row differed from its
solo decode by 0.4-0.9 times the signal's RMS (measured, real-size random decoder), far from
the float-rounding agreement (about 1e-7) of an equal-length batch. In steady state every
window of every stream has the same length, so they batch together anyway.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pipecat_localtts.codecs.base import CodecWindow
from pipecat_localtts.errors import ModelLoadError

from transformers import NeuCodecConfig
from transformers.models.neucodec.modeling_neucodec import (
    NeuCodecDecoder,
    NeuCodecPreTrainedModel,
    NeuCodecQuantizer,
)

__all__ = [
    "NEUCODEC_HUB_ID",
    "TINY_NEUCODEC_CONFIG",
    "NeuCodecCodec",
    "NeuCodecDecodeOnly",
    "NeuCodecStream",
    "build_random_neucodec",
    "load_neucodec",
    "neucodec_config",
]

#: Hub id of the published NeuCodec. Transformers' own NeuCodec tests and docs load
#: ``NeuCodecModel.from_pretrained("neuphonic/neucodec")``, i.e. the repository holds a
#: transformers-format checkpoint (``config.json`` with ``model_type: neucodec``).
NEUCODEC_HUB_ID = "neuphonic/neucodec"

#: A small decoder for tests: hidden size 64, 2 layers of 2 heads, and a tiny semantic config
#: (only its ``hidden_size`` matters to the decoder: the decoder's input is
#: ``quantization_dim = hidden_size + semantic hidden_size``). Hop (480), ``n_fft`` (1920),
#: the 24 kHz output and the 65536-code FSQ codebook are the real ones.
TINY_NEUCODEC_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "quantization_dim": 128,
    "semantic_model_config": {
        "model_type": "wav2vec2-bert",
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 128,
    },
}

# Streaming defaults (frames), chosen with benchmarks/neucodec_seams.py (real-size random
# decoder, 3 x 300 random codes, seed 0; error = RMS error / RMS of the offline decode):
#
#   scheme                               rel RMS  at seams  first audio  frames decoded/frame
#   independent 50-code chunks (audar)    0.290    0.877        50             1.00
#   neutts (25 + 5 ahead, 50 back)        0.124    0.151        30             2.96
#   ours c25 f20 b50 a5 o4 (default)      0.115    0.106        25             3.22
#   ours c25 f10 b25 a5 o2 (lighter)      0.141    0.139        15             2.22
#
# The error is mostly NOT at the seams: every sample depends on the whole window (attention,
# GroupNorm), so look-back (b25 0.135, b50 0.115, b75 0.104) and window length (chunk 50:
# 0.100 at 2.07 frames decoded per frame) matter most. Without look-ahead the seams are bad
# (a0: 0.276 at seams); a 4-frame crossfade beats a hard cut (0.106 vs 0.133 at seams).
# first_chunk 20 (not 10) leaves 16 frames of first audio to cover the wait for the second
# window, so the LM needs only ~1.6x real time to avoid a gap (see NeuCodecStream).
DEFAULT_CHUNK = 25
DEFAULT_FIRST_CHUNK = 20
DEFAULT_LOOKBACK = 50
DEFAULT_LOOKAHEAD = 5
DEFAULT_OVERLAP = 4

#: Top-level modules of ``NeuCodecModel`` that only encoding needs.
_ENCODER_MODULES = ("semantic_encoder", "semantic_adapter", "acoustic_encoder", "fc_encoder")


def neucodec_config(config_overrides: dict[str, Any] | None = None) -> NeuCodecConfig:
    """A ``NeuCodecConfig``: transformers' defaults (the published model's sizes) with
    ``config_overrides`` applied, e.g. :data:`TINY_NEUCODEC_CONFIG`."""
    return NeuCodecConfig(**dict(config_overrides or {}))


class NeuCodecDecodeOnly(NeuCodecPreTrainedModel):
    """The decode path of ``NeuCodecModel``: ``quantizer`` and ``acoustic_decoder``, under the
    same names, so ``from_pretrained`` of a full NeuCodec checkpoint loads exactly the weights
    decoding needs (the encoders' are skipped) and never builds the encoders.

    ``forward(codes)`` takes long codes ``[B, T]`` and returns float32 audio
    ``[B, T * hop_length]`` (no padding, no mask: every row is decoded whole).
    """

    _keys_to_ignore_on_load_unexpected = [rf"^{name}\." for name in _ENCODER_MODULES]

    def __init__(self, config: NeuCodecConfig) -> None:
        super().__init__(config)
        self.quantizer = NeuCodecQuantizer(config)
        self.acoustic_decoder = NeuCodecDecoder(config)
        self.post_init()

    def forward(self, codes: torch.Tensor) -> torch.Tensor:  # codes: [B, T]
        latents = self.quantizer.from_codes(codes[..., None])  # [B, T, quantization_dim]
        audio = self.acoustic_decoder(latents)  # [B, 1, T * hop]
        return audio[:, 0].float()


def build_random_neucodec(config_overrides: dict[str, Any] | None = None, seed: int = 0) -> NeuCodecDecodeOnly:
    """A randomly initialised decode-only NeuCodec (transformers' weight init), in eval mode.

    Args:
        config_overrides: ``NeuCodecConfig`` fields to change; ``None`` gives the real-size
            decoder (hidden 1024, 12 layers of 16 heads: 188M parameters, no encoders),
            :data:`TINY_NEUCODEC_CONFIG` a tiny one for tests.
        seed: Seed of the weights (the global torch RNG is left as it was).

    Returns:
        A :class:`NeuCodecDecodeOnly` on the CPU.
    """
    config = neucodec_config(config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = NeuCodecDecodeOnly(config)
    return model.eval()


def load_neucodec(
    name_or_dir: str = NEUCODEC_HUB_ID,
    device: str | torch.device = "cpu",
    *,
    dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
) -> NeuCodecDecodeOnly:
    """Loads the decode path of a transformers-format NeuCodec checkpoint.

    This is ``from_pretrained`` of :class:`NeuCodecDecodeOnly`, a ``NeuCodecModel`` without
    its encoders: the same checkpoint files and loading machinery as
    ``NeuCodecModel.from_pretrained``, but the semantic and acoustic encoders (about 400M
    parameters) are never allocated and their weights are skipped.

    Args:
        name_or_dir: A hub id (default :data:`NEUCODEC_HUB_ID`) or a local directory holding
            a transformers NeuCodec checkpoint (``config.json`` with ``model_type:
            neucodec`` plus ``model.safetensors``, e.g. from ``NeuCodecModel.save_pretrained``).
        device: Device to move the model to.
        dtype: Weight dtype (default: float32).
        local_files_only: Never touch the network; ``None`` (default) follows the
            ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` environment variables.

    Returns:
        The decode-only model, in eval mode, on ``device``.

    Raises:
        ModelLoadError: On any failure (offline and not cached, unknown repository, not a
            transformers NeuCodec checkpoint, decoder weights missing, unusable device).
    """
    from pipecat_localtts.codecs.snac import hub_offline

    if local_files_only is None:
        local_files_only = hub_offline()
    name_or_dir = os.path.expanduser(str(name_or_dir))
    try:
        if os.path.isdir(name_or_dir) and not os.path.isfile(os.path.join(name_or_dir, "config.json")):
            raise FileNotFoundError(f"no config.json in {name_or_dir}")
        kwargs: dict[str, Any] = {"output_loading_info": True}
        if local_files_only:
            kwargs["local_files_only"] = True
        if dtype is not None:
            kwargs["dtype"] = dtype
        model, info = NeuCodecDecodeOnly.from_pretrained(name_or_dir, **kwargs)
        missing = sorted(info.get("missing_keys") or ())
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise ValueError(f"the checkpoint lacks {len(missing)} decoder weights ({shown})")
        model = model.to(device).eval()
    except Exception as e:  # noqa: BLE001 - every failure becomes a typed error
        where = "directory" if os.path.isdir(name_or_dir) else "hub id"
        offline = " (offline mode: only the local cache was searched)" if local_files_only else ""
        cause = " ".join(str(e).split()).rstrip(". ")
        raise ModelLoadError(
            f"could not load NeuCodec from {where} {name_or_dir!r}{offline}: {type(e).__name__}: {cause}. "
            f"Pass a directory with a transformers NeuCodec checkpoint (config.json + model.safetensors, "
            f"e.g. huggingface-cli download {NEUCODEC_HUB_ID} --local-dir DIR)."
        ) from e
    return model


def _to_numpy(audio: torch.Tensor) -> np.ndarray:
    return audio.detach().to(device="cpu", dtype=torch.float32).numpy().copy()


class NeuCodecCodec:
    """NeuCodec decoder for NeuTTS speech tokens, offline and streaming (a ``StreamingCodec``).

    Args:
        model: A :class:`NeuCodecDecodeOnly` (:func:`load_neucodec`,
            :func:`build_random_neucodec`) or a full ``NeuCodecModel``; only its
            ``quantizer`` and ``acoustic_decoder`` are kept (put in eval mode, moved to
            ``device``).
        device: Device to run on; defaults to the model's current device.
        chunk: Frames each streaming window emits once audio flows.
        first_chunk: Frames the first window covers (smaller: earlier first audio).
        lookback: Context frames decoded before a window's first emitted frame.
        lookahead: Frames past a window's last frame that must have arrived before it is
            decoded (its right context).
        overlap: Frames crossfaded (linearly) between consecutive windows.

    The streaming settings are the defaults of :meth:`stream`; see :class:`NeuCodecStream`.
    The defaults (chunk 25, first chunk 20, look-back 50, look-ahead 5, overlap 4) were chosen
    with ``benchmarks/neucodec_seams.py`` (figures next to ``DEFAULT_CHUNK``).

    Attributes:
        sample_rate: Output sample rate in Hz (24000).
        samples_per_frame: Samples decoded from one frame (480).
        codes_per_frame: Codes in one frame (1).
        codebook_size: Codes are integers in ``[0, codebook_size)`` (65536).
        device: Device the decoder runs on.
    """

    codes_per_frame = 1

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device | None = None,
        chunk: int = DEFAULT_CHUNK,
        first_chunk: int = DEFAULT_FIRST_CHUNK,
        lookback: int = DEFAULT_LOOKBACK,
        lookahead: int = DEFAULT_LOOKAHEAD,
        overlap: int = DEFAULT_OVERLAP,
    ) -> None:
        for part in ("quantizer", "acoustic_decoder", "config"):
            if not hasattr(model, part):
                raise TypeError(f"NeuCodecCodec needs a NeuCodec model with .{part}, got {type(model).__name__}")
        if device is None:
            first = next(model.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        config = model.config
        self.config = config
        self.sample_rate = int(config.output_sampling_rate)
        self.samples_per_frame = int(config.hop_length)
        self.codebook_size = int(math.prod(int(level) for level in config.quantization_levels))
        head = model.acoustic_decoder.head
        same_padding = int(head.padding) == (int(head.n_fft) - self.samples_per_frame) // 2
        if int(head.hop_length) != self.samples_per_frame or not same_padding:
            raise ValueError("NeuCodec's ISTFT head must use 'same' padding (n frames -> n * hop samples)")
        # Keep only the decode path (a full NeuCodecModel's encoders are not referenced).
        self.quantizer = model.quantizer.to(self.device).eval()
        self.decoder = model.acoustic_decoder.to(self.device).eval()
        # Validates the settings once, so a bad value fails here rather than in stream().
        NeuCodecStream._check_settings(chunk, first_chunk, lookback, lookahead, overlap)
        self.chunk = int(chunk)
        self.first_chunk = int(first_chunk)
        self.lookback = int(lookback)
        self.lookahead = int(lookahead)
        self.overlap = int(overlap)

    @property
    def lookahead_frames(self) -> int:
        """The look-ahead setting: frames that must follow a window before it is decoded.
        The first audio needs ``first_chunk + lookahead`` frames."""
        return self.lookahead

    # ------------------------------------------------------------------ validation

    def validate_frames(self, frames: Any) -> torch.Tensor:
        """Checks and converts frames to a ``long`` tensor on the codec's device.

        Args:
            frames: Integer tensor, array or sequence of codes, shape ``[n]`` or ``[n, 1]``
                (``n`` may be 0; an empty ``[]`` is zero frames).

        Returns:
            Tensor ``[n, 1]`` of dtype ``torch.long`` on :attr:`device` (never aliasing the input).

        Raises:
            ValueError: On a wrong shape, a non-integer dtype or a code outside
                ``[0, codebook_size)``.
        """
        if isinstance(frames, torch.Tensor):
            t = frames
        else:
            arr = np.asarray(frames)
            if arr.size == 0 and arr.dtype == np.float64:  # e.g. [] or np.empty((0, 1))
                arr = arr.astype(np.int64)
            if arr.dtype.kind not in "iu":
                raise ValueError(f"NeuCodec frames must be integers, got dtype {arr.dtype}")
            t = torch.from_numpy(arr.astype(np.int64, copy=False))
        if t.dtype == torch.bool or t.dtype.is_floating_point or t.dtype.is_complex:
            raise ValueError(f"NeuCodec frames must be integers, got dtype {t.dtype}")
        if t.ndim == 1:
            t = t.reshape(-1, 1)
        if t.ndim != 2 or t.shape[1] != 1:
            raise ValueError(
                f"NeuCodec frames must have shape [n] or [n, 1] (one code per frame), got shape {list(t.shape)}"
            )
        t = t.to(dtype=torch.long, copy=True)  # [n, 1]; range-checked where it is (host, normally)
        if t.numel():
            bad = (t < 0) | (t >= self.codebook_size)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise ValueError(f"NeuCodec code {int(t[i, 0])} at frame {i} is outside [0, {self.codebook_size})")
        return t.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ decoding

    def _decode_batch(self, codes: torch.Tensor) -> torch.Tensor:
        """Decodes equal-length windows in one forward pass.

        Args:
            codes: ``[B, n, 1]`` long tensor on :attr:`device`, ``n >= 1``.

        Returns:
            float32 tensor ``[B, n * samples_per_frame]`` on :attr:`device`.
        """
        with torch.inference_mode():
            latents = self.quantizer.from_codes(codes)  # [B, n, quantization_dim]
            audio = self.decoder(latents)  # [B, 1, n * spf]
        return audio[:, 0].float()

    def _decode_window(self, codes: torch.Tensor) -> torch.Tensor:
        """Decodes validated frames ``[n, 1]`` on their own: float32 ``[n * samples_per_frame]``."""
        return self._decode_batch(codes[None])[0]

    def decode_windows(self, windows: Sequence[CodecWindow | tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
        """Decodes several windows (of one or many streams) in as few forward passes as possible.

        Windows of the same length are stacked into one batch; windows of different lengths
        get one forward pass per length (padding is not exact for this decoder: see the
        module docstring). The start frame does not matter to NeuCodec (nothing in it
        depends on absolute position); it is checked only.

        Args:
            windows: ``(codes, start_frame)`` pairs: validated ``[n_i, 1]`` long codes on
                :attr:`device` (``n_i >= 1``) and the window's first frame in its utterance.

        Returns:
            One float32 tensor ``[n_i * samples_per_frame]`` on :attr:`device` per window, in
            order; each equals the window decoded alone up to float rounding (about 1e-7 in
            our tests: batched matrix products round differently).

        Raises:
            ValueError: On an empty window, a wrong shape or a negative start frame.
        """
        by_length: dict[int, list[int]] = {}
        for i, (codes, start_frame) in enumerate(windows):
            if codes.ndim != 2 or codes.shape[0] < 1 or codes.shape[1] != 1:
                raise ValueError(f"window {i}: codes must have shape [n >= 1, 1], got {list(codes.shape)}")
            if int(start_frame) < 0:
                raise ValueError(f"window {i}: start_frame must be >= 0, got {start_frame}")
            by_length.setdefault(int(codes.shape[0]), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(windows)
        for rows in by_length.values():
            codes = torch.stack([windows[i][0] for i in rows])  # [B, n, 1]
            audio = self._decode_batch(codes)  # [B, n * spf]
            for row, i in enumerate(rows):
                out[i] = audio[row]
        return out  # type: ignore[return-value]

    def decode(self, frames: Any) -> np.ndarray:
        """Offline decode of a whole utterance in one pass (the reference streaming approximates).

        Args:
            frames: ``[n]`` or ``[n, 1]`` integer codes.

        Returns:
            float32 samples ``[n * samples_per_frame]``.
        """
        codes = self.validate_frames(frames)
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        return _to_numpy(self._decode_window(codes))

    def stream(self, *, frames_per_decode: int = 1, **settings: int) -> NeuCodecStream:
        """A streaming decoder for one utterance (reusable via ``reset``).

        Args:
            frames_per_decode: Minimum frames per window once audio flows: the stream's chunk
                is ``max(chunk, frames_per_decode)`` (context is paid per window, so windows
                never get smaller than the codec's chunk).
            **settings: ``chunk``, ``first_chunk``, ``lookback``, ``lookahead``, ``overlap``
                overriding the codec's.
        """
        if int(frames_per_decode) < 1:
            raise ValueError(f"frames_per_decode must be >= 1, got {frames_per_decode}")
        chunk = settings.pop("chunk", self.chunk)
        if isinstance(chunk, (int, np.integer)) and not isinstance(chunk, bool):
            chunk = max(int(chunk), int(frames_per_decode))
        return NeuCodecStream(self, chunk=chunk, **settings)  # checks the settings


class NeuCodecStream:
    """Per-utterance streaming decode state: fixed windows, crossfaded seams.

    The schedule depends only on the settings and on the utterance length ``n``. Window
    ``k`` *owns* frames ``[b_k, b_{k+1})`` with boundaries ``b_0 = 0``, ``b_1 = first_chunk``,
    ``b_{k+1} = b_k + chunk``; the last window owns ``[b_K, n)``. It decodes frames::

        [max(0, b_k - overlap - lookback),  min(n, b_{k+1} + lookahead))

    and is decoded as soon as those frames have arrived (at the end of the utterance, with
    the frames there are). The seam between windows ``k-1`` and ``k`` is a linear crossfade
    over the ``overlap`` frames ``[b_k - overlap, b_k)``: window ``k-1`` keeps its audio of
    those frames (its tail, ``lookahead`` or more frames from its right edge) and window ``k``
    fades in over them (``lookback`` frames from its left edge). So window ``k`` emits samples
    ``[b_k - overlap, b_{k+1} - overlap)`` (the first window from 0, the last up to ``n``):
    every sample once, ``n * samples_per_frame`` in all, the length of the offline decode.

    The first window needs ``first_chunk + lookahead`` frames; when ``overlap > 0`` a window
    other than the last is decoded only once at least one frame past ``b_{k+1}`` exists, so
    with ``lookahead = 0`` that is one more. :meth:`end` makes the remaining windows due.

    Gapless playback: the first window emits ``first_chunk - overlap`` frames of audio, and
    the second needs ``chunk`` more frames from the LM, so with the LM making ``R`` frames per
    second playback has no gap after the first window when
    ``R >= 50 * chunk / (first_chunk - overlap)`` (ignoring decode time): 78/s, about 1.6x
    real time, for the defaults; later windows keep that margin.

    Driven like :class:`~pipecat_localtts.codecs.snac.SNACStream`: :meth:`push` / :meth:`flush`
    on its own, or :meth:`feed` / :meth:`end`, then :meth:`pending_window`,
    :meth:`NeuCodecCodec.decode_windows` and :meth:`accept` to batch many streams. Only the
    frames a later window still needs are buffered.

    Args:
        codec: The codec to decode with.
        chunk, first_chunk, lookback, lookahead, overlap: Frames; default the codec's
            settings (see :class:`NeuCodecCodec`). ``overlap <= min(chunk, first_chunk)``.

    Attributes:
        frames_pushed: Frames received since the last reset.
        samples_emitted: Samples returned since the last reset.
        windows_decoded: Windows accepted since the last reset.
        frames_decoded: Frames decoded in those windows (context included).
    """

    def __init__(
        self,
        codec: NeuCodecCodec,
        *,
        chunk: int | None = None,
        first_chunk: int | None = None,
        lookback: int | None = None,
        lookahead: int | None = None,
        overlap: int | None = None,
    ) -> None:
        self.codec = codec
        settings = (
            codec.chunk if chunk is None else chunk,
            codec.first_chunk if first_chunk is None else first_chunk,
            codec.lookback if lookback is None else lookback,
            codec.lookahead if lookahead is None else lookahead,
            codec.overlap if overlap is None else overlap,
        )
        self._check_settings(*settings)
        self.chunk, self.first_chunk, self.lookback, self.lookahead, self.overlap = (int(v) for v in settings)
        spf = codec.samples_per_frame
        n_fade = self.overlap * spf
        #: Weight of the new window's audio across a seam: (i + 0.5) / n_fade, 0 -> 1.
        self._fade_in = (torch.arange(n_fade, dtype=torch.float32, device=codec.device) + 0.5) / max(n_fade, 1)
        self.reset()

    @staticmethod
    def _check_settings(chunk: int, first_chunk: int, lookback: int, lookahead: int, overlap: int) -> None:
        values = dict(chunk=chunk, first_chunk=first_chunk, lookback=lookback, lookahead=lookahead, overlap=overlap)
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an int, got {value!r}")
        for name in ("chunk", "first_chunk"):
            if values[name] < 1:
                raise ValueError(f"{name} must be >= 1, got {values[name]}")
        for name in ("lookback", "lookahead", "overlap"):
            if values[name] < 0:
                raise ValueError(f"{name} must be >= 0, got {values[name]}")
        if overlap > min(chunk, first_chunk):
            raise ValueError(f"overlap ({overlap}) must be <= min(chunk, first_chunk) = {min(chunk, first_chunk)}")

    def reset(self) -> None:
        """Forgets the current utterance; the stream is ready for a new one."""
        self._buf = torch.zeros(0, 1, dtype=torch.long, device=self.codec.device)
        self._buf_start = 0  # absolute frame index of self._buf[0]
        self.frames_pushed = 0
        self.samples_emitted = 0
        self.windows_decoded = 0
        self.frames_decoded = 0
        self._ended = False
        self._next = 0  # index of the next window to decode
        self._tail: torch.Tensor | None = None  # previous window's audio of the next seam
        self._window: tuple[int, int, int] | None = None  # (k, win_start, win_end) handed out

    # ------------------------------------------------------------------ the schedule

    def boundary(self, k: int) -> int:
        """First frame owned by window ``k`` (``b_k`` in the class docstring)."""
        return 0 if k <= 0 else self.first_chunk + (k - 1) * self.chunk

    def _due(self, k: int) -> bool:
        """Whether window ``k`` can be decoded with the frames there are."""
        start, pushed = self.boundary(k), self.frames_pushed
        if start >= pushed:
            return False  # no frame of it yet (after end(): there is no window k)
        if self._ended:
            return True
        end = self.boundary(k + 1)
        return pushed >= end + self.lookahead and (self.overlap == 0 or pushed > end)

    def _is_last(self, k: int) -> bool:
        return self._ended and self.boundary(k + 1) >= self.frames_pushed

    def _emit_end(self, k: int) -> int:
        """Frame where window ``k``'s emitted samples stop."""
        return self.frames_pushed if self._is_last(k) else self.boundary(k + 1) - self.overlap

    @property
    def frames_due(self) -> int:
        """Frames whose samples the due windows would emit (all of them, one after another)."""
        k = self._next
        while self._due(k):
            k += 1
        if k == self._next:
            return 0
        return self._emit_end(k - 1) - self.samples_emitted // self.codec.samples_per_frame

    @property
    def ended(self) -> bool:
        """Whether the utterance was ended (:meth:`end` or :meth:`flush`); no more frames."""
        return self._ended

    @property
    def finished(self) -> bool:
        """Whether the utterance was ended and all its samples returned (:meth:`reset` to reuse)."""
        return self._ended and self.samples_emitted == self.frames_pushed * self.codec.samples_per_frame

    @property
    def first_audio_frames(self) -> int:
        """Frames needed before the first sample (unless the utterance ends sooner)."""
        extra = 1 if self.overlap and not self.lookahead else 0
        return self.first_chunk + self.lookahead + extra

    @property
    def buffered_frames(self) -> int:
        """Frames currently held in the code buffer."""
        return int(self._buf.shape[0])

    # ------------------------------------------------------------------ two-phase API

    def feed(self, frames: Any) -> int:
        """Buffers frames without decoding anything.

        Args:
            frames: ``[k]`` or ``[k, 1]`` integer codes (``k`` may be 0).

        Returns:
            ``k``, the number of frames added.

        Raises:
            ValueError: Invalid frames (nothing is consumed then).
            RuntimeError: The utterance was ended and the stream not reset.
        """
        if self._ended:
            raise RuntimeError("NeuCodecStream was flushed/ended; call reset() before pushing a new utterance")
        codes = self.codec.validate_frames(frames)  # [k, 1]
        k = int(codes.shape[0])
        if k:
            self._buf = torch.cat([self._buf, codes])
            self.frames_pushed += k
        return k

    def end(self) -> None:
        """Marks the end of the utterance: the remaining windows become due (no look-ahead needed)."""
        self._ended = True

    def pending_window(self) -> CodecWindow | None:
        """The window this stream would decode next, or ``None`` if none is due.

        Does not change the stream, except that this window becomes the one :meth:`accept`
        expects. Once a window is due it stays the same until accepted, whatever is fed
        or ended in between: windows never depend on how the frames arrived.

        Returns:
            ``(codes [win_frames, 1], start_frame)``, a view of the buffer; or ``None``.
        """
        k = self._next
        if not self._due(k):
            self._window = None
            return None
        win_start = max(0, self.boundary(k) - self.overlap - self.lookback)
        win_end = min(self.frames_pushed, self.boundary(k + 1) + self.lookahead)
        assert win_start >= self._buf_start, "look-back frames were dropped from the buffer"
        self._window = (k, win_start, win_end)
        codes = self._buf[win_start - self._buf_start : win_end - self._buf_start]  # [win_frames, 1]
        return CodecWindow(codes, win_start)

    def accept(self, audio: torch.Tensor) -> np.ndarray:
        """Takes the decoded audio of the last :meth:`pending_window`; returns the PCM to emit.

        Args:
            audio: ``[win_frames * samples_per_frame]`` float tensor, the window's entry of
                :meth:`NeuCodecCodec.decode_windows`.

        Returns:
            float32 samples continuing the previously returned ones (the seam crossfaded).

        Raises:
            RuntimeError: No window is pending (none was asked for, or it was accepted).
            ValueError: ``audio`` does not have the pending window's length.
        """
        return _to_numpy(self._accept(audio))

    def _accept(self, audio: torch.Tensor) -> torch.Tensor:
        if self._window is None:
            raise RuntimeError("NeuCodecStream.accept() without a pending window (call pending_window() first)")
        k, win_start, win_end = self._window
        spf = self.codec.samples_per_frame
        if tuple(audio.shape) != ((win_end - win_start) * spf,):
            raise ValueError(
                f"audio of shape {list(audio.shape)} for a window of {win_end - win_start} frames "
                f"(expected [{(win_end - win_start) * spf}])"
            )
        self._window = None
        audio = audio.to(dtype=torch.float32)

        def span(first: int, last: int) -> torch.Tensor:  # this window's samples of frames [first, last)
            return audio[(first - win_start) * spf : (last - win_start) * spf]

        start = self.boundary(k)
        pieces = []
        if self._tail is not None:  # the seam: previous window's tail fades out, this one in
            fade = span(start - self.overlap, start)
            pieces.append(torch.lerp(self._tail, fade, self._fade_in))
            self._tail = None
        emit_end = self._emit_end(k)
        pieces.append(span(start, emit_end))
        if not self._is_last(k) and self.overlap:
            self._tail = span(emit_end, emit_end + self.overlap).clone()
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        self._next = k + 1
        self.windows_decoded += 1
        self.frames_decoded += win_end - win_start
        self.samples_emitted += int(out.shape[0])
        # Drop frames no later window will decode.
        keep_from = max(0, self.boundary(k + 1) - self.overlap - self.lookback)
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start :]
            self._buf_start = keep_from
        return out

    # ------------------------------------------------------------------ one stream on its own

    def push(self, frames: Any) -> np.ndarray:
        """Adds frames and returns the samples that became ready (possibly none).

        Raises:
            ValueError: Invalid frames (nothing is consumed then).
            RuntimeError: The stream was flushed and not reset.
        """
        if self.feed(frames) == 0:
            return np.zeros(0, dtype=np.float32)
        return self._drain()

    def flush(self) -> np.ndarray:
        """Ends the utterance: returns every sample not yet emitted."""
        self.end()
        return self._drain()

    def _drain(self) -> np.ndarray:
        """Decodes the due windows one by one; their emitted samples, concatenated."""
        outputs: list[torch.Tensor] = []
        while (window := self.pending_window()) is not None:
            outputs.append(self._accept(self.codec._decode_window(window.codes)))
        if not outputs:
            return np.zeros(0, dtype=np.float32)
        return _to_numpy(outputs[0] if len(outputs) == 1 else torch.cat(outputs))
