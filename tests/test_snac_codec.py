"""Tests of the SNAC codec wrapper: exact streaming, deterministic noise, validation, loading.

All tests use randomly initialised models (no weights are downloaded); most use the tiny
configuration, which has the real model's hop, strides and receptive field.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch

from pipecat_localtts.codecs.snac import (
    SNAC_24KHZ_CONFIG,
    SNAC_24KHZ_HUB_ID,
    PositionalNoiseBlock,
    SNACCodec,
    load_snac,
)
from pipecat_localtts.errors import ModelLoadError
from pipecat_localtts.testing import TINY_SNAC_CONFIG, build_random_snac

ATOL = 1e-4
LENGTHS = [1, 2, 3, 4, 5, 7, 20]
CHUNKINGS = ["1", "2", "3", "7", "random", "all"]


@pytest.fixture(scope="module")
def codec() -> SNACCodec:
    return SNACCodec(build_random_snac(TINY_SNAC_CONFIG, seed=0))


def random_frames(codec: SNACCodec, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, codec.codebook_size, size=(n, codec.codes_per_frame), dtype=np.int64)


_offline_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def frames_and_reference(codec: SNACCodec, n: int) -> tuple[np.ndarray, np.ndarray]:
    if n not in _offline_cache:
        frames = random_frames(codec, n, seed=n)
        _offline_cache[n] = (frames, codec.decode(frames))
    return _offline_cache[n]


def chunk_sizes(kind: str, n: int) -> list[int]:
    if kind == "all":
        return [n]
    if kind == "random":
        rng = np.random.default_rng(1000 + n)
        sizes = []
        while sum(sizes) < n:
            sizes.append(int(rng.integers(0, 6)))  # zero-sized pushes included
        sizes[-1] -= sum(sizes) - n
        return sizes
    step = int(kind)
    return [min(step, n - i) for i in range(0, n, step)]


def stream_all(codec: SNACCodec, frames: np.ndarray, sizes: list[int], frames_per_decode: int) -> np.ndarray:
    stream = codec.stream(frames_per_decode=frames_per_decode)
    out, pos = [], 0
    for size in sizes:
        out.append(stream.push(frames[pos : pos + size]))
        pos += size
    out.append(stream.flush())
    audio = np.concatenate(out)
    assert stream.frames_pushed == len(frames)
    assert stream.samples_emitted == audio.shape[0]
    return audio


# --------------------------------------------------------------------------- layout


def test_layout_constants_tiny(codec: SNACCodec) -> None:
    assert codec.sample_rate == 24000
    assert codec.codes_per_frame == 7
    assert codec.samples_per_frame == 2048
    assert codec.codebook_size == 4096
    assert codec.codes_per_codebook == (1, 2, 4)
    assert codec.context_frames == 3
    assert 2.0 < codec.receptive_field_frames <= 3.0


def test_real_size_config_layout_and_streaming() -> None:
    """Random weights at the real size: same layout, and windowed decode is still exact."""
    real = SNACCodec(build_random_snac(SNAC_24KHZ_CONFIG, seed=0))
    assert (real.sample_rate, real.codes_per_frame, real.samples_per_frame, real.codebook_size) == (24000, 7, 2048, 4096)
    assert real.context_frames == 3
    frames = random_frames(real, 12, seed=3)
    reference = real.decode(frames)
    streamed = stream_all(real, frames, [5, 7], frames_per_decode=4)
    np.testing.assert_allclose(streamed, reference, rtol=0, atol=ATOL)


def test_positional_noise_and_speed_ups_change_no_weight_and_no_output_value() -> None:
    """The codec's model decodes bitwise like SNAC itself with only the noise made positional."""
    from snac.layers import ResidualUnit, Snake1d
    from torch.nn.utils import parametrize

    from pipecat_localtts.codecs.snac import _install_positional_noise

    for config in (TINY_SNAC_CONFIG, SNAC_24KHZ_CONFIG):
        reference = build_random_snac(config, seed=0).eval()
        _install_positional_noise(reference.decoder, seed=0)
        codec = SNACCodec(build_random_snac(config, seed=0))
        modules = list(codec.model.decoder.modules())
        # The speed-ups are in place: weight norm folded, in-place snake and residuals.
        assert not any(parametrize.is_parametrized(m) for m in codec.model.modules())
        assert not any(isinstance(m, (Snake1d, ResidualUnit)) for m in modules)
        assert any(type(m).__name__ == "_DilatedDepthwiseConv1d" for m in modules)
        # Weights: the folded weight equals weight norm's g * v / |v| of the original.
        for name, module in reference.named_modules():
            if parametrize.is_parametrized(module, "weight"):
                folded = codec.model.get_submodule(name).weight
                torch.testing.assert_close(folded, module.weight, rtol=0, atol=0)
        blocks = [m for m in codec.model.modules() if isinstance(m, PositionalNoiseBlock)]
        assert [b.upsample for b in blocks] == [8, 64, 256, 512]
        frames = random_frames(codec, 9, seed=1)
        codes = torch.as_tensor(frames)
        per_codebook = codec.codebooks(codes)
        with torch.inference_mode():
            expected = reference.decode(per_codebook).reshape(-1).numpy()
        np.testing.assert_array_equal(codec.decode(frames), expected)


