"""KV-cached causal decoding of a transformers language model.

One prefill over the prompt, then one token per step that reuses the cache; the prefix is
never run again. The cache is a transformers ``StaticCache`` allocated once per engine at a
fixed maximum length (static shapes); a new utterance resets it without reallocating.

The model is run as body + head: the body gives the last hidden state, and the caller picks
which rows of the output projection to apply. A speech LM only ever needs the few thousand
logits of the codes valid at the current frame slot, not the whole 156,940-entry vocabulary:
that skips most of the head's work (on the ``small`` shape it is 60 % of a step) and reads
14 % fewer weight bytes per step for Orpheus 3B. ``head_is_linear`` is verified once against
the model's own forward at warm-up, so models with logit scaling or softcapping fall back to
full logits.

On CUDA the one-token body step can be compiled (``torch.compile``, "reduce-overhead" mode:
CUDA graphs) because every input has a fixed shape and address.
"""

from __future__ import annotations

from typing import Any

import torch
from loguru import logger


class CausalLM:
    """A language model plus its KV cache, for one sequence at a time.

    Args:
        model: A transformers causal LM (e.g. ``LlamaForCausalLM``), already on its device.
        max_len: Cache length in tokens (prompt + generated).
        compile: Compile the one-token step (``None``: on CUDA only).
        compile_backend: ``torch.compile`` backend ("inductor"; "eager" checks tracing on CPU).
    """

    def __init__(
        self,
        model: Any,
        max_len: int,
        *,
        compile: bool | None = None,
        compile_backend: str = "inductor",
    ) -> None:
        from transformers import StaticCache

        self.model = model
        self.body = model.get_decoder()
        head = model.get_output_embeddings()
        bias = getattr(head, "bias", None)
        # Detached views of the parameters: same storage, no autograd.
        self.head_weight: torch.Tensor = head.weight.detach()  # [V, H]
        self.head_bias: torch.Tensor | None = None if bias is None else bias.detach()  # [V]
        self.head_is_linear = isinstance(head, torch.nn.Linear)  # confirmed by check_head()
        self.max_len = max_len
        self.device = self.head_weight.device
        self.vocab_size = int(model.config.vocab_size)
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.pos = 0  # tokens in the cache
        self._token = torch.zeros((1, 1), dtype=torch.long, device=self.device)  # input_ids: [1, 1]
        self._position = torch.zeros((1,), dtype=torch.long, device=self.device)  # cache_position: [1]
        if compile is None:
            compile = self.device.type == "cuda"
        self._step_body = self._body_step
        if compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._step_body = torch.compile(self._body_step, mode=mode, backend=compile_backend)
        self.compiled = bool(compile)

    # ------------------------------------------------------------------ cache

    @torch.inference_mode()
    def reset(self) -> None:
        """Forget the sequence (cheap: the cache buffers are zeroed, not reallocated)."""
        if self.pos:
            self.cache.reset()
        self.pos = 0

    @property
    def room(self) -> int:
        """Tokens that still fit in the cache."""
        return self.max_len - self.pos

    # ------------------------------------------------------------------ body

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Run the prompt; return the last hidden state ([H])."""
        assert self.pos == 0, "prefill after reset only"
        n = len(ids)
        if n + 1 > self.max_len:
            raise ValueError(f"prompt of {n} tokens does not fit the {self.max_len}-token cache")
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, n]
        # ``cache=``, not ``past_key_values=``: transformers 5.24 deprecates the old name (a
        # FutureWarning on the user's console) and 5.40 removes it.
        out = self.body(
            input_ids=input_ids,
            cache=self.cache,
            use_cache=True,
            cache_position=torch.arange(n, device=self.device),
        )
        self.pos = n
        return out.last_hidden_state[0, -1]

    def _body_step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        # token: [1, 1], position: [1] -> hidden: [H]
        out = self.body(
            input_ids=token, cache=self.cache, use_cache=True, cache_position=position
        )
        return out.last_hidden_state[0, -1]

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        """Append one token; return the hidden state that predicts the next one ([H])."""
        if self.pos >= self.max_len:
            raise ValueError(f"KV cache full ({self.max_len} tokens)")
        self._token.fill_(token)  # fixed addresses: what a CUDA graph replays
        self._position.fill_(self.pos)
        hidden = self._step_body(self._token, self._position)
        self.pos += 1
        return hidden

    # ------------------------------------------------------------------ head

    def head_rows(self, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight (and bias) of a subset of the output projection, for :meth:`logits`.

        A slice gives views (no copy); an index tensor gives a copy, made once by the caller.
        """
        weight = self.head_weight[rows]  # [R, H]
        bias = None if self.head_bias is None else self.head_bias[rows]  # [R]
        return weight, bias

    @staticmethod
    def logits(
        hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of the rows ``weight`` ([R, H]) for ``hidden`` ([H]) -> [R]."""
        out = weight @ hidden
        return out if bias is None else out + bias

    @torch.inference_mode()
    def full_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary ([V]), through the model's own head."""
        return self.model.get_output_embeddings()(hidden)

    @torch.inference_mode()
    def check_head(self, ids: list[int]) -> bool:
        """Confirm that body + linear head reproduce the model's own forward on ``ids``.

        Models with extra logit processing (scaling, softcapping) fail this and then use
        :meth:`full_logits` only. Leaves the cache reset.
        """
        reference = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0, -1]
        self.reset()
        hidden = self.prefill(ids)
        self.reset()
        ours = self.logits(hidden, self.head_weight, self.head_bias)
        tol = 1e-3 if reference.dtype == torch.float32 else 5e-2
        ok = self.head_is_linear and torch.allclose(ours.float(), reference.float(), atol=tol, rtol=tol)
        if not ok:
            logger.warning("LM head is not a plain linear projection: computing full logits")
        self.head_is_linear = bool(ok)
        return self.head_is_linear
