"""Reference facts for tests, written independently of the code under test."""

from __future__ import annotations

import torch

from pipecat_localtts.models import orpheus as o


def slot_allowed(position: int) -> torch.Tensor:
    """The tokens valid at an audio position, over the whole vocabulary: the 4096 codes of the
    frame slot (128266 + 4096 * slot + code), and the stop token 128258 at slot 0."""
    mask = torch.zeros(o.VOCAB_SIZE, dtype=torch.bool)
    slot = position % 7
    mask[128266 + 4096 * slot : 128266 + 4096 * (slot + 1)] = True
    if slot == 0:
        mask[128258] = True
    return mask