# --------------------------------------------------------------------------- streaming == offline


@pytest.mark.parametrize("frames_per_decode", [1, 2, 4])
@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("n", LENGTHS)
def test_stream_matches_offline(codec: SNACCodec, n: int, chunking: str, frames_per_decode: int) -> None:
    frames, reference = frames_and_reference(codec, n)
    assert reference.shape == (n * codec.samples_per_frame,)
    assert reference.dtype == np.float32
    streamed = stream_all(codec, frames, chunk_sizes(chunking, n), frames_per_decode)
    assert streamed.dtype == np.float32
    assert streamed.shape == reference.shape  # first frame and last frames present
    np.testing.assert_allclose(streamed, reference, rtol=0, atol=ATOL)


def test_long_utterance_keeps_buffer_bounded(codec: SNACCodec) -> None:
    frames = random_frames(codec, 150, seed=7)
    reference = codec.decode(frames)
    stream = codec.stream(frames_per_decode=2)
    out, peak = [], 0
    for frame in frames:
        out.append(stream.push(frame[None]))
        peak = max(peak, stream.buffered_frames)
    out.append(stream.flush())
    np.testing.assert_allclose(np.concatenate(out), reference, rtol=0, atol=ATOL)
    # left context + pending frames + right context, independent of the utterance length
    assert peak <= 2 * codec.context_frames + stream.frames_per_decode + 1


def test_too_little_context_is_not_exact() -> None:
    """Sanity check of the receptive field: 2 frames of context are not enough."""
    short = SNACCodec(build_random_snac(TINY_SNAC_CONFIG, seed=0), context_frames=2)
    frames = random_frames(short, 12, seed=5)
    streamed = stream_all(short, frames, [1] * 12, frames_per_decode=1)
    assert np.abs(streamed - short.decode(frames)).max() > 2 * ATOL


# --------------------------------------------------------------------------- emission policy


def test_first_audio_after_context_frames(codec: SNACCodec) -> None:
    frames = random_frames(codec, 10, seed=1)
    reference = codec.decode(frames)
    spf = codec.samples_per_frame
    stream = codec.stream(frames_per_decode=1)
    for i in range(codec.context_frames):
        assert stream.push(frames[i : i + 1]).size == 0, f"audio before frame 0 was final (push {i + 1})"
    first = stream.push(frames[3:4])  # 4th frame pushed: frame 0 is final
    assert first.shape == (spf,)
    np.testing.assert_allclose(first, reference[:spf], rtol=0, atol=ATOL)
    assert stream.push(frames[4:5]).shape == (spf,)


