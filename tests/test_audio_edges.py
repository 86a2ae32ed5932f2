"""Utterance edge fades: ramps at both ends, everything between unchanged, any piece sizes."""

from __future__ import annotations

import numpy as np
import pytest

from pipecat_localtts.audio import EdgeFade


def reference(x: np.ndarray, n: int) -> np.ndarray:
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)
    y = x.astype(np.float64).copy()
    m = min(n, y.size)
    y[:m] *= ramp[:m]
    y[-m:] *= ramp[::-1][-m:]
    return y


@pytest.mark.parametrize("pieces", [[2048] * 5, [1, 7, 500, 2048, 3], [120], [50, 10], [6144, 0, 2048]])
def test_streamed_fades_equal_fading_the_whole_utterance(pieces):
    n = 120
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, sum(pieces)).astype(np.float32)
    fade = EdgeFade(n)
    out, start = [], 0
    for size in pieces:
        out.append(fade.push(x[start : start + size]))
        start += size
    out.append(fade.finish())
    y = np.concatenate(out)
    assert y.size == x.size
    np.testing.assert_allclose(y, reference(x, n), atol=1e-6)
    if x.size > 2 * n:
        assert np.array_equal(y[n:-n], x[n:-n])  # the middle is untouched
        assert abs(y[0]) < 1e-3 * abs(x[0]) + 1e-3 and abs(y[-1]) < 1e-3 * abs(x[-1]) + 1e-3


def test_zero_length_fade_is_the_identity_and_holds_nothing_back():
    fade = EdgeFade(0)
    x = np.ones(100, np.float32)
    assert np.array_equal(fade.push(x), x) and fade.finish().size == 0


def test_a_fade_holds_back_only_its_own_length():
    fade = EdgeFade(120)
    assert fade.push(np.ones(2048, np.float32)).size == 2048 - 120
    assert fade.push(np.ones(2048, np.float32)).size == 2048
    assert fade.finish().size == 120
