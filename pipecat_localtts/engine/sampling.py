"""Generation parameters and token sampling.

Sampling runs on the logits' device (no host round trip except reading the sampled id).
Temperature 0 is greedy and deterministic; otherwise a per-request ``torch.Generator``
seeded from :attr:`GenerationParams.seed` makes runs reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipecat_localtts.validation import check_int, check_number, check_type

SEED_MIN, SEED_END = -(2**63), 2**64  # the seeds torch.Generator.manual_seed accepts


@dataclass(frozen=True)
class GenerationParams:
    """How one utterance is generated. Defaults are the Orpheus reference's."""

    temperature: float = 0.6  # 0 = greedy; higher = more varied prosody, less stable
    top_p: float = 0.8  # nucleus: keep the smallest set of tokens with this much probability
    top_k: int = 0  # keep only the k most likely tokens; 0 = no limit
    repetition_penalty: float = 1.3  # >= 1; Orpheus needs >= 1.1 to stay stable
    seed: int | None = None  # seed of the sampler; None = fresh randomness per request
    constrain_audio_tokens: bool = True  # sample only tokens valid at the frame slot (+ stop)
    guard_seconds_per_char: float = 0.15  # max-token guard: audio seconds allowed per character
    guard_min_seconds: float = 2.0  # max-token guard floor for very short texts
    max_tokens: int = 2048  # absolute cap of generated tokens per utterance

    def __post_init__(self) -> None:
        check_number("temperature", self.temperature, "a finite number >= 0 (0 = greedy)")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        check_number("top_p", self.top_p, "a finite number in (0, 1]")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        check_int("top_k", self.top_k, "an int >= 0 (0 = no limit)")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no limit), got {self.top_k}")
        check_number("repetition_penalty", self.repetition_penalty, "a finite number >= 1")
        if not self.repetition_penalty >= 1:
            raise ValueError(f"repetition_penalty must be >= 1, got {self.repetition_penalty}")
        if self.seed is not None:
            check_int("seed", self.seed, "an int in [-2**63, 2**64) or None")
            if not SEED_MIN <= self.seed < SEED_END:
                raise ValueError(f"seed must be in [-2**63, 2**64) or None, got {self.seed}")
        check_type("constrain_audio_tokens", self.constrain_audio_tokens, bool, "a bool")
        for name in ("guard_seconds_per_char", "guard_min_seconds"):
            value = getattr(self, name)
            check_number(name, value, "a finite number > 0")
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        check_int("max_tokens", self.max_tokens, "an int >= 7 (one frame)")
        if self.max_tokens < 7:
            raise ValueError(f"max_tokens must allow at least one frame (>= 7), got {self.max_tokens}")


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator on ``device``, seeded with ``seed`` or with fresh entropy."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalise tokens already seen (as the reference does): divide positive, multiply negative.

    logits: [N] float, seen: [N] bool (same slice of the vocabulary).
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def sample_token(
    logits: torch.Tensor, params: GenerationParams, generator: torch.Generator | None
) -> torch.Tensor:
    """Sample one index from ``logits`` ([N], penalty already applied). Returns a 0-d tensor."""
    if params.temperature == 0:
        return logits.argmax()
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0 or params.top_k > 0:
        sorted_probs, order = probs.sort(descending=True)
        cumulative = sorted_probs.cumsum(-1)
        # Keep a token while the mass before it is below top_p (the first is always kept),
        # and among the top_k most likely.
        keep = ((cumulative - sorted_probs) < params.top_p) | (params.top_p >= 1.0)
        if params.top_k > 0:
            keep[params.top_k :] = False
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return order[choice[0]]
    return torch.multinomial(probs, 1, generator=generator)[0]
