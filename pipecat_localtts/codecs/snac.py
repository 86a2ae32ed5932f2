"""SNAC codec wrapper: exact, deterministic, windowed streaming decode of SNAC code frames.

Orpheus emits SNAC codes as "frames": one coarse code of the first codebook plus the
codes of the finer codebooks that cover the same stretch of time. For the 24 kHz SNAC
(``vq_strides = [4, 2, 1]``, ``hop_length = 512``) a frame is ``1 + 2 + 4 = 7`` codes and
decodes to ``4 * 512 = 2048`` samples (85.33 ms). All of these numbers are derived here
from the model's configuration rather than hard-coded.

Streaming works by decoding short windows of frames with enough left and right context
that the kept (middle) frames are bit-for-bit what an offline decode of the whole
sequence would produce. Two things make that possible:

* The SNAC decoder is purely convolutional (no attention for the 24 kHz model) with a
  receptive field of about +-2.3 frames; we decode with ``context_frames`` (3) frames on
  each side and compute that number from the network itself.
* SNAC's ``NoiseBlock`` draws fresh ``torch.randn`` noise on every call, so two decodes of
  the same codes differ. :class:`PositionalNoiseBlock` replaces it (in our model instance
  only, keeping the same ``linear`` weights) with noise taken from
  a fixed pseudo-random sequence indexed by absolute position, so every window sees the
  same noise an offline decode would.

Windows of many streams can be decoded in one batched forward pass
(:meth:`SNACCodec.decode_windows`): each batch row gets the noise of its own absolute
positions, and windows are grouped by length (padding to a common length is not exact).
:class:`SNACStream` exposes a two-phase API (``pending_window`` / ``accept``) for that;
:class:`SNACCodec` implements :class:`~pipecat_localtts.codecs.base.StreamingCodec`.

The canonical frame layout used by this module is codebook-major::

    [c0, c1_0, c1_1, c2_0, c2_1, c2_2, c2_3]

(Orpheus interleaves the codes differently; mapping to and from its order is done
elsewhere.)
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pipecat_localtts.codecs.base import CodecWindow
from pipecat_localtts.errors import ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    from snac import SNAC

    from pipecat_localtts.codecs.snac_incremental import IncrementalSNACStream

__all__ = [
    "SNAC_24KHZ_HUB_ID",
    "SNAC_24KHZ_CONFIG",
    "PositionalNoiseBlock",
    "SNACCodec",
    "SNACStream",
    "load_snac",
    "frame_layout",
]

SNAC_24KHZ_HUB_ID = "hubertsiuzdak/snac_24khz"

#: Configuration of ``hubertsiuzdak/snac_24khz`` (its ``config.json``).
SNAC_24KHZ_CONFIG: dict[str, Any] = {
    "sampling_rate": 24000,
    "encoder_dim": 48,
    "encoder_rates": [2, 4, 8, 8],
    "decoder_dim": 1024,
    "decoder_rates": [8, 8, 4, 2],
    "attn_window_size": None,
    "codebook_size": 4096,
    "codebook_dim": 8,
    "vq_strides": [4, 2, 1],
    "noise": True,
    "depthwise": True,
}

#: Length (in positions at a layer's own time resolution) of one lazily generated block
#: of positional noise.
NOISE_BLOCK_SIZE = 8192
#: Noise blocks kept per noise layer (a streaming window touches only a few).
NOISE_CACHE_BLOCKS = 16
#: Upper bound on frames kept (not counting context) in one streaming window, so a very
#: large ``push`` is decoded in several bounded windows instead of one huge one.
MAX_FRAMES_PER_WINDOW = 64

_MASK64 = (1 << 64) - 1


def frame_layout(vq_strides: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """Derives the frame layout from SNAC's quantizer strides.

    Args:
        vq_strides: Temporal stride of each codebook at the latent resolution, coarse to
            fine, e.g. ``[4, 2, 1]``.

    Returns:
        ``(latents_per_frame, codes_per_codebook)``: latent steps covered by one frame
        (the least common multiple of the strides) and how many codes each codebook
        contributes to one frame, e.g. ``(4, (1, 2, 4))``.
    """
    if not vq_strides or any(int(s) <= 0 for s in vq_strides):
        raise ValueError(f"vq_strides must be positive integers, got {list(vq_strides)}")
    latents_per_frame = math.lcm(*(int(s) for s in vq_strides))
    return latents_per_frame, tuple(latents_per_frame // int(s) for s in vq_strides)


def _splitmix64(x: int) -> int:
    """One step of the SplitMix64 mixing function (64-bit unsigned arithmetic)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix_seed(*parts: int) -> int:
    """Hashes integers into one 64-bit generator seed (stable across runs/platforms)."""
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h