def test_frames_per_decode_batches_after_first_emission(codec: SNACCodec) -> None:
    spf = codec.samples_per_frame
    frames = random_frames(codec, 16, seed=2)
    stream = codec.stream(frames_per_decode=4)
    sizes = [stream.push(frames[i : i + 1]).size // spf for i in range(len(frames))]
    # first audio at the 4th push (frame 0 alone), then 4 frames at a time
    assert sizes == [0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4]
    assert stream.flush().size // spf == 16 - 13


def test_empty_inputs(codec: SNACCodec) -> None:
    assert codec.decode(np.zeros((0, codec.codes_per_frame), dtype=np.int64)).shape == (0,)
    assert codec.decode([]).shape == (0,)
    stream = codec.stream()
    assert stream.push(torch.zeros(0, codec.codes_per_frame, dtype=torch.long)).shape == (0,)
    assert stream.push([]).shape == (0,)
    assert stream.flush().shape == (0,)
    assert stream.frames_pushed == 0 and stream.samples_emitted == 0


def test_reset_matches_fresh_stream(codec: SNACCodec) -> None:
    a = random_frames(codec, 9, seed=11)
    b = random_frames(codec, 6, seed=12)
    stream = codec.stream(frames_per_decode=2)
    first = np.concatenate([stream.push(a[:5]), stream.push(a[5:]), stream.flush()])
    stream.reset()
    assert stream.frames_pushed == 0 and stream.samples_emitted == 0
    second = np.concatenate([stream.push(b[:2]), stream.push(b[2:]), stream.flush()])
    fresh = stream_all(codec, b, [2, 4], frames_per_decode=2)
    np.testing.assert_array_equal(second, fresh)
    np.testing.assert_allclose(first, codec.decode(a), rtol=0, atol=ATOL)
    # reset mid-utterance also forgets everything
    stream.reset()
    stream.push(a[:7])
    stream.reset()
    np.testing.assert_array_equal(np.concatenate([stream.push(b[:2]), stream.push(b[2:]), stream.flush()]), fresh)


def test_push_after_flush_requires_reset(codec: SNACCodec) -> None:
    stream = codec.stream()
    stream.push(random_frames(codec, 2))
    assert stream.flush().size == 2 * codec.samples_per_frame
    assert stream.flush().size == 0
    with pytest.raises(RuntimeError, match="reset"):
        stream.push(random_frames(codec, 1))
    stream.reset()
    assert stream.push(random_frames(codec, 4)).size == codec.samples_per_frame


# --------------------------------------------------------------------------- determinism / noise


def test_offline_decode_is_deterministic(codec: SNACCodec) -> None:
    frames = random_frames(codec, 8, seed=21)
    np.testing.assert_array_equal(codec.decode(frames), codec.decode(frames))
    other = SNACCodec(build_random_snac(TINY_SNAC_CONFIG, seed=0), noise_seed=0)
    np.testing.assert_array_equal(other.decode(frames), codec.decode(frames))


def test_random_model_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = build_random_snac(TINY_SNAC_CONFIG, seed=3).state_dict()
    b = build_random_snac(TINY_SNAC_CONFIG, seed=3).state_dict()
    c = build_random_snac(TINY_SNAC_CONFIG, seed=4).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert not build_random_snac(TINY_SNAC_CONFIG).training


def test_noise_is_applied(codec: SNACCodec) -> None:
    frames = random_frames(codec, 8, seed=22)
    reseeded = SNACCodec(build_random_snac(TINY_SNAC_CONFIG, seed=0), noise_seed=1)
    diff = np.abs(reseeded.decode(frames) - codec.decode(frames)).max()
    assert diff > 1e-3, "changing the noise seed did not change the audio: noise is not applied"


def test_output_depends_on_codes(codec: SNACCodec) -> None:
    frames = random_frames(codec, 16, seed=23)
    reference = codec.decode(frames)
    spf = codec.samples_per_frame
    for position in range(codec.codes_per_frame):  # every codebook slot matters
        changed = frames.copy()
        changed[10, position] = (changed[10, position] + 1) % codec.codebook_size
        audio = codec.decode(changed)
        assert np.abs(audio[10 * spf : 11 * spf] - reference[10 * spf : 11 * spf]).max() > 1e-4, position
        # ... and only nearby audio (the receptive field is under context_frames)
        far = (10 - codec.context_frames) * spf
        np.testing.assert_array_equal(audio[:far], reference[:far])


# --------------------------------------------------------------------------- validation


def test_input_types_are_equivalent(codec: SNACCodec) -> None:
    frames = random_frames(codec, 5, seed=24)
    expected = codec.decode(frames)
    np.testing.assert_array_equal(codec.decode(torch.from_numpy(frames)), expected)
    np.testing.assert_array_equal(codec.decode(torch.from_numpy(frames).int()), expected)
    np.testing.assert_array_equal(codec.decode(frames.tolist()), expected)
    np.testing.assert_array_equal(codec.decode(frames.astype(np.uint16)), expected)


def test_extreme_codes_accepted(codec: SNACCodec) -> None:
    frames = np.zeros((5, codec.codes_per_frame), dtype=np.int64)
    frames[::2] = codec.codebook_size - 1
    assert codec.decode(frames).shape == (5 * codec.samples_per_frame,)
    stream = codec.stream()
    assert stream.push(frames).size + stream.flush().size == 5 * codec.samples_per_frame


@pytest.mark.parametrize("bad", [-1, 4096])
def test_out_of_range_code_rejected(codec: SNACCodec, bad: int) -> None:
    frames = random_frames(codec, 3)
    frames[1, 4] = bad
    with pytest.raises(ValueError, match=r"outside \[0, 4096\)"):
        codec.decode(frames)
    stream = codec.stream()
    with pytest.raises(ValueError):
        stream.push(frames)
    assert stream.frames_pushed == 0  # nothing consumed


@pytest.mark.parametrize(
    "shape",
    [(7,), (3, 6), (3, 8), (2, 3, 7), (1,)],
)
def test_wrong_shape_rejected(codec: SNACCodec, shape: tuple[int, ...]) -> None:
    frames = np.zeros(shape, dtype=np.int64)
    with pytest.raises(ValueError, match="shape"):
        codec.decode(frames)
    with pytest.raises(ValueError, match="shape"):
        codec.stream().push(frames)


def test_float_codes_rejected(codec: SNACCodec) -> None:
    with pytest.raises(ValueError, match="integer"):
        codec.decode(np.zeros((2, 7), dtype=np.float32))
    with pytest.raises(ValueError, match="integer"):
        codec.decode(torch.zeros(2, 7))


def test_bad_frames_per_decode(codec: SNACCodec) -> None:
    with pytest.raises(ValueError):
        codec.stream(frames_per_decode=0)


# --------------------------------------------------------------------------- loading


def test_load_snac_from_local_directory(tmp_path) -> None:
    model = build_random_snac(TINY_SNAC_CONFIG, seed=5)
    (tmp_path / "config.json").write_text(json.dumps(TINY_SNAC_CONFIG))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_snac(str(tmp_path))
    assert not loaded.training
    frames = random_frames(SNACCodec(build_random_snac(TINY_SNAC_CONFIG)), 6, seed=31)
    np.testing.assert_array_equal(SNACCodec(loaded).decode(frames), SNACCodec(model).decode(frames))


def test_load_snac_directory_missing_weights(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY_SNAC_CONFIG))
    with pytest.raises(ModelLoadError, match="pytorch_model.bin"):
        load_snac(str(tmp_path))


