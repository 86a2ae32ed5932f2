"""Tests of batched SNAC decoding: many streams' windows in one call, still exact per stream.

Uses the tiny random SNAC (real hop, strides and receptive field). "Exact" means within
``ATOL`` of the offline decode of each stream's own codes: batched convolutions round
differently from batch-1 ones (about 1e-6 here), so batched rows are not bitwise equal.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipecat_localtts.codecs.base import CodecStream, CodecWindow, StreamingCodec
from pipecat_localtts.codecs.snac import (
    NOISE_BLOCK_SIZE,
    NOISE_CACHE_BLOCKS,
    PositionalNoiseBlock,
    SNACCodec,
)
from pipecat_localtts.testing import TINY_SNAC_CONFIG, build_random_snac

ATOL = 1e-4


@pytest.fixture(scope="module")
def codec() -> SNACCodec:
    return SNACCodec(build_random_snac(TINY_SNAC_CONFIG, seed=0))


def random_frames(codec: SNACCodec, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, codec.codebook_size, size=(n, codec.codes_per_frame), dtype=np.int64)


def as_numpy(audio: torch.Tensor) -> np.ndarray:
    return audio.detach().cpu().numpy()


# --------------------------------------------------------------------------- protocol


def test_snac_codec_and_stream_implement_the_protocols(codec: SNACCodec) -> None:
    assert isinstance(codec, StreamingCodec)
    assert isinstance(codec.stream(frames_per_decode=2), CodecStream)
    assert codec.lookahead_frames == codec.context_frames
    assert not isinstance(object(), StreamingCodec)


# --------------------------------------------------------------------------- per-row noise


def noise_blocks(codec: SNACCodec) -> list[PositionalNoiseBlock]:
    return [m for m in codec.model.modules() if isinstance(m, PositionalNoiseBlock)]


def test_noise_rows_give_each_row_the_noise_of_its_own_positions(codec: SNACCodec) -> None:
    block = noise_blocks(codec)[-1]
    length = NOISE_BLOCK_SIZE + 100  # every row spans two or three blocks
    # far apart, crossing block boundaries, repeated, and starting at 0
    starts = [0, NOISE_BLOCK_SIZE - 7, 5 * NOISE_BLOCK_SIZE + 3, 0, 40 * NOISE_BLOCK_SIZE - 1]
    rows = block.noise_rows(starts, length, torch.device("cpu"), torch.float32)
    assert rows.shape == (len(starts), length)
    for row, start in zip(rows, starts):
        expected = block.noise(start, length, torch.device("cpu"), torch.float32)
        torch.testing.assert_close(row, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=">= 0"):
        block.noise_rows([3, -1], 4, torch.device("cpu"), torch.float32)


def test_noise_forward_with_per_row_offsets_equals_each_row_alone(codec: SNACCodec) -> None:
    block = noise_blocks(codec)[1]
    x = torch.randn(3, block.linear.in_channels, 300, generator=torch.Generator().manual_seed(0))  # [B, C, T]
    offsets = [17, 3 * NOISE_BLOCK_SIZE - 50, 0]
    with torch.inference_mode():
        block.offset = offsets
        batched = block(x)
        block.offset = torch.tensor(offsets)
        from_tensor = block(x)
        alone = []
        for row, offset in zip(x, offsets):
            block.offset = offset
            alone.append(block(row[None]))
        block.offset = [1, 2]
        with pytest.raises(ValueError, match="2 noise offsets for a batch of 3"):
            block(x)
    block.offset = 0
    torch.testing.assert_close(batched, from_tensor, rtol=0, atol=0)
    torch.testing.assert_close(batched, torch.cat(alone), rtol=0, atol=1e-6)


def test_noise_cache_holds_every_block_of_one_batched_call(codec: SNACCodec) -> None:
    block = PositionalNoiseBlock(noise_blocks(codec)[-1].linear, layer_index=9, upsample=512)
    starts = [i * 10 * NOISE_BLOCK_SIZE for i in range(NOISE_CACHE_BLOCKS)]  # 2 blocks per row
    block.noise_rows(starts, NOISE_BLOCK_SIZE + 1, torch.device("cpu"), torch.float32)
    assert len(block._cache) == 2 * NOISE_CACHE_BLOCKS  # nothing evicted: the next call regenerates nothing


# --------------------------------------------------------------------------- decode_windows


def test_batch_of_one_is_todays_path(codec: SNACCodec) -> None:
    codes = codec.validate_frames(random_frames(codec, 7, seed=1))
    (audio,) = codec.decode_windows([(codes, 12)])
    # today's path: one scalar offset per noise block, a batch-1 model.decode
    with torch.inference_mode():
        for block in noise_blocks(codec):
            block.offset = 12 * codec.latents_per_frame * block.upsample
        expected = codec.model.decode([codes[:, sl].reshape(1, -1) for sl in codec._code_slices]).reshape(-1)
    torch.testing.assert_close(audio, expected, rtol=0, atol=0)
    assert codec.decode_windows([]) == []


def test_equal_length_windows_of_different_streams_match_each_alone(codec: SNACCodec) -> None:
    starts = [0, 1, 5, 100, 1000, 5000, 3, 3]  # repeated starts too
    codes = [codec.validate_frames(random_frames(codec, 7, seed=10 + i)) for i in range(len(starts))]
    windows = [CodecWindow(c, start) for c, start in zip(codes, starts)]
    batched = codec.decode_windows(windows)
    assert [a.shape for a in batched] == [(7 * codec.samples_per_frame,)] * len(windows)
    for window, audio in zip(windows, batched):
        np.testing.assert_allclose(as_numpy(audio), as_numpy(codec._decode_window(*window)), rtol=0, atol=ATOL)
    # the rows really use their own positions: the same codes at another start differ
    moved = codec.decode_windows([(windows[3].codes, 101)])[0]
    assert np.abs(as_numpy(moved) - as_numpy(batched[3])).max() > 1e-3


def test_mixed_length_windows_flush_beside_normal_are_exact(codec: SNACCodec) -> None:
    spf, ctx = codec.samples_per_frame, codec.context_frames
    a = random_frames(codec, 12, seed=20)  # ends: its flush window has 2 right-context frames missing
    b = random_frames(codec, 30, seed=21)  # mid-utterance: a full 3 + 1 + 3 window
    c = random_frames(codec, 9, seed=22)  # starts: no left context
    ref_a, ref_b, ref_c = codec.decode(a), codec.decode(b), codec.decode(c)
    flush = (codec.validate_frames(a[12 - 1 - ctx :]), 12 - 1 - ctx)  # keeps frame 11 (the last)
    normal = (codec.validate_frames(b[10 - ctx : 10 + 1 + ctx]), 10 - ctx)  # keeps frame 10
    start = (codec.validate_frames(c[: 1 + ctx]), 0)  # keeps frame 0
    also_normal = (codec.validate_frames(a[4 - ctx : 4 + 1 + ctx]), 4 - ctx)  # groups with ``normal``
    out = codec.decode_windows([flush, normal, start, also_normal])
    assert [o.shape[0] // spf for o in out] == [4, 7, 4, 7]
    np.testing.assert_allclose(as_numpy(out[0])[ctx * spf :], ref_a[11 * spf :], rtol=0, atol=ATOL)
    kept = slice(ctx * spf, (ctx + 1) * spf)  # the middle frame of a 3 + 1 + 3 window
    np.testing.assert_allclose(as_numpy(out[1])[kept], ref_b[10 * spf : 11 * spf], rtol=0, atol=ATOL)
    np.testing.assert_allclose(as_numpy(out[2])[:spf], ref_c[:spf], rtol=0, atol=ATOL)
    np.testing.assert_allclose(as_numpy(out[3])[kept], ref_a[4 * spf : 5 * spf], rtol=0, atol=ATOL)
    for window, audio in zip([flush, normal, start, also_normal], out):
        np.testing.assert_allclose(as_numpy(audio), as_numpy(codec._decode_window(*window)), rtol=0, atol=ATOL)


def test_padding_a_flush_window_would_not_be_exact(codec: SNACCodec) -> None:
    """Why decode_windows groups by length: codes padded after the last frame change its audio
    (the offline decode sees each layer's zero padding there, not decoded codes)."""
    spf, ctx = codec.samples_per_frame, codec.context_frames
    frames = random_frames(codec, 12, seed=23)
    reference = codec.decode(frames)
    flush = codec.validate_frames(frames[12 - 1 - ctx :])  # [4, F], keeps the last frame
    padded = torch.cat([flush, flush[: 2 * ctx - ctx]])  # [7, F], as long as a normal window
    audio = as_numpy(codec._decode_window(padded, 12 - 1 - ctx))[ctx * spf : (ctx + 1) * spf]
    assert np.abs(audio - reference[11 * spf :]).max() > 100 * ATOL


def test_decode_windows_rejects_bad_windows(codec: SNACCodec) -> None:
    good = codec.validate_frames(random_frames(codec, 3, seed=24))
    with pytest.raises(ValueError, match="window 1"):
        codec.decode_windows([(good, 0), (good[:0], 0)])
    with pytest.raises(ValueError, match="shape"):
        codec.decode_windows([(good[:, :6], 0)])
    with pytest.raises(ValueError, match="start_frame"):
        codec.decode_windows([(good, -1)])


# --------------------------------------------------------------------------- two-phase streams


def test_two_phase_stream_one_window_at_a_time_equals_push_and_flush(codec: SNACCodec) -> None:
    frames = random_frames(codec, 11, seed=30)
    sizes = [1, 3, 0, 2, 5]
    bounds = np.cumsum([0, *sizes])
    pushed = codec.stream(frames_per_decode=2)
    expected = np.concatenate([pushed.push(frames[a:b]) for a, b in zip(bounds, bounds[1:])] + [pushed.flush()])
    stream = codec.stream(frames_per_decode=2)
    out, pos = [], 0
    for i, size in enumerate(sizes + [None]):
        if size is None:
            stream.end()
        else:
            assert stream.feed(frames[pos : pos + size]) == size
            pos += size
        while (window := stream.pending_window()) is not None:
            (audio,) = codec.decode_windows([window])
            out.append(stream.accept(audio))
    assert stream.finished and pushed.finished
    np.testing.assert_array_equal(np.concatenate(out), expected)


def test_two_phase_misuse_is_reported(codec: SNACCodec) -> None:
    stream = codec.stream()
    with pytest.raises(RuntimeError, match="pending window"):
        stream.accept(torch.zeros(4 * codec.samples_per_frame))
    stream.feed(random_frames(codec, 3, seed=31))
    assert stream.pending_window() is None  # frame 0 is not final yet
    stream.feed(random_frames(codec, 1, seed=32))
    window = stream.pending_window()
    assert window is not None and window.start_frame == 0 and window.codes.shape[0] == 4
    with pytest.raises(ValueError, match="expected"):
        stream.accept(torch.zeros(3 * codec.samples_per_frame))
    assert stream.accept(codec.decode_windows([window])[0]).shape == (codec.samples_per_frame,)
    assert stream.pending_window() is None
    stream.end()
    assert not stream.finished and stream.ended
    with pytest.raises(RuntimeError, match="reset"):
        stream.feed(random_frames(codec, 1, seed=33))
    stream.accept(codec.decode_windows([stream.pending_window()])[0])
    assert stream.finished and stream.pending_window() is None
    stream.reset()
    assert not stream.ended and stream.frames_pushed == 0


# --------------------------------------------------------------------------- many streams, one worker

# (frames, frames_per_decode, chunk sizes, step of the first chunk)
STREAMS = [
    (1, 1, [1], 0),
    (2, 2, [2], 1),
    (5, 1, [1, 1, 1, 1, 1], 0),
    (9, 2, [4, 0, 5], 2),
    (20, 1, [1] * 20, 3),
    (33, 4, [7, 7, 7, 7, 5], 0),
    (12, 1, [3, 3, 3, 3], 5),
    (70, 1, [70], 1),  # more than MAX_FRAMES_PER_WINDOW in one chunk: several windows due at once
]


def run_worker(codec: SNACCodec, utterances: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """A toy codec worker: each step feeds every stream its next chunk (or ends it), then
    decodes one due window of every stream per ``decode_windows`` call until none is due."""
    streams = [codec.stream(frames_per_decode=fpd) for _, fpd, _, _ in STREAMS]
    chunks = [list(sizes) for _, _, sizes, _ in STREAMS]
    positions = [0] * len(streams)
    outputs: list[list[np.ndarray]] = [[] for _ in streams]
    batch_sizes: list[int] = []
    step = 0
    while not all(s.finished for s in streams):
        for i, (stream, (_, _, _, begin)) in enumerate(zip(streams, STREAMS)):
            if step < begin or stream.ended:
                continue
            if chunks[i]:
                size = chunks[i].pop(0)
                stream.feed(utterances[i][positions[i] : positions[i] + size])
                positions[i] += size
            else:
                stream.end()
        while due := [(i, w) for i, s in enumerate(streams) if (w := s.pending_window()) is not None]:
            audios = codec.decode_windows([w for _, w in due])
            batch_sizes.append(len(due))
            for (i, _), audio in zip(due, audios):
                outputs[i].append(streams[i].accept(audio))
        step += 1
    return [np.concatenate(out) for out in outputs], batch_sizes


def test_many_streams_decoded_in_batches_each_match_their_offline_decode(codec: SNACCodec) -> None:
    utterances = [random_frames(codec, n, seed=40 + i) for i, (n, _, _, _) in enumerate(STREAMS)]
    audios, batch_sizes = run_worker(codec, utterances)
    assert max(batch_sizes) >= 4, batch_sizes  # windows of several streams really shared calls
    for (n, _, _, _), frames, audio in zip(STREAMS, utterances, audios):
        reference = codec.decode(frames)
        assert audio.shape == reference.shape == (n * codec.samples_per_frame,)  # first and last frames
        np.testing.assert_allclose(audio, reference, rtol=0, atol=ATOL)

