"""KV-cached causal decoding of a transformers language model.

One prefill over the prompt, then one token per step that reuses the cache; the prefix is
never run again. The cache is a transformers ``StaticCache`` allocated once per engine at a
fixed maximum length; a new utterance resets it without reallocating.
"""

from __future__ import annotations

from typing import Any

import torch


class CausalLM:
    """A language model plus its KV cache, for one sequence at a time.

    Args:
        model: A transformers causal LM (e.g. ``LlamaForCausalLM``), already on its device.
        max_len: Cache length in tokens (prompt + generated).
    """

    def __init__(self, model: Any, max_len: int) -> None:
        from transformers import StaticCache

        self.model = model
        self.max_len = max_len
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.config.vocab_size)
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.pos = 0  # tokens in the cache
        self._token = torch.zeros((1, 1), dtype=torch.long, device=self.device)  # input_ids: [1, 1]
        self._position = torch.zeros((1,), dtype=torch.long, device=self.device)  # cache_position: [1]

    @torch.inference_mode()
    def reset(self) -> None:
        """Forget the sequence (cheap: the cache buffers are zeroed, not reallocated)."""
        if self.pos:
            self.cache.reset()
        self.pos = 0

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Run the prompt; return the logits of the next token ([vocab])."""
        assert self.pos == 0, "prefill after reset only"
        n = len(ids)
        if n + 1 > self.max_len:
            raise ValueError(f"prompt of {n} tokens does not fit the {self.max_len}-token cache")
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, n]
        out = self.model(
            input_ids=input_ids,
            past_key_values=self.cache,
            use_cache=True,
            cache_position=torch.arange(n, device=self.device),
            logits_to_keep=1,
        )
        self.pos = n
        return out.logits[0, -1]

    @torch.inference_mode()
    def step(self, token: torch.Tensor | int) -> torch.Tensor:
        """Append one token and return the logits of the next one ([vocab])."""
        if self.pos >= self.max_len:
            raise ValueError(f"KV cache full ({self.max_len} tokens)")
        self._token.fill_(token)  # works for a 0-d device tensor without a host sync
        self._position.fill_(self.pos)
        out = self.model(
            input_ids=self._token,
            past_key_values=self.cache,
            use_cache=True,
            cache_position=self._position,
        )
        self.pos += 1
        return out.logits[0, -1]

    @property
    def room(self) -> int:
        """Tokens that still fit in the cache."""
        return self.max_len - self.pos
