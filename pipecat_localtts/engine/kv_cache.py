"""A KV cache of fixed-size slots, one sequence per slot, each at its own length.

The buffers are allocated once, at construction, for ``n_slots`` sequences of up to
``max_len`` tokens. A slot's valid content is its first ``lengths[slot]`` positions; what lies
beyond is stale and is never read, because attention masks it out and every write lands at a
slot's current length before that position is attended. So freeing a slot is bookkeeping
only (its length goes to 0), never a memset.

Lengths live on the host (plain ints: the scheduler reads them every step without a device
sync) and are copied to the device as a small tensor when a step needs them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SlotKVCache(nn.Module):
    """Keys and values of ``n_slots`` sequences, for every layer of a decoder.

    Args:
        n_layers: Decoder layers.
        n_slots: Sequences held at once.
        n_kv_heads: Key/value heads per layer.
        max_len: Positions per slot (prompt + generated tokens).
        head_dim: Channels per head.
        device: Device of the buffers (the model's).
        dtype: Dtype of the buffers (the model's).
    """

    def __init__(
        self,
        n_layers: int,
        n_slots: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        shape = (n_layers, n_slots, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.n_slots = n_slots
        self.n_kv_heads = n_kv_heads
        self.max_len = max_len
        self.head_dim = head_dim
        self.lengths: list[int] = [0] * n_slots  # valid positions per slot (host)

    # ------------------------------------------------------------------ bookkeeping

    def reset_slot(self, slot: int) -> None:
        """Forget a slot's sequence (its length goes to 0; the buffers are not touched)."""
        self.lengths[slot] = 0

    def room(self, slot: int) -> int:
        """Positions still free in ``slot``."""
        return self.max_len - self.lengths[slot]

    def advance(self, slots: Sequence[int]) -> None:
        """Count one more valid position in each of ``slots`` (after a decode step)."""
        for slot in slots:
            self.lengths[slot] += 1

    def lengths_tensor(self, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """Device copy of the lengths of slots ``lo..hi-1`` ([hi - lo], long)."""
        lengths = torch.tensor(self.lengths[lo:hi], dtype=torch.long)
        return lengths.to(self.k.device, non_blocking=True)

    # ------------------------------------------------------------------ writes

    def write(self, layer: int, slot: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write one slot's keys/values at positions ``start..start+n-1`` (a prefill).

        ``k``, ``v``: [H_kv, n, D]. Lengths are the caller's to update, after success.
        """
        end = start + k.shape[1]
        self.k[layer, slot, :, start:end].copy_(k)
        self.v[layer, slot, :, start:end].copy_(v)

    def row_index(self, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Flat row of each (slot, head, position) in a layer's buffer seen as [S * H_kv * L, D].

        ``slots``, ``positions``: [B] long -> [B * H_kv]; computed once per step, used by
        :meth:`write_rows` in every layer.
        """
        heads = torch.arange(self.n_kv_heads, device=slots.device)  # [H_kv]
        index = (slots[:, None] * self.n_kv_heads + heads) * self.max_len + positions[:, None]
        return index.reshape(-1)  # [B * H_kv]

    def write_rows(self, layer: int, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write one decode step's keys/values, each row at its own slot and position.

        ``index``: [B * H_kv] from :meth:`row_index`; ``k``, ``v``: [B, H_kv, D].
        """
        self.k[layer].view(-1, self.head_dim).index_copy_(0, index, k.reshape(-1, self.head_dim))
        self.v[layer].view(-1, self.head_dim).index_copy_(0, index, v.reshape(-1, self.head_dim))

    # ------------------------------------------------------------------ reads

    def view(self, layer: int, lo: int, hi: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of slots ``lo..hi-1``, first ``length`` positions (views, no copy).

        Returns two [hi - lo, H_kv, length, D] tensors.
        """
        return self.k[layer, lo:hi, :, :length], self.v[layer, lo:hi, :, :length]