class PositionalNoiseBlock(nn.Module):
    """Drop-in replacement for ``snac.layers.NoiseBlock`` with position-indexed noise.

    SNAC's block computes ``x + randn(B, 1, T) * linear(x)``. This one computes the same
    thing, but the noise at absolute position ``p`` (at this layer's time resolution) is
    a fixed value determined by ``(seed, layer_index, p)``. The caller sets
    :attr:`offset` to the absolute position of the first element of the current input,
    which makes the output of a window identical to the matching slice of an offline
    decode. :attr:`offset` is either one int for every batch row, or one int per row
    (a sequence or 1-D tensor of length ``B``), so windows of different streams can share
    one batched decode.

    The noise is generated lazily in blocks of :data:`NOISE_BLOCK_SIZE` positions, each
    from its own ``torch.Generator`` seeded from ``(seed, layer_index, block_index)``, on
    the CPU (so it is the same on every device) and cached on the input's device. The
    cache keeps at least :data:`NOISE_CACHE_BLOCKS` blocks, and grows to hold every block
    one batched call touched (rows at far-apart positions touch different blocks).

    Args:
        linear: The original block's ``linear`` (1x1 weight-normed conv); kept as the
            submodule ``linear`` so parameter names and weights are unchanged.
        layer_index: Index of this noise layer within the decoder (0 = first).
        upsample: Time-resolution factor of this layer relative to the latent sequence.
        seed: Seed of the noise sequence.
    """

    def __init__(self, linear: nn.Module, *, layer_index: int, upsample: int, seed: int = 0) -> None:
        super().__init__()
        self.linear = linear
        self.layer_index = int(layer_index)
        self.upsample = int(upsample)
        self.seed = int(seed)
        #: Absolute position (at this layer's resolution) of the next input's first element:
        #: an int for all rows, or one int per batch row.
        self.offset: int | Sequence[int] | torch.Tensor = 0
        self._cache: OrderedDict[tuple[int, torch.device, torch.dtype], torch.Tensor] = OrderedDict()
        self._capacity = NOISE_CACHE_BLOCKS
        self._cache_lock = threading.Lock()  # incremental streams read noise from several threads

    def extra_repr(self) -> str:
        return f"layer_index={self.layer_index}, upsample={self.upsample}, seed={self.seed}"

    def _block(self, index: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (index, device, dtype)
        with self._cache_lock:
            block = self._cache.get(key)
            if block is not None:
                self._cache.move_to_end(key)
                return block
        gen = torch.Generator(device="cpu")
        gen.manual_seed(_mix_seed(self.seed, self.layer_index, index))
        block = torch.randn(NOISE_BLOCK_SIZE, generator=gen, dtype=torch.float32)  # [BS]
        block = block.to(device=device, dtype=dtype)
        with self._cache_lock:
            self._cache[key] = block
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return block

    def noise(self, start: int, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Returns the noise at absolute positions ``[start, start + length)``.

        Args:
            start: First absolute position (>= 0).
            length: Number of positions.
            device: Device of the result.
            dtype: Dtype of the result.

        Returns:
            Tensor of shape ``[length]``.
        """
        if start < 0:
            raise ValueError(f"noise positions must be >= 0, got start={start}")
        if length <= 0:
            return torch.zeros(0, device=device, dtype=dtype)
        first = start // NOISE_BLOCK_SIZE
        last = (start + length - 1) // NOISE_BLOCK_SIZE
        blocks = [self._block(i, device, dtype) for i in range(first, last + 1)]
        flat = blocks[0] if len(blocks) == 1 else torch.cat(blocks)  # [nblocks * BS]
        begin = start - first * NOISE_BLOCK_SIZE
        return flat[begin : begin + length]

    def noise_rows(
        self, starts: Sequence[int], length: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """Returns, for each row ``b``, the noise at positions ``[starts[b], starts[b] + length)``.

        Row ``b`` equals ``noise(starts[b], length, ...)``. The blocks all rows touch are
        laid end to end once and every row is gathered from them in one indexing op.

        Args:
            starts: First absolute position of each row (each >= 0).
            length: Number of positions per row.
            device: Device of the result.
            dtype: Dtype of the result.

        Returns:
            Tensor of shape ``[len(starts), length]``.
        """
        starts = [int(s) for s in starts]
        if starts and min(starts) < 0:
            raise ValueError(f"noise positions must be >= 0, got starts={starts}")
        if length <= 0 or not starts:
            return torch.zeros(len(starts), max(length, 0), device=device, dtype=dtype)
        firsts = [s // NOISE_BLOCK_SIZE for s in starts]
        lasts = [(s + length - 1) // NOISE_BLOCK_SIZE for s in starts]
        ids = sorted({i for f, last in zip(firsts, lasts) for i in range(f, last + 1)})
        # A row's blocks are consecutive integers, so they are consecutive in ``ids`` too.
        where = {block: k for k, block in enumerate(ids)}
        self._capacity = max(self._capacity, NOISE_CACHE_BLOCKS + len(ids))
        blocks = [self._block(i, device, dtype) for i in ids]
        flat = blocks[0] if len(blocks) == 1 else torch.cat(blocks)  # [U * BS]
        begins = [where[f] * NOISE_BLOCK_SIZE + s - f * NOISE_BLOCK_SIZE for s, f in zip(starts, firsts)]
        index = torch.tensor(begins, device=device)[:, None] + torch.arange(length, device=device)  # [B, T]
        return flat[index]  # [B, T]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, T]
        offset = self.offset
        if isinstance(offset, torch.Tensor):
            offset = offset.tolist()  # an int (0-d) or a list of ints
        if isinstance(offset, (int, np.integer)):
            noise = self.noise(int(offset), x.shape[-1], x.device, x.dtype).view(1, 1, -1)  # [1, 1, T]
        else:
            starts = list(offset)
            if len(starts) != x.shape[0]:
                raise ValueError(f"{len(starts)} noise offsets for a batch of {x.shape[0]} rows")
            noise = self.noise_rows(starts, x.shape[-1], x.device, x.dtype).unsqueeze(1)  # [B, 1, T]
        h = self.linear(x)  # [B, C, T]
        return h.mul_(noise).add_(x)  # x + noise * h, in place (the same arithmetic)


def _is_snac_noise_block(module: nn.Module) -> bool:
    from snac.layers import NoiseBlock

    return isinstance(module, (NoiseBlock, PositionalNoiseBlock))


def _install_positional_noise(decoder: nn.Module, seed: int) -> list[PositionalNoiseBlock]:
    """Replaces every noise block of ``decoder`` (in place) by a positional one.

    Walks the decoder in forward order, tracking the cumulative upsampling of the
    transposed convolutions, so each noise block knows its time resolution.

    Returns:
        The installed blocks, in forward order.
    """
    installed: list[PositionalNoiseBlock] = []
    upsample = 1

    def visit(parent: nn.Module) -> None:
        nonlocal upsample
        for name, child in parent.named_children():
            if isinstance(child, nn.ConvTranspose1d):
                upsample *= int(child.stride[0])
            elif _is_snac_noise_block(child):
                block = PositionalNoiseBlock(child.linear, layer_index=len(installed), upsample=upsample, seed=seed)
                setattr(parent, name, block)
                installed.append(block)
            else:
                visit(child)

    visit(decoder)
    return installed


class _Snake(nn.Module):
    """SNAC's snake activation ``x + sin(alpha x)^2 / (alpha + 1e-9)`` with one allocation.

    SNAC's version allocates four full-size temporaries; at the decoder's last stages
    (64 channels x 2048 samples per frame) those passes are half the decode time. This one
    does the same operations in the same order in one buffer, so its output is bitwise
    the same. It keeps the parameter ``alpha`` (same name, same tensor).
    """

    def __init__(self, alpha: nn.Parameter) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.mul(x, self.alpha)
        t.sin_()
        t.mul_(t)
        t.mul_((self.alpha + 1e-9).reciprocal())
        return t.add_(x)


class _Residual(nn.Module):
    """SNAC's ``ResidualUnit`` (``x + block(x)``, lengths equal) adding in place."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if y.shape != x.shape:  # SNAC crops x when the block shortens it; ours never does
            pad = (x.shape[-1] - y.shape[-1]) // 2
            return x[..., pad:-pad] + y
        return y.add_(x)


class _DilatedDepthwiseConv1d(nn.Conv1d):
    """A dilated depthwise ``Conv1d`` computed as K shifted multiply-adds.

    PyTorch's CPU kernel for dilated depthwise convolutions is several times slower than
    K passes of ``addcmul`` over the padded input; the sums run in the same order (tap by
    tap), and the result agrees with ``F.conv1d`` bitwise in our tests. Installed by
    changing the class of an existing module, so its parameters stay as they are.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, T]
        (k,), (d,), (pad,) = self.kernel_size, self.dilation, self.padding
        length = x.shape[-1]
        xp = torch.nn.functional.pad(x, (pad, pad))  # [B, C, T + 2 pad]
        w = self.weight[:, 0, :]  # [C, K]
        y = torch.mul(xp[..., :length], w[:, 0:1])
        for t in range(1, k):
            y.addcmul_(xp[..., t * d : t * d + length], w[:, t : t + 1])
        if self.bias is not None:
            y.add_(self.bias[:, None])
        return y


def _is_dilated_depthwise(conv: nn.Module) -> bool:
    if type(conv) is not nn.Conv1d:
        return False
    (k,), (s,), (d,) = conv.kernel_size, conv.stride, conv.dilation
    channels = conv.in_channels
    return (
        d > 1
        and s == 1
        and conv.groups == channels == conv.out_channels
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and 2 * conv.padding[0] == d * (k - 1)
    )


def _speed_up_decoder(model: nn.Module) -> None:
    """Make decoding cheaper without changing a single output value.

    * Weight norm is folded into plain weights once (SNAC recomputes ``g * v / |v|`` of
      every convolution on every call: for the first transposed conv alone 8M weights).
    * Snake activations and residual adds work in place (:class:`_Snake`, :class:`_Residual`).
    * Dilated depthwise convolutions run as shifted multiply-adds
      (:class:`_DilatedDepthwiseConv1d`).

    Parameter names change only where weight norm is folded (``weight`` instead of its
    ``parametrizations``); the codec is inference-only.
    """
    from snac.layers import ResidualUnit, Snake1d

    _fold_weight_norm(model)

    for module in model.decoder.modules():
        if _is_dilated_depthwise(module):
            module.__class__ = _DilatedDepthwiseConv1d

    def visit(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, Snake1d):
                setattr(parent, name, _Snake(child.alpha))
            elif isinstance(child, ResidualUnit):
                visit(child)
                setattr(parent, name, _Residual(child.block))
            else:
                visit(child)

    visit(model.decoder)


def _decoder_reach_latents(decoder: nn.Module) -> float:
    """Upper bound of the decoder's one-sided receptive field, in latent steps.

    Also checks the assumptions windowed decoding relies on: no attention, stride-1
    convolutions, and transposed convolutions whose output length is exactly
    ``stride * input length`` (so positions map exactly between resolutions).

    Raises:
        ValueError: If the decoder does not satisfy those assumptions.
    """
    from snac.attention import LocalMHA

    reach = 0.0
    upsample = 1
    for module in decoder.modules():
        if isinstance(module, LocalMHA):
            raise ValueError(
                "streaming SNAC decode needs a decoder without local attention "
                "(attn_window_size=None, as in snac_24khz)"
            )
        if isinstance(module, nn.ConvTranspose1d):
            (k,), (s,), (p,), (op,), (d,) = (
                module.kernel_size,
                module.stride,
                module.padding,
                module.output_padding,
                module.dilation,
            )
            # L_out = (L - 1) * s - 2p + d (k - 1) + op + 1 must equal L * s for every L.
            if -s - 2 * p + d * (k - 1) + op + 1 != 0:
                raise ValueError(f"transposed conv {module} does not upsample exactly by its stride")
            # Output j draws on inputs i with i*s - p + t*d = j, t in [0, k): relative to j/s
            # that is [-(d(k-1) - p)/s, p/s] input steps.
            reach += max(d * (k - 1) - p, p) / s / upsample
            upsample *= s
        elif isinstance(module, nn.Conv1d):
            (k,), (s,), (p,), (d,) = module.kernel_size, module.stride, module.padding, module.dilation
            if s != 1 or not isinstance(module.padding, tuple):
                raise ValueError(f"unexpected strided/unpadded conv in the decoder: {module}")
            reach += max(d * (k - 1) - p, p) / upsample
    return reach


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set now (read at call time)."""
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def load_snac(
    name_or_dir: str,
    device: str | torch.device = "cpu",
    *,
    local_files_only: bool | None = None,
) -> SNAC:
    """Loads pretrained SNAC weights from the Hugging Face Hub (or its cache) or a directory.

    Args:
        name_or_dir: A hub id such as :data:`SNAC_24KHZ_HUB_ID`, or a local directory
            holding ``config.json`` and ``pytorch_model.bin``.
        device: Device to move the model to.
        local_files_only: Never touch the network, use the local hub cache only. ``None``
            (default) follows the ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` environment
            variables, read at call time.

    Returns:
        The model, in eval mode, on ``device``.

    Raises:
        ModelLoadError: On any failure (offline and not cached, missing files, gated or
            unknown repository, corrupt weights, unusable device).
    """
    hint = (
        "pass a local directory containing config.json and pytorch_model.bin "
        f"(for example a download of {SNAC_24KHZ_HUB_ID!r}) instead of a hub id"
    )
    if local_files_only is None:
        local_files_only = hub_offline()
    name_or_dir = os.path.expanduser(str(name_or_dir))
    try:
        from snac import SNAC

        if os.path.isdir(name_or_dir):
            missing = [f for f in ("config.json", "pytorch_model.bin") if not os.path.isfile(os.path.join(name_or_dir, f))]
            if missing:
                raise FileNotFoundError(f"missing {', '.join(missing)} in {name_or_dir}")
            model = _load_snac_directory(SNAC, name_or_dir)
        else:
            kwargs = {"local_files_only": True} if local_files_only else {}
            model = SNAC.from_pretrained(name_or_dir, **kwargs)
        model = model.to(device).eval()
    except Exception as e:  # noqa: BLE001 - every failure becomes a typed error
        if os.path.isdir(name_or_dir):
            where = "directory"
        elif name_or_dir.startswith((".", os.sep)) or name_or_dir.count("/") > 1:
            where = "path (not an existing directory)"
        else:
            where = "hub id"
        offline = " (offline mode: only the local cache was searched)" if local_files_only else ""
        raise ModelLoadError(
            f"could not load SNAC codec from {where} {name_or_dir!r}{offline}: {type(e).__name__}: {' '.join(str(e).split()).rstrip('. ')}. "
            f"To use weights already on disk, {hint}."
        ) from e
    return model


def _fold_weight_norm(model: nn.Module) -> None:
    """Replace every weight-norm parametrization by the plain weight it computes."""
    from torch.nn.utils import parametrize

    with torch.no_grad():
        for module in list(model.modules()):
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def _load_snac_directory(snac_cls: type, directory: str) -> SNAC:
    """``SNAC.from_pretrained`` for a directory, which also reads weights saved with weight
    norm folded (``SNACCodec.model.state_dict()``) as well as the hub's layout."""
    import json

    with open(os.path.join(directory, "config.json")) as f:
        model = snac_cls(**json.load(f))
    state = torch.load(os.path.join(directory, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    if not any(".parametrizations." in key for key in state):
        _fold_weight_norm(model)
    model.load_state_dict(state)
    return model.eval()


class SNACCodec:
    """Deterministic SNAC decoder for canonical code frames, offline and streaming.

    The codec takes ownership of ``model``: its noise blocks are replaced by
    :class:`PositionalNoiseBlock` (weights unchanged), it is put in eval mode and moved
    to ``device``. Each decode call holds a lock (the noise offsets are module state), so
    one codec can serve several threads; to decode many streams at once, batch their
    windows into one :meth:`decode_windows` call instead.

    Args:
        model: A ``snac.SNAC`` (pretrained or random).
        device: Device to run on; defaults to the model's current device.
        noise_seed: Seed of the positional noise sequence.
        context_frames: Frames of left/right context per streaming window; defaults to
            the smallest count covering the decoder's receptive field (3 for snac_24khz).

    Attributes:
        sample_rate: Output sample rate in Hz.
        samples_per_frame: Samples decoded from one frame.
        codes_per_frame: Codes in one frame (all codebooks).
        codebook_size: Codes are integers in ``[0, codebook_size)``.
        latents_per_frame: Latent steps covered by one frame.
        codes_per_codebook: Codes each codebook contributes to a frame, coarse to fine.
        context_frames: Context frames used on each side of a streaming window.
    """

    def __init__(
        self,
        model: SNAC,
        *,
        device: str | torch.device | None = None,
        noise_seed: int = 0,
        context_frames: int | None = None,
    ) -> None:
        if device is None:
            first = next(model.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.noise_seed = int(noise_seed)

        self.latents_per_frame, self.codes_per_codebook = frame_layout(model.vq_strides)
        self.codes_per_frame = sum(self.codes_per_codebook)
        self.codebook_size = int(model.codebook_size)
        self.sample_rate = int(model.sampling_rate)
        upsample = math.prod(int(r) for r in model.decoder_rates)
        if upsample != int(model.hop_length):
            raise ValueError(f"decoder upsampling {upsample} != encoder hop length {int(model.hop_length)}")
        self.samples_per_latent = upsample
        self.samples_per_frame = self.latents_per_frame * upsample

        reach_frames = _decoder_reach_latents(model.decoder) / self.latents_per_frame
        self.receptive_field_frames = reach_frames
        needed = max(1, math.ceil(reach_frames))
        if context_frames is None:
            context_frames = needed
        if context_frames < 0:
            raise ValueError(f"context_frames must be >= 0, got {context_frames}")
        self.context_frames = int(context_frames)

        self._noise = _install_positional_noise(model.decoder, self.noise_seed)
        with torch.no_grad():
            _speed_up_decoder(model)
        self.model = model.to(self.device).eval()
        self.config: dict[str, Any] | None = getattr(model, "snac_config", None)
        # Offsets of each codebook's codes inside a canonical frame.
        self._code_slices = []
        start = 0
        for n in self.codes_per_codebook:
            self._code_slices.append(slice(start, start + n))
            start += n
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ validation

    def validate_frames(self, frames: Any) -> torch.Tensor:
        """Checks and converts frames to a ``long`` tensor on the codec's device.

        Args:
            frames: Integer tensor, array or nested sequence of shape
                ``[n, codes_per_frame]`` in canonical order (``n`` may be 0). An empty
                1-D input (e.g. ``[]``) is accepted as zero frames.

        Returns:
            Tensor ``[n, codes_per_frame]`` of dtype ``torch.long`` on :attr:`device`.

        Raises:
            ValueError: On a wrong shape, a non-integer dtype or a code outside
                ``[0, codebook_size)``.
        """
        if isinstance(frames, torch.Tensor):
            t = frames
        else:
            arr = np.asarray(frames)
            if arr.size == 0 and arr.dtype == np.float64:  # e.g. [] or np.empty((0, 7))
                arr = arr.astype(np.int64)
            if arr.dtype.kind not in "iu":
                raise ValueError(f"SNAC frames must be integers, got dtype {arr.dtype}")
            t = torch.from_numpy(arr.astype(np.int64, copy=False))
        if t.dtype == torch.bool or t.dtype.is_floating_point or t.dtype.is_complex:
            raise ValueError(f"SNAC frames must be integers, got dtype {t.dtype}")
        if t.ndim == 1 and t.numel() == 0:
            t = t.reshape(0, self.codes_per_frame)
        if t.ndim != 2 or t.shape[1] != self.codes_per_frame:
            layout = ", ".join(f"{n} x c{i}" for i, n in enumerate(self.codes_per_codebook))
            raise ValueError(
                f"SNAC frames must have shape [n, {self.codes_per_frame}] "
                f"(canonical order: {layout}), got shape {list(t.shape)}"
            )
        # Range-check where the codes are (host memory, normally), then copy to the device:
        # no device-to-host sync per push on a GPU.
        t = t.to(dtype=torch.long, copy=True)  # [n, codes_per_frame], never aliases input
        if t.numel():
            bad = (t < 0) | (t >= self.codebook_size)
            if bool(bad.any()):
                idx = bad.nonzero()[0].tolist()
                raise ValueError(
                    f"SNAC code {int(t[idx[0], idx[1]])} at frame {idx[0]}, position {idx[1]} is outside "
                    f"[0, {self.codebook_size})"
                )
        return t.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ decoding

    def codebooks(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """SNAC's own input for canonical frames: ``[n, codes_per_frame]`` -> one
        ``[1, n * codes_per_codebook[i]]`` tensor per codebook (for ``model.decode``)."""
        return [codes[:, sl].reshape(1, -1) for sl in self._code_slices]

    def _decode_batch(self, codes: torch.Tensor, start_frames: Sequence[int]) -> torch.Tensor:
        """Decodes equal-length windows of validated frames in one forward pass.

        Args:
            codes: ``[B, n, codes_per_frame]`` long tensor on :attr:`device`, ``n >= 1``.
            start_frames: Absolute frame index of each row's first frame (for the noise).

        Returns:
            Float tensor ``[B, n * samples_per_frame]`` on :attr:`device`.
        """
        batch, n = codes.shape[0], codes.shape[1]
        # Codebook i: [B, n, codes_per_codebook[i]] -> [B, n * codes_per_codebook[i]] (time-major).
        per_codebook = [codes[:, :, sl].reshape(batch, -1) for sl in self._code_slices]
        latent_starts = [int(f) * self.latents_per_frame for f in start_frames]
        with self._lock, torch.inference_mode():
            try:
                for block in self._noise:
                    if batch == 1:  # the scalar path: one slice, broadcast
                        block.offset = latent_starts[0] * block.upsample
                    else:
                        block.offset = [start * block.upsample for start in latent_starts]
                audio = self.model.decode(per_codebook)  # [B, 1, n * samples_per_frame]
            finally:
                if batch != 1:  # leave a scalar behind for direct ``model.decode`` calls
                    for block in self._noise:
                        block.offset = 0
        return audio.reshape(batch, -1)[:, : n * self.samples_per_frame]

    def _decode_window(self, codes: torch.Tensor, start_frame: int) -> torch.Tensor:
        """Decodes validated frames that start at absolute frame ``start_frame``.

        Args:
            codes: ``[n, codes_per_frame]`` long tensor on :attr:`device`, ``n >= 1``.
            start_frame: Absolute index of ``codes[0]`` in the utterance (for the noise).

        Returns:
            Float tensor ``[n * samples_per_frame]`` on :attr:`device`.
        """
        return self._decode_batch(codes[None], [start_frame])[0]

    def decode_windows(self, windows: Sequence[CodecWindow | tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
        """Decodes several windows (of one or many streams) in as few forward passes as possible.

        Windows of the same length are stacked into one batch (each row gets the noise of
        its own absolute positions); windows of different lengths get one forward pass per
        length. They are not padded to a common length, because padding is not exact: the
        decoder zero-pads every layer at a window's edges, as an offline decode does at the
        utterance's edges, whereas padded codes decode to non-zero activations there, which
        changes the audio within the receptive field of the padded side. That is harmless
        only on a side with full context; a flush window (truncated right context) and a
        first window (starting at frame 0) keep audio right up to their edge.

        Args:
            windows: ``(codes, start_frame)`` pairs: validated ``[n_i, codes_per_frame]``
                long codes on :attr:`device` (``n_i >= 1``; e.g. from
                :meth:`SNACStream.pending_window` or :meth:`validate_frames`) and the
                absolute index of the window's first frame in its utterance.

        Returns:
            One float tensor ``[n_i * samples_per_frame]`` on :attr:`device` per window, in
            order; each equals ``_decode_window(codes, start_frame)`` of that window alone
            (up to float rounding of the batched convolutions).

        Raises:
            ValueError: On an empty window, a wrong shape or a negative start frame.
        """
        by_length: dict[int, list[int]] = {}
        for i, (codes, start_frame) in enumerate(windows):
            if codes.ndim != 2 or codes.shape[0] < 1 or codes.shape[1] != self.codes_per_frame:
                raise ValueError(
                    f"window {i}: codes must have shape [n >= 1, {self.codes_per_frame}], got {list(codes.shape)}"
                )
            if int(start_frame) < 0:
                raise ValueError(f"window {i}: start_frame must be >= 0, got {start_frame}")
            by_length.setdefault(int(codes.shape[0]), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(windows)
        for rows in by_length.values():
            if len(rows) == 1:
                codes = windows[rows[0]][0][None]  # [1, n, F]
            else:
                codes = torch.stack([windows[i][0] for i in rows])  # [B, n, F]
            audio = self._decode_batch(codes, [windows[i][1] for i in rows])  # [B, n * spf]
            for row, i in enumerate(rows):
                out[i] = audio[row]
        return out  # type: ignore[return-value]

    def decode(self, frames: Any) -> np.ndarray:
        """Offline reference decode of a whole utterance.

        Args:
            frames: ``[n, codes_per_frame]`` integer codes, canonical order.

        Returns:
            float32 mono samples, shape ``[n * samples_per_frame]``.
        """
        codes = self.validate_frames(frames)
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        return _to_numpy(self._decode_window(codes, 0))

    @property
    def lookahead_frames(self) -> int:
        """Frames that must follow a frame before its audio is final (:attr:`context_frames`)."""
        return self.context_frames

    def incremental_stream(self) -> IncrementalSNACStream:
        """An incremental streaming decoder for one utterance (no recomputed context; see
        :mod:`~pipecat_localtts.codecs.snac_incremental`): about half the work of the
        windowed stream per utterance, one stream per call (no cross-stream batching)."""
        from pipecat_localtts.codecs.snac_incremental import IncrementalSNACStream

        return IncrementalSNACStream(self)

    def stream(self, *, frames_per_decode: int = 1) -> SNACStream:
        """Starts a streaming decoder for one utterance (reusable via ``reset``).

        Args:
            frames_per_decode: Frames decoded per window once streaming is under way.
        """
        return SNACStream(self, frames_per_decode=frames_per_decode)


def _to_numpy(audio: torch.Tensor) -> np.ndarray:
    return audio.detach().to(device="cpu", dtype=torch.float32).numpy().copy()


class SNACStream:
    """Per-utterance streaming decode state.

    Frame ``f`` is *final* once its ``context_frames`` right-context frames have been
    pushed; it is then decoded in a window with ``context_frames`` frames of left context
    (fewer at the start of the utterance, where the decoder zero-pads exactly like an
    offline decode) and its samples are returned. The first emission happens as soon as
    frame 0 is final; afterwards the stream waits until ``frames_per_decode`` frames are
    final and decodes them in one window. At the end of the utterance the remaining
    frames are decoded with the right context that exists. The concatenated output equals
    :meth:`SNACCodec.decode` of all frames.

    Two ways to drive it:

    * On its own: :meth:`push` frames and :meth:`flush` at the end; each decodes its due
      windows one by one.
    * In two phases, so a worker can batch many streams: :meth:`feed` frames (and
      :meth:`end` the utterance), take :meth:`pending_window` of each stream, decode them
      all with one :meth:`SNACCodec.decode_windows`, hand each stream its window's audio
      with :meth:`accept`; repeat while any stream has a window due.

    Both give the same windows and the same samples. Only frames still needed as left
    context are buffered, so memory stays bounded.

    Args:
        codec: The codec to decode with.
        frames_per_decode: Final frames to gather before decoding a window (>= 1).

    Attributes:
        frames_pushed: Frames received since the last reset.
        samples_emitted: Samples returned since the last reset.
        frames_emitted: Frames whose samples have been returned.
    """

    def __init__(self, codec: SNACCodec, *, frames_per_decode: int = 1) -> None:
        if int(frames_per_decode) < 1:
            raise ValueError(f"frames_per_decode must be >= 1, got {frames_per_decode}")
        self.codec = codec
        self.frames_per_decode = int(frames_per_decode)
        self.reset()

    def reset(self) -> None:
        """Forgets the current utterance; the stream is ready for a new one."""
        self._buf = torch.zeros(0, self.codec.codes_per_frame, dtype=torch.long, device=self.codec.device)
        self._buf_start = 0  # absolute frame index of self._buf[0]
        self.frames_pushed = 0
        self.frames_emitted = 0
        self.samples_emitted = 0
        self._ended = False
        # The window last handed out by pending_window(): (first kept, kept, win_start, win_end).
        self._window: tuple[int, int, int, int] | None = None

    @property
    def buffered_frames(self) -> int:
        """Frames currently held in the code buffer."""
        return int(self._buf.shape[0])

    @property
    def frames_due(self) -> int:
        """Final frames not yet emitted (all remaining ones once the utterance has ended)."""
        final = self.frames_pushed if self._ended else max(0, self.frames_pushed - self.codec.context_frames)
        return max(0, final - self.frames_emitted)

    @property
    def ended(self) -> bool:
        """Whether the utterance was ended (:meth:`end` or :meth:`flush`); no more frames."""
        return self._ended

    @property
    def finished(self) -> bool:
        """Whether the utterance was ended and all its samples returned (:meth:`reset` to reuse)."""
        return self._ended and self.frames_emitted == self.frames_pushed

    # ------------------------------------------------------------------ two-phase API

    def feed(self, frames: Any) -> int:
        """Buffers frames without decoding anything.

        Args:
            frames: ``[k, codes_per_frame]`` integer codes in canonical order (``k`` may be 0).

        Returns:
            ``k``, the number of frames added.

        Raises:
            ValueError: Invalid frames (nothing is consumed then).
            RuntimeError: The utterance was ended and the stream not reset.
        """
        if self._ended:
            raise RuntimeError("SNACStream was flushed/ended; call reset() before pushing a new utterance")
        codes = self.codec.validate_frames(frames)  # [k, codes_per_frame]
        k = int(codes.shape[0])
        if k:
            self._buf = torch.cat([self._buf, codes])  # [buffered, codes_per_frame]
            self.frames_pushed += k
        return k

    def end(self) -> None:
        """Marks the end of the utterance: the remaining frames become due (truncated right context)."""
        self._ended = True

    def pending_window(self) -> CodecWindow | None:
        """The window this stream would decode next, or ``None`` if none is due.

        Due means: the first frame is final, or ``frames_per_decode`` frames are final, or
        the utterance was ended and frames remain. A window keeps at most
        ``max(frames_per_decode, MAX_FRAMES_PER_WINDOW)`` frames; when more are due, the next
        call after :meth:`accept` returns the next window.

        The stream is not changed, except that this window becomes the one :meth:`accept`
        expects (a later call supersedes it).

        Returns:
            ``(codes [win_frames, codes_per_frame], start_frame)``, a view of the buffer, to
            pass to :meth:`SNACCodec.decode_windows`; or ``None``.
        """
        ctx = self.codec.context_frames
        final = self.frames_pushed if self._ended else max(0, self.frames_pushed - ctx)
        due = final - self.frames_emitted
        first = self.frames_emitted
        if due <= 0 or (not self._ended and first > 0 and due < self.frames_per_decode):
            self._window = None
            return None
        n = min(due, max(self.frames_per_decode, MAX_FRAMES_PER_WINDOW))
        win_start = max(0, first - ctx)
        win_end = min(self.frames_pushed, first + n + ctx)
        assert win_start >= self._buf_start, "left context was dropped from the buffer"
        self._window = (first, n, win_start, win_end)
        codes = self._buf[win_start - self._buf_start : win_end - self._buf_start]  # [win_end - win_start, F]
        return CodecWindow(codes, win_start)

    def accept(self, audio: torch.Tensor) -> np.ndarray:
        """Takes the decoded audio of the last :meth:`pending_window`; returns the PCM to emit.

        Args:
            audio: ``[win_frames * samples_per_frame]`` float tensor, the window's entry of
                :meth:`SNACCodec.decode_windows`.

        Returns:
            float32 samples of the window's kept frames, continuing the previously returned ones.

        Raises:
            RuntimeError: No window is pending (none was asked for, or it was accepted).
            ValueError: ``audio`` does not have the pending window's length.
        """
        return _to_numpy(self._accept(audio))

    def _accept(self, audio: torch.Tensor) -> torch.Tensor:
        if self._window is None:
            raise RuntimeError("SNACStream.accept() without a pending window (call pending_window() first)")
        first, n, win_start, win_end = self._window
        spf = self.codec.samples_per_frame
        if tuple(audio.shape) != ((win_end - win_start) * spf,):
            raise ValueError(
                f"audio of shape {list(audio.shape)} for a window of {win_end - win_start} frames "
                f"(expected [{(win_end - win_start) * spf}])"
            )
        self._window = None
        keep = audio[(first - win_start) * spf : (first + n - win_start) * spf]  # [n * spf]
        self.frames_emitted += n
        self.samples_emitted += keep.shape[0]
        # Drop frames that can never be left context again.
        keep_from = max(0, self.frames_emitted - self.codec.context_frames)
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start :]
            self._buf_start = keep_from
        return keep

    # ------------------------------------------------------------------ one stream on its own

    def push(self, frames: Any) -> np.ndarray:
        """Adds frames and returns the samples that became final.

        Args:
            frames: ``[k, codes_per_frame]`` integer codes in canonical order (``k`` may be 0).

        Returns:
            float32 samples (possibly empty), continuing the previously returned ones.

        Raises:
            ValueError: Invalid frames (nothing is consumed then).
            RuntimeError: The stream was flushed and not reset.
        """
        if self.feed(frames) == 0:
            return np.zeros(0, dtype=np.float32)
        return self._drain()

    def flush(self) -> np.ndarray:
        """Ends the utterance: returns every sample not yet emitted.

        The last frames are decoded without the missing right context, which matches an
        offline decode (the decoder zero-pads past the end in both cases).
        """
        self.end()
        return self._drain()

    def _drain(self) -> np.ndarray:
        """Decodes the due windows one by one; their kept samples, concatenated."""
        outputs: list[torch.Tensor] = []
        while (window := self.pending_window()) is not None:
            outputs.append(self._accept(self.codec._decode_window(*window)))
        if not outputs:
            return np.zeros(0, dtype=np.float32)
        return _to_numpy(outputs[0] if len(outputs) == 1 else torch.cat(outputs))
