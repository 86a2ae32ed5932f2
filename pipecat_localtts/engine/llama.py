"""A Llama decoder forward over a slot KV cache: one prefill per slot, batched decode steps.

``LlamaRunner`` runs a transformers ``LlamaForCausalLM`` with its own code over the
checkpoint's own weights (views of the parameters, no copy) and a :class:`SlotKVCache`.
Rows of one decode step sit at different positions: each row has its own RoPE position and
attends over exactly its own slot's valid cache through a mask. transformers'
``StaticCache`` cannot do that (one position counter per layer for the whole batch).

Attention reads the cache in place. A step attends over the slot range ``lo..hi-1`` that
holds its rows (rows of free slots inside the range are computed and dropped, so callers
should keep busy slots packed low) and over the first ``window`` positions, the longest row
rounded up to ``attend_block`` (``attend_block=max_len`` gives fixed shapes, for a CUDA graph
per batch size). Gathering each row's cache into a batch instead would copy
[B, H_kv, L, D] per layer per step: at B=16 on a CPU, about as long as the whole step.

It knows nothing about tokens, sampling or audio: token ids in, hidden states out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pipecat_localtts.engine.kv_cache import SlotKVCache

#: Decoders this runner implements: Llama, and Qwen2 (Llama with biases on q, k and v, which
#: the linear layers carry).
MODEL_TYPES = ("llama", "qwen2")

#: RoPE variants whose frequencies do not depend on the sequence length (verified in tests).
ROPE_TYPES = ("default", "linear", "llama3", "yarn")


Linear = tuple[torch.Tensor, torch.Tensor | None]  # weight [out, in], bias [out] or None


def _linear_of(module: Any) -> Linear:
    bias = None if module.bias is None else module.bias.detach()
    return module.weight.detach(), bias  # views of the parameters: same storage, no autograd


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's parameters."""

    ln1: torch.Tensor  # [H]
    q: Linear  # [Hq * D, H]
    k: Linear  # [Hkv * D, H]
    v: Linear  # [Hkv * D, H]
    o: Linear  # [H, Hq * D]
    ln2: torch.Tensor  # [H]
    gate: Linear  # [I, H]
    up: Linear  # [I, H]
    down: Linear  # [H, I]

    @classmethod
    def of(cls, layer: Any) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        return cls(
            ln1=layer.input_layernorm.weight.detach(),
            q=_linear_of(attn.q_proj),
            k=_linear_of(attn.k_proj),
            v=_linear_of(attn.v_proj),
            o=_linear_of(attn.o_proj),
            ln2=layer.post_attention_layernorm.weight.detach(),
            gate=_linear_of(mlp.gate_proj),
            up=_linear_of(mlp.up_proj),
            down=_linear_of(mlp.down_proj),
        )


def check_config(config: Any) -> str:
    """Raise ``ValueError`` naming the first feature of ``config`` this runner lacks.

    Returns:
        The RoPE type.
    """
    if config.model_type not in MODEL_TYPES:
        raise ValueError(
            f"LlamaRunner runs model_type {' or '.join(map(repr, MODEL_TYPES))} only, not {config.model_type!r}"
        )
    # Qwen2 configs carry a sliding_window size that only applies with use_sliding_window.
    sliding = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
    if sliding or any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        raise ValueError("LlamaRunner does not implement sliding-window attention")
    if config.hidden_act != "silu":
        raise ValueError(f"LlamaRunner implements hidden_act 'silu' only, not {config.hidden_act!r}")
    rope = config.rope_parameters or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ROPE_TYPES:
        implemented = ", ".join(ROPE_TYPES)
        raise ValueError(
            f"LlamaRunner does not implement rope_type {rope_type!r} (implemented: {implemented})"
        )
    return rope_type


#: Config attributes that change the logits after the output layer (softcapping: a tanh cap;
#: scaling: a multiplier or divisor), with the value besides ``None`` at which each does
#: nothing (``None``: only unset is neutral). The runner applies the head as a plain matrix,
#: so any other value would give wrong logits.
LOGIT_TRANSFORMS: dict[str, float | None] = {
    "final_logit_softcapping": None,
    "logit_softcapping": None,
    "logit_scale": 1.0,
    "logits_scaling": 1.0,
    "output_multiplier_scale": 1.0,
}


