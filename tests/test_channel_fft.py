"""Our FFT along channels (channel_fft.py) against the definition, computed in a plain loop (reference.py)."""
import numpy as np
import pytest

from dyn import channel_fft, metrics

import reference


def full_spectrum_mean(x: np.ndarray) -> np.ndarray:
    """channel_fft's half spectrum, as the metric's mean |F[k]| / C over positions, k = 0..C-1."""
    samples, c, positions = x.shape
    half = channel_fft.abs_sums(x)
    return np.concatenate([half, half[1:c - c // 2][::-1]]) / c / (samples * positions)


# every radix (4, 2, 3) alone and mixed, C = 2 (no stage at all) and ViT widths
@pytest.mark.parametrize("c", [2, 4, 6, 8, 12, 16, 18, 24, 36, 48, 96, 192, 384])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_the_definition(c, dtype):
    x = np.random.default_rng(c).standard_normal((2, c, 3)).astype(dtype)
    want = reference.spectrum(x.reshape(2, c, 3, 1))
    tight = dtype == np.float64
    np.testing.assert_allclose(full_spectrum_mean(x), want, rtol=1e-12 if tight else 1e-5, atol=1e-14 if tight else 1e-7)


def test_positions_beyond_one_tile():
    positions = channel_fft.TILE * 2 + 37  # two whole tiles and a partial one
    x = np.random.default_rng(0).standard_normal((2, 12, positions))
    np.testing.assert_allclose(full_spectrum_mean(x), reference.spectrum(x[..., None]), rtol=1e-12)


def test_reads_a_read_only_block():
    x = np.random.default_rng(1).standard_normal((2, 24, 5)).astype(np.float32)
    frozen = np.frombuffer(x.tobytes(), np.float32).reshape(x.shape)  # as a block read from bytes is
    assert not frozen.flags.writeable
    np.testing.assert_array_equal(channel_fft.abs_sums(frozen), channel_fft.abs_sums(x))


@pytest.mark.parametrize("c", [1, 3, 7, 10, 14, 30, 66])  # odd, or C/2 with a factor 5, 7 or 11
def test_other_channel_counts_are_left_to_scipy(c):
    assert channel_fft.plan(c, np.dtype(np.float32)) is None
    x = np.random.default_rng(c).standard_normal((2, c, 3)).astype(np.float32)
    total, n = metrics.block_spectrum_sum(x)
    np.testing.assert_allclose(total / n, reference.spectrum(x[..., None]), rtol=1e-5, atol=1e-7)


def test_no_positions():
    assert channel_fft.abs_sums(np.zeros((0, 8, 4), np.float32)).tolist() == [0.0] * 5
