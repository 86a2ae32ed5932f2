"""Incremental SNAC decode: each layer keeps the tail of its input, nothing is recomputed.

The windowed decode of :class:`~pipecat_localtts.codecs.snac.SNACStream` decodes every window
with 3 frames of context on each side, so a short utterance decodes about 1.6 times its
frames. Here the decoder runs layer by layer on only the new samples: every convolution keeps
the last ``2 * padding`` samples of its input (its left context) and emits the outputs whose
right context has arrived, so its padding on the right becomes a delay instead of recomputed
work; the transposed convolutions keep their last input sample; the point-wise layers (snake,
noise, 1x1 convolutions, tanh) carry nothing but the absolute position (the noise is indexed
by it). At the start every layer sees the zero padding an offline decode sees, and at the end
(:meth:`flush`) the zero padding past the last sample, so the output equals the offline decode
(up to the float rounding of convolutions over different lengths).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from pipecat_localtts.codecs.snac import SNACCodec

__all__ = ["IncrementalSNACStream"]


class _Stage:
    """One layer on a stream: ``push`` new input samples (absolute order) and whether the
    input has ended; get the outputs that became final."""

    def push(self, x: torch.Tensor, ended: bool) -> torch.Tensor:  # x: [1, C, t]
        raise NotImplementedError


class _Point(_Stage):
    """A point-wise layer; ``fn(x, start)`` gets the absolute position of ``x[..., 0]``."""

    def __init__(self, fn: Callable[[torch.Tensor, int], torch.Tensor], out_channels: int | None = None) -> None:
        self.fn = fn
        self.out_channels = out_channels  # None: as many as the input
        self.pos = 0

    def push(self, x: torch.Tensor, ended: bool) -> torch.Tensor:
        if not x.shape[-1]:
            return x if self.out_channels is None else x.new_zeros(x.shape[0], self.out_channels, 0)
        start, self.pos = self.pos, self.pos + x.shape[-1]
        return self.fn(x, start)


class _Conv(_Stage):
    """A stride-1 convolution with symmetric zero padding ``p``: output ``t`` reads inputs
    ``t - p .. t + p``. Keeps the last ``2p`` inputs."""

    def __init__(self, conv: nn.Conv1d) -> None:
        (k,), (d,), (p,) = conv.kernel_size, conv.dilation, conv.padding
        assert conv.stride == (1,) and 2 * p == d * (k - 1), conv
        self.conv, self.p, self.d = conv, p, d
        self.buf: torch.Tensor | None = None  # inputs from absolute index buf_start
        self.buf_start = 0
        self.n_in = 0
        self.n_out = 0

    def _valid(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if type(conv).__name__ == "_DilatedDepthwiseConv1d":  # shift-add, no padding
            (k,) = conv.kernel_size
            length = x.shape[-1] - self.d * (k - 1)
            w = conv.weight[:, 0, :]
            y = torch.mul(x[..., :length], w[:, 0:1])
            for t in range(1, k):
                y.addcmul_(x[..., t * self.d : t * self.d + length], w[:, t : t + 1])
            return y if conv.bias is None else y.add_(conv.bias[:, None])
        return F.conv1d(x, conv.weight, conv.bias, 1, 0, conv.dilation, conv.groups)

    def push(self, x: torch.Tensor, ended: bool) -> torch.Tensor:
        self.buf = x if self.buf is None else torch.cat((self.buf, x), dim=-1)
        self.n_in += x.shape[-1]
        target = self.n_in if ended else max(self.n_out, self.n_in - self.p)
        if target <= self.n_out:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        lo, hi = self.n_out - self.p, target + self.p  # inputs needed (absolute)
        have_lo, have_hi = max(lo, 0), min(hi, self.n_in)
        window = self.buf[..., have_lo - self.buf_start : have_hi - self.buf_start]
        if have_lo > lo or hi > have_hi:
            window = F.pad(window, (have_lo - lo, hi - have_hi))  # the edges' zero padding
        out = self._valid(window)
        self.n_out = target
        keep = max(self.buf_start, self.n_out - self.p)  # left context of the next output
        self.buf = self.buf[..., keep - self.buf_start :]
        self.buf_start = keep
        return out


class _ConvTranspose(_Stage):
    """A transposed convolution (kernel ``2s``, stride ``s``, padding ``P``, output exactly
    ``s`` times its input): output ``j`` reads inputs ``(j + P) // s - 1`` and ``(j + P) // s``."""

    def __init__(self, conv: nn.ConvTranspose1d) -> None:
        (k,), (s,), (p,), (op,) = conv.kernel_size, conv.stride, conv.padding, conv.output_padding
        assert k == 2 * s and 2 * p == s and op == 0 and conv.dilation == (1,), conv
        self.conv, self.s, self.P = conv, s, p
        self.buf: torch.Tensor | None = None
        self.buf_start = 0
        self.n_in = 0
        self.n_out = 0

    def push(self, x: torch.Tensor, ended: bool) -> torch.Tensor:
        s, P = self.s, self.P
        self.buf = x if self.buf is None else torch.cat((self.buf, x), dim=-1)
        self.n_in += x.shape[-1]
        total = self.n_in * s
        target = total if ended else max(self.n_out, min(total, self.n_in * s - P))
        if target <= self.n_out:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        i0 = max(0, (self.n_out + P) // s - 1)
        i1 = min(self.n_in, (target - 1 + P) // s + 1)
        window = self.buf[..., i0 - self.buf_start : i1 - self.buf_start]
        conv = self.conv
        full = F.conv_transpose1d(window, conv.weight, conv.bias, s, 0, 0, conv.groups, conv.dilation)
        # full[u] is output j = i0 * s + u - P
        a = self.n_out + P - i0 * s
        out = full[..., a : a + (target - self.n_out)]
        self.n_out = target
        keep = min(self.n_in, max(self.buf_start, (self.n_out + P) // s - 1))
        self.buf = self.buf[..., keep - self.buf_start :]
        self.buf_start = keep
        return out


class _Chain(_Stage):
    def __init__(self, stages: list[_Stage]) -> None:
        self.stages = stages

    def push(self, x: torch.Tensor, ended: bool) -> torch.Tensor:
        for stage in self.stages:
            x = stage.push(x, ended)
        return x


class _Residual(_Stage):
    """``x + block(x)``: ``x`` is held until the block's (delayed) output catches up."""

    def __init__(self, block: _Stage) -> None:
        self.block = block
        self.held: torch.Tensor | None = None

    def push(self, x: torch.Tensor, ended: bool) -> torch.Tensor:
        self.held = x if self.held is None else torch.cat((self.held, x), dim=-1)
        y = self.block.push(x, ended)
        n = y.shape[-1]
        out = y.add_(self.held[..., :n]) if n else y
        self.held = self.held[..., n:]
        return out


def _stages(module: nn.Module) -> _Stage:
    """The stream stage of one module of SNAC's decoder (see the module docstring)."""
    from snac.layers import DecoderBlock

    from pipecat_localtts.codecs.snac import PositionalNoiseBlock, _Residual as Res

    if isinstance(module, nn.Sequential):
        return _Chain([_stages(m) for m in module])
    if isinstance(module, DecoderBlock):
        return _stages(module.block)
    if isinstance(module, Res):
        return _Residual(_stages(module.block))
    if isinstance(module, nn.ConvTranspose1d):
        return _ConvTranspose(module)
    if isinstance(module, nn.Conv1d):
        (k,) = module.kernel_size
        if k == 1:
            return _Point(lambda x, start, m=module: m(x), module.out_channels)
        return _Conv(module)
    if isinstance(module, PositionalNoiseBlock):

        def noise(x: torch.Tensor, start: int, b: PositionalNoiseBlock = module) -> torch.Tensor:
            n = b.noise(start, x.shape[-1], x.device, x.dtype).view(1, 1, -1)
            return b.linear(x).mul_(n).add_(x)  # what PositionalNoiseBlock.forward computes

        return _Point(noise)
    # snake, tanh: point-wise modules without state
    return _Point(lambda x, start, m=module: m(x))


class IncrementalSNACStream:
    """Per-utterance incremental decode state (see the module docstring).

    Driven like :class:`~pipecat_localtts.codecs.snac.SNACStream` on its own (:meth:`push`,
    :meth:`flush`) or by a worker in two steps: :meth:`feed` frames (and :meth:`end`), then
    :meth:`decode_pending` when it suits the worker (all fed frames in one pass). It has no
    windows (:meth:`pending_window` is always ``None``, there is no ``accept``), so it cannot
    share a batched ``decode_windows`` call: the codec thread uses it when windows are not
    batched (CPU) and calls :meth:`decode_pending` per request.

    Args:
        codec: The codec whose model is decoded (its speed-ups and positional noise).
    """

    def __init__(self, codec: SNACCodec) -> None:
        self.codec = codec
        self.reset()

    def reset(self) -> None:
        """Forget the current utterance."""
        self._decoder = _stages(self.codec.model.decoder.model)
        self._pending: list[torch.Tensor] = []
        self.frames_pushed = 0
        self.samples_emitted = 0
        self._ended = False
        self._flushed = False

    @property
    def first_audio_frames(self) -> int:
        """Frames needed before any sample is final (the decoder's right reach, rounded up)."""
        return max(1, math.ceil(self.codec.receptive_field_frames))

    @property
    def frames_due(self) -> int:
        """Frames fed and not yet decoded."""
        return sum(int(c.shape[0]) for c in self._pending)

    @property
    def has_work(self) -> bool:
        """Frames to decode, or an ended utterance not yet flushed."""
        return bool(self._pending) or (self._ended and not self._flushed)

    @property
    def finished(self) -> bool:
        """Ended and every sample returned."""
        return self._flushed

    def pending_window(self) -> None:
        """Never a window: this stream decodes incrementally (:meth:`decode_pending`)."""
        return None

    def feed(self, frames: Any) -> int:
        """Buffer frames without decoding; returns how many."""
        if self._ended:
            raise RuntimeError("stream was ended; call reset() before feeding a new utterance")
        codes = self.codec.validate_frames(frames)
        k = int(codes.shape[0])
        if k:
            self._pending.append(codes)
            self.frames_pushed += k
        return k

    def end(self) -> None:
        """No more frames: the next :meth:`decode_pending` flushes."""
        self._ended = True

    @torch.inference_mode()
    def decode_pending(self) -> np.ndarray:
        """Decode every fed frame (and flush if ended); the samples that became final."""
        model = self.codec.model
        if self._pending:
            codes = self._pending[0] if len(self._pending) == 1 else torch.cat(self._pending)
            self._pending = []
            latents = model.quantizer.from_codes(self.codec.codebooks(codes))  # [1, C, 4n]
        else:
            channels = model.decoder.model[0].in_channels
            latents = torch.zeros(1, channels, 0, device=self.codec.device)
        flush = self._ended
        audio = self._decoder.push(latents, flush)  # [1, 1, t]
        self._flushed = flush
        self.samples_emitted += audio.shape[-1]
        return audio.reshape(-1).detach().to("cpu", torch.float32).numpy().copy()

    def push(self, frames: Any) -> np.ndarray:
        """Add frames; return the samples that became final."""
        if self.feed(frames) == 0:
            return np.zeros(0, dtype=np.float32)
        return self.decode_pending()

    def flush(self) -> np.ndarray:
        """End the utterance: every sample not yet returned."""
        self.end()
        return self.decode_pending()