def check_head(model: Any) -> torch.nn.Linear:
    """The model's output layer, if the runner may use it as a plain matrix (+ bias).

    Structural, no forward pass: the output embedding must be exactly ``torch.nn.Linear``
    (a subclass or wrapper may change its forward) and the config must not scale or cap the
    logits (:data:`LOGIT_TRANSFORMS`).

    Raises:
        ValueError: Naming what the runner does not implement.
    """
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        kind = f"{type(head).__module__}.{type(head).__qualname__}"
        raise ValueError(
            f"LlamaRunner needs the output layer to be exactly torch.nn.Linear, not {kind} "
            "(a subclass or wrapper may transform the logits)"
        )
    for name, neutral in LOGIT_TRANSFORMS.items():
        value = getattr(model.config, name, None)
        if value is None or (neutral is not None and not isinstance(value, bool) and value == neutral):
            continue
        raise ValueError(
            f"LlamaRunner does not implement logit scaling or softcapping: the config sets {name}={value!r}"
        )
    return head


def logits_tolerance(reference: torch.Tensor) -> float:
    """How far the runner's logits may be from the model's own: relative to their scale,
    loose enough for bf16 rounding (``0.05 * (max |logit| + 1)``)."""
    return 0.05 * (float(reference.abs().max()) + 1.0)