def test_load_snac_offline_unknown_id_fails_fast(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    connects: list[object] = []

    def no_network(self, address):  # noqa: ANN001
        connects.append(address)
        raise OSError("network access attempted in test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    # Fast because it never waits on the network (no timing figure: the machine may be loaded).
    with pytest.raises(ModelLoadError) as info:
        load_snac("no-such-org/no-such-snac-model")
    assert connects == []
    message = str(info.value)
    assert "no-such-org/no-such-snac-model" in message
    assert "local directory" in message
    assert info.value.__cause__ is not None


def test_the_default_codec_hub_id_not_in_the_cache_is_a_load_error_naming_it(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(ModelLoadError) as info:
        load_snac(SNAC_24KHZ_HUB_ID, local_files_only=True)
    message = str(info.value)
    assert "hub id 'hubertsiuzdak/snac_24khz' (offline mode" in message
    assert "local directory containing config.json and pytorch_model.bin" in message


# --------------------------------------------------------------------------- incremental == offline


@pytest.mark.parametrize("real_size", [False, True], ids=["tiny", "real-size"])
def test_incremental_stream_matches_offline_for_any_chunking(real_size: bool) -> None:
    """Every layer carrying its own left context and delaying by its right padding gives the
    offline decode, from one frame to many, pushed in any pieces (fed-then-decoded too)."""
    codec = SNACCodec(build_random_snac(SNAC_24KHZ_CONFIG if real_size else TINY_SNAC_CONFIG, seed=0))
    for n in (1, 2, 5, 17):
        frames = random_frames(codec, n, seed=n)
        reference = codec.decode(frames)
        for chunks in ([1] * n, [n], [3, 2, 7, 1, 9]):
            stream = codec.incremental_stream()
            out, i = [], 0
            for k in chunks:
                if i >= n:
                    break
                out.append(stream.push(frames[i : i + k]))
                i += k
            if i < n:
                out.append(stream.push(frames[i:]))
            assert not stream.finished
            out.append(stream.flush())
            assert stream.finished and stream.samples_emitted == reference.size
            np.testing.assert_allclose(np.concatenate(out), reference, rtol=0, atol=ATOL)
    # Two-step use (what the codec thread does): feed, then decode whenever; and reuse.
    stream.reset()
    frames = random_frames(codec, 6, seed=99)
    stream.feed(frames[:4])
    stream.feed(frames[4:])
    assert stream.frames_due == 6 and stream.has_work
    first = stream.decode_pending()
    stream.end()
    rest = stream.decode_pending()
    np.testing.assert_allclose(np.concatenate([first, rest]), codec.decode(frames), rtol=0, atol=ATOL)
    with pytest.raises(RuntimeError, match="reset"):
        stream.feed(frames[:1])
    with pytest.raises(ValueError):
        codec.incremental_stream().feed([[0, 1, 2]])  # wrong shape: nothing consumed


def test_incremental_first_audio_needs_one_frame_less_than_a_window() -> None:
    codec = SNACCodec(build_random_snac(SNAC_24KHZ_CONFIG, seed=0))
    frames = random_frames(codec, 4, seed=5)
    inc, win = codec.incremental_stream(), codec.stream()
    first_inc = next(i for i in range(4) if inc.push(frames[i : i + 1]).size)
    first_win = next(i for i in range(4) if win.push(frames[i : i + 1]).size)
    assert (first_inc, first_win) == (2, 3)  # audio after frame 2 instead of frame 3
