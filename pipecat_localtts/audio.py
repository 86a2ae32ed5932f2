"""Utterance edges: a few milliseconds of fade where one utterance meets the next.

Each text chunk is its own utterance, decoded exactly; but where one ends and the next begins
the waveform jumps from the last sample of one to the first of the other, which can click.
:class:`EdgeFade` ramps the first and the last ``samples`` of an utterance (raised cosine)
and holds back only that many samples of the stream to do it, so it adds no latency worth
naming (5 ms by default). Everything between the edges passes through unchanged.
"""

from __future__ import annotations

import numpy as np


class EdgeFade:
    """Fades one utterance in and out as its audio streams through.

    Args:
        samples: Length of each ramp in samples (0 disables the fades).
    """

    def __init__(self, samples: int) -> None:
        if samples < 0:
            raise ValueError(f"fade length must be >= 0 samples, got {samples}")
        self.samples = samples
        t = (np.arange(samples, dtype=np.float32) + 0.5) / max(1, samples)
        self._ramp_in = (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)  # [samples], 0 -> 1
        self._tail = np.zeros(0, np.float32)
        self._position = 0  # samples of the utterance seen so far

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """The next piece of the utterance; returns what can be played now."""
        if not self.samples:
            return pcm
        if self._position < self.samples and pcm.size:  # still inside the fade-in
            pcm = pcm.astype(np.float32, copy=True)
            n = min(pcm.size, self.samples - self._position)
            pcm[:n] *= self._ramp_in[self._position : self._position + n]
        self._position += pcm.size
        joined = np.concatenate((self._tail, pcm)) if self._tail.size else pcm
        keep = max(0, joined.size - self.samples)
        self._tail = joined[keep:]
        return joined[:keep]

    def finish(self) -> np.ndarray:
        """End of the utterance: the held-back samples, faded out."""
        tail, self._tail = self._tail, np.zeros(0, np.float32)
        if tail.size:
            tail = tail * self._ramp_in[::-1][-tail.size :]
        return tail