def _rope_tables(
    config: Any, rope_type: str, max_len: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position, [L, D] each, computed as transformers' Llama does."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    if rope_type == "default":
        init = LlamaRotaryEmbedding.compute_default_rope_parameters
    else:
        init = ROPE_INIT_FUNCTIONS[rope_type]
    inv_freq, scaling = init(config)  # [D / 2] (fp32), attention scaling
    positions = torch.arange(max_len, device=device, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq.to(device=device, dtype=torch.float32)  # [L, D / 2]
    angles = torch.cat((freqs, freqs), dim=-1)  # [L, D]
    return (angles.cos() * scaling).to(dtype), (angles.sin() * scaling).to(dtype)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # In fp32, then back to the input dtype, as transformers' LlamaRMSNorm.
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [..., D]; cos, sin broadcast to it. Rotates the two halves of each head.
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Boolean mask -> 0 / -inf, once per step: SDPA would convert a boolean mask in every layer.
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return zeros.masked_fill_(~allowed, float("-inf"))


#: Batch sizes that get a static decode step (a CUDA graph on a GPU); a step runs in the
#: smallest bucket holding all its slots, padded.
GRAPH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _StaticStep:
    """The decode step of one bucket on fixed buffers: slots ``0..b-1``, the whole cache.

    Every slot of the bucket is computed; the slots not in the step are padding (their token
    0 is written at their own length, a position no valid content holds: a free slot's is 0,
    and the next prefill overwrites it). The shapes never change, so on a GPU the step is
    captured once as a CUDA graph and replayed; on a CPU (tests) it runs eagerly on the same
    buffers.
    """

    def __init__(self, runner: LlamaRunner, b: int, *, capture: bool, pool: Any = None) -> None:
        dev = runner.device
        self.b = b
        self._runner = runner
        self.tokens = torch.zeros(b, dtype=torch.long, device=dev)  # [b]
        self.lengths = torch.zeros(b, dtype=torch.long, device=dev)  # [b]
        self.slots = torch.arange(b, device=dev)  # [b]
        self.graph: Any = None
        self.out: torch.Tensor | None = None
        if capture:
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):  # warm-up runs before capture, off the default stream
                for _ in range(2):
                    self._body()
            torch.cuda.current_stream(dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.out = self._body()
            self.graph = graph

    def _body(self) -> torch.Tensor:
        r = self._runner
        return r._decode_body(self.tokens, self.slots, self.lengths, 0, r.max_len, True)

    def run(self, rows: list[int], tokens: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Hidden states of ``rows`` ([B, H]) after feeding them ``tokens``."""
        index = torch.tensor(rows, device=self.tokens.device)
        self.tokens.zero_().index_copy_(0, index, tokens)
        self.lengths.copy_(torch.tensor(lengths[: self.b], dtype=torch.long), non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
            out = self.out
        else:
            out = self._body()
        assert out is not None
        return out.index_select(0, index)


def _mlp(x: torch.Tensor, p: _Layer) -> torch.Tensor:
    return F.linear(F.silu(F.linear(x, *p.gate)) * F.linear(x, *p.up), *p.down)


class LlamaRunner:
    """A Llama decoder over a slot KV cache, for many sequences at once.

    Args:
        model: A transformers ``LlamaForCausalLM``, on its device (in eval mode).
        n_slots: Sequences the cache holds at once.
        max_len: Positions per slot (prompt + generated tokens).
        attend_block: Decode attends over the longest row's length rounded up to this
            (``max_len``: always the whole cache, fixed shapes).
        check: Compare the runner's logits of a short probe sequence with the model's own
            forward once, now (:meth:`check_logits`).

    Raises:
        ValueError: The model uses a feature this runner does not implement (its config or
            output layer, :func:`check_config` and :func:`check_head`), or its logits differ
            from the model's own forward.
    """

    def __init__(
        self, model: Any, n_slots: int, max_len: int, *, attend_block: int = 256, check: bool = True
    ) -> None:
        config = model.config
        rope_type = check_config(config)
        head = check_head(model)
        body = model.model
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.max_len = max_len
        self.attend_block = attend_block
        self.embed = body.embed_tokens.weight.detach()  # [V, H]
        self.layers = [_Layer.of(layer) for layer in body.layers]
        self.norm = body.norm.weight.detach()  # [H]
        # The caller's restricted logits multiply hidden states by rows of these.
        self.head_weight, self.head_bias = _linear_of(head)  # [V, H] (the embedding if tied), [V]
        self.device, self.dtype = self.embed.device, self.embed.dtype
        self.cache = SlotKVCache(
            len(self.layers), n_slots, self.n_kv_heads, max_len, self.head_dim,
            device=self.device, dtype=self.dtype,
        )
        self.cos, self.sin = _rope_tables(config, rope_type, max_len, self.device, self.dtype)
        self.positions = torch.arange(max_len, device=self.device)  # [L]
        self._decode_step = self._decode_body  # the callable a later torch.compile replaces
        self._static: dict[int, _StaticStep] = {}  # bucket -> fixed-shape step
        if check:
            self.check_logits(model, self._probe_ids(config))

    # ------------------------------------------------------------------ slots

    def free(self, slot: int) -> None:
        """Forget a slot's sequence (bookkeeping only)."""
        self.cache.reset_slot(slot)

    def length(self, slot: int) -> int:
        """Tokens in a slot's cache."""
        return self.cache.lengths[slot]

    # ------------------------------------------------------------------ prefill

    @torch.inference_mode()
    def prefill(self, slot: int, ids: Sequence[int], start: int = 0) -> torch.Tensor:
        """Run ``ids`` for one slot at positions ``start..start+n-1``; return the last hidden state.

        The slot keeps its first ``start`` tokens (0: a new sequence; the current length:
        a chunked prefill continuing it). Its length is set to ``start`` first and to
        ``start + n`` only after success, so a failure leaves it at ``start``.

        Returns:
            The final-norm hidden state of the last token ([H]).
        """
        n, end = len(ids), start + len(ids)
        if not 0 <= slot < self.cache.n_slots:
            raise ValueError(f"no slot {slot} (the cache has {self.cache.n_slots})")
        if n == 0 or not 0 <= start <= self.cache.lengths[slot] or end > self.max_len:
            raise ValueError(
                f"cannot prefill {n} tokens at {start} into slot {slot} "
                f"(length {self.cache.lengths[slot]}, {self.max_len} positions)"
            )
        self.cache.lengths[slot] = start
        x = F.embedding(torch.tensor(list(ids), device=self.device), self.embed)  # [n, H]
        cos, sin = self.cos[start:end], self.sin[start:end]  # [n, D]
        causal = self.positions[:end] <= self.positions[start:end, None]  # [n, end]
        mask = _additive(causal, self.dtype)
        hq, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        for i, p in enumerate(self.layers):
            h = _rms_norm(x, p.ln1, self.eps)
            q = F.linear(h, *p.q).view(n, hq, d).transpose(0, 1)  # [Hq, n, D]
            k = F.linear(h, *p.k).view(n, hkv, d).transpose(0, 1)  # [Hkv, n, D]
            v = F.linear(h, *p.v).view(n, hkv, d).transpose(0, 1)
            self.cache.write(i, slot, start, _rope(k, cos, sin), v)
            keys, values = self.cache.view(i, slot, slot + 1, end)  # [1, Hkv, end, D]
            q = _rope(q, cos, sin)[None]  # [1, Hq, n, D]
            a = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=self.scale, enable_gqa=True
            )  # [1, Hq, n, D]
            x = x + F.linear(a[0].transpose(0, 1).reshape(n, hq * d), *p.o)
            x = x + _mlp(_rms_norm(x, p.ln2, self.eps), p)
        self.cache.lengths[slot] = end
        return _rms_norm(x[-1], self.norm, self.eps)

    @torch.inference_mode()
    def prefill_many(self, slots: Sequence[int], prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Prefill several new sequences (each from position 0) in one forward pass.

        The prompts are laid end to end and attend block-diagonally (each to its own
        earlier tokens), so each gets what :meth:`prefill` alone would give it (up to the
        float rounding of a larger matmul). Their slots' lengths are set only after success.

        Returns:
            The final-norm hidden state of each prompt's last token ([n, H]).
        """
        if len(slots) != len(prompts) or not slots or len(set(slots)) != len(slots):
            raise ValueError(f"prefill_many needs distinct slots, one per prompt: {list(slots)}")
        lens = [len(p) for p in prompts]
        for slot, n in zip(slots, lens, strict=True):
            if not 0 <= slot < self.cache.n_slots or not 0 < n <= self.max_len:
                raise ValueError(f"cannot prefill {n} tokens into slot {slot}")
            self.cache.lengths[slot] = 0
        dev = self.device
        ids = torch.tensor([t for p in prompts for t in p], device=dev)  # [T]
        pos = torch.cat([torch.arange(n, device=dev) for n in lens])  # [T]
        seq = torch.repeat_interleave(torch.arange(len(lens), device=dev), torch.tensor(lens, device=dev))  # [T]
        mask = _additive((seq[:, None] == seq[None, :]) & (pos[None, :] <= pos[:, None]), self.dtype)  # [T, T]
        starts = [sum(lens[:i]) for i in range(len(lens))]
        total = len(pos)
        x = F.embedding(ids, self.embed)  # [T, H]
        cos, sin = self.cos[pos], self.sin[pos]  # [T, D]
        hq, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        for i, p in enumerate(self.layers):
            h = _rms_norm(x, p.ln1, self.eps)
            q = _rope(F.linear(h, *p.q).view(total, hq, d).transpose(0, 1), cos, sin)  # [Hq, T, D]
            k = _rope(F.linear(h, *p.k).view(total, hkv, d).transpose(0, 1), cos, sin)  # [Hkv, T, D]
            v = F.linear(h, *p.v).view(total, hkv, d).transpose(0, 1)
            for slot, start, n in zip(slots, starts, lens, strict=True):
                self.cache.write(i, slot, 0, k[:, start : start + n], v[:, start : start + n])
            a = F.scaled_dot_product_attention(
                q[None], k[None], v[None], attn_mask=mask, scale=self.scale, enable_gqa=True
            )  # [1, Hq, T, D]
            x = x + F.linear(a[0].transpose(0, 1).reshape(total, hq * d), *p.o)
            x = x + _mlp(_rms_norm(x, p.ln2, self.eps), p)
        for slot, n in zip(slots, lens, strict=True):
            self.cache.lengths[slot] = n
        last = torch.tensor([start + n - 1 for start, n in zip(starts, lens, strict=True)], device=dev)
        return _rms_norm(x.index_select(0, last), self.norm, self.eps)

    # ------------------------------------------------------------------ decode

    @torch.inference_mode()
    def decode(self, slots: Sequence[int] | torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token to each of ``slots``, each at its slot's own position.

        Args:
            slots: Distinct slot of each row ([B]; a host list avoids a device sync).
            tokens: Token of each row ([B] long, on the model's device).

        Returns:
            The final-norm hidden states that predict each row's next token ([B, H]).
        """
        rows = slots.tolist() if isinstance(slots, torch.Tensor) else list(slots)
        lengths = self.cache.lengths
        if not rows or len(set(rows)) != len(rows) or not 0 <= min(rows) <= max(rows) < len(lengths):
            raise ValueError(f"cannot decode slots {rows}: empty, repeated or out of range")
        lo, hi = min(rows), max(rows) + 1
        longest = max(lengths[s] for s in rows) + 1
        if longest > self.max_len:
            raise ValueError(f"cannot decode slots {rows}: a cache is full ({self.max_len} positions)")
        static = next((self._static[b] for b in sorted(self._static) if b >= hi), None)
        if static is not None:  # the bucket's fixed-shape step (a CUDA graph on a GPU)
            hidden = static.run(rows, tokens, lengths)
            self.cache.advance(rows)
            return hidden
        window = min(self.max_len, -(-longest // self.attend_block) * self.attend_block)
        # One small host->device copy: each row's slot, then the lengths of slots lo..hi-1.
        host = torch.tensor(rows + lengths[lo:hi], dtype=torch.long)
        host = host.to(self.device, non_blocking=True)
        packed = rows == list(range(lo, hi))  # rows are the range itself: no scatter
        b = len(rows)
        hidden = self._decode_step(tokens, host[:b], host[b:], lo, window, packed)
        self.cache.advance(rows)
        return hidden

    # ------------------------------------------------------------------ static steps

    @property
    def static_buckets(self) -> tuple[int, ...]:
        """Buckets with a static step (a CUDA graph on a GPU)."""
        return tuple(sorted(self._static))

    @property
    def cuda_graphs(self) -> bool:
        """Whether decode steps replay captured CUDA graphs."""
        return any(step.graph is not None for step in self._static.values())

    @torch.inference_mode()
    def capture(self, buckets: Sequence[int] = GRAPH_BUCKETS, *, cuda_graphs: bool | None = None) -> bool:
        """Build a fixed-shape decode step per bucket (``<= n_slots``; the largest is always
        ``n_slots``), captured as CUDA graphs when ``cuda_graphs`` (default: on CUDA).

        Call it while no slot holds a sequence (at warm-up). A failure to capture logs one
        warning and leaves the dynamic (eager) step in place; it never fails a start.

        Returns:
            Whether the static steps are in use.
        """
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        n = self.cache.n_slots
        chosen = sorted({b for b in buckets if b < n} | {n})
        if any(self.cache.lengths):
            raise RuntimeError("capture() needs an empty cache (call it before serving)")
        steps: dict[int, _StaticStep] = {}
        try:
            pool = torch.cuda.graph_pool_handle() if cuda_graphs else None
            for b in reversed(chosen):  # largest first: the smaller ones reuse its memory pool
                steps[b] = _StaticStep(self, b, capture=cuda_graphs, pool=pool)
        except Exception as e:  # noqa: BLE001 - any capture failure: stay eager
            from loguru import logger

            logger.warning(f"LlamaRunner: CUDA graph capture failed ({type(e).__name__}: {e}); decoding eagerly")
            self._static = {}
            return False
        finally:
            for slot in range(n):  # warm-up and capture wrote padding at position 0 only
                self.cache.reset_slot(slot)
        self._static = steps
        return True

    def _decode_body(
        self,
        tokens: torch.Tensor,
        slots: torch.Tensor,
        lengths: torch.Tensor,
        lo: int,
        window: int,
        packed: bool,
    ) -> torch.Tensor:
        # tokens, slots: [B]; lengths: [R] of slots lo..lo+R-1 (R >= B) -> hidden: [B, H]
        b, r = tokens.shape[0], lengths.shape[0]
        hq, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        local = slots - lo  # [B] row of each slot in the range
        positions = lengths[local]  # [B] where each row's token goes
        cos, sin = self.cos[positions], self.sin[positions]  # [B, D]
        index = self.cache.row_index(slots, positions)  # [B * Hkv]
        # Each range row sees its valid cache plus the position being written ([R, 1, 1, W]);
        # rows of slots not in the step see at least position 0, so no row is all -inf.
        allowed = self.positions[:window] <= lengths[:, None]  # [R, W]
        mask = _additive(allowed, self.dtype)[:, None, None]
        x = F.embedding(tokens, self.embed)  # [B, H]
        for i, p in enumerate(self.layers):
            h = _rms_norm(x, p.ln1, self.eps)
            # The Hq / Hkv query heads that share a kv head attend as that head's query rows.
            q = F.linear(h, *p.q).view(b, hkv, hq // hkv, d)  # [B, Hkv, G, D]
            k = F.linear(h, *p.k).view(b, hkv, d)  # [B, Hkv, D]
            v = F.linear(h, *p.v).view(b, hkv, d)
            q = _rope(q, cos[:, None, None], sin[:, None, None])
            k = _rope(k, cos[:, None], sin[:, None])
            self.cache.write_rows(i, index, k, v)
            keys, values = self.cache.view(i, lo, lo + r, window)  # [R, Hkv, W, D]
            if not packed:
                q = q.new_zeros(r, hkv, hq // hkv, d).index_copy_(0, local, q)  # [R, Hkv, G, D]
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale)
            if not packed:
                a = a.index_select(0, local)  # [B, Hkv, G, D]
            x = x + F.linear(a.reshape(b, hq * d), *p.o)
            x = x + _mlp(_rms_norm(x, p.ln2, self.eps), p)
        return _rms_norm(x, self.norm, self.eps)

    # ------------------------------------------------------------------ head

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary: [..., H] -> [..., V]."""
        return F.linear(hidden, self.head_weight, self.head_bias)

    # ------------------------------------------------------------------ checks

    def _probe_ids(self, config: Any) -> list[int]:
        """A short id sequence spread over the vocabulary (any ids do: the head is compared)."""
        vocab = int(config.vocab_size)
        n = max(1, min(8, self.max_len))
        return [(i * 7919 + 1) % vocab for i in range(n)]

    @torch.inference_mode()
    def check_logits(self, model: Any, ids: Sequence[int], slot: int = 0) -> float:
        """Compare the runner's last-token logits for ``ids`` with ``model``'s own forward.

        A loose check (:func:`logits_tolerance`): it catches a model that computes its
        logits some other way (a hook, a changed forward), not bf16 rounding. Prefills
        ``slot`` (it must be empty) and frees it again.

        Returns:
            The largest absolute difference.

        Raises:
            ValueError: The logits differ by more than the tolerance (never a silent fallback).
        """
        if self.length(slot) != 0:
            raise ValueError(f"check_logits needs an empty slot; slot {slot} holds {self.length(slot)} tokens")
        input_ids = torch.tensor([list(ids)], device=self.device)
        reference = model(input_ids=input_ids, logits_to_keep=1).logits[0, -1].float()  # [V]
        try:
            ours = self.logits(self.prefill(slot, ids)).float()  # [V]
        finally:
            self.free(slot)
        if ours.shape != reference.shape:
            raise ValueError(
                f"LlamaRunner gives {ours.shape[-1]} logits, the model's own forward {reference.shape[-1]}"
            )
        diff = float((ours - reference).abs().max())
        tolerance = logits_tolerance(reference)
        if not diff <= tolerance:  # NaN fails too
            raise ValueError(
                f"LlamaRunner's logits differ from the model's own forward by {diff:.4g} "
                f"(tolerance {tolerance:.4g}): the model computes its logits in a way this runner "
                "does not implement"
            )
        return diff
