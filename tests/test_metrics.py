import numpy as np
import pytest
import torch

from dyn import metrics

import reference


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("shape", [(2, 7, 3, 2), (3, 12, 5), (1, 30, 2, 3)])  # C = 7, 12, 30: not powers of two
def test_spectrum_matches_definition(rng, shape):
    a = rng.standard_normal(shape).astype(np.float32)
    got = metrics.channel_spectrum(a)
    assert got.shape == (shape[1],)
    np.testing.assert_allclose(got, reference.spectrum(a), rtol=1e-5, atol=1e-7)


def test_spectrum_of_constant_vector_is_dc_only():
    a = np.full((2, 9, 2, 2), 3.0, dtype=np.float32)
    got = metrics.channel_spectrum(a)
    np.testing.assert_allclose(got[0], 3.0, rtol=1e-6)
    np.testing.assert_allclose(got[1:], 0.0, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 37, 4, 5), (2, 7, 3), (4, 100, 2, 2), (2, 250, 3)])
def test_entropy_matches_numpy_histogram_loop(rng, dtype, shape):
    a = rng.standard_normal(shape).astype(dtype)
    a[0, :, 0] = 1.5                     # constant vectors: entropy 0
    a[-1] = np.round(a[-1] * 3) / 3      # many ties, values on bin edges
    assert metrics.channel_entropy(a) == pytest.approx(reference.entropy(a), rel=1e-12)


def test_entropy_constant_vectors_is_zero():
    assert metrics.channel_entropy(np.ones((2, 17, 3, 3), dtype=np.float32)) == 0.0


def test_entropy_counts_equal_numpy_on_edge_values(rng):
    # Values that sit exactly on numpy's bin edges, at several scales: the per-row counts must be identical.
    for _ in range(100):
        c = int(rng.integers(2, 60))
        v = (rng.integers(0, 7, size=(20, c)) / rng.integers(1, 9)) * rng.choice([1.0, 0.1, 1e-3, 1e5])
        v = v.astype(rng.choice([np.float32, np.float64]))
        counts = metrics._histogram_counts(v, 100)
        for row, expected in zip(v, counts):
            np.testing.assert_array_equal(np.histogram(row, bins=100)[0], expected)


def test_entropy_counts_equal_numpy_far_from_zero(rng):
    # Rows whose offset is large against their spread: rounding of numpy's edges is widest there.
    checked = 0
    for _ in range(200):
        c = int(rng.integers(2, 80))
        dtype = rng.choice([np.float32, np.float64])
        v = (rng.choice([1e3, -1e4, 1e5]) + rng.choice([1e-2, 1.0, 10.0]) * rng.standard_normal((10, c))).astype(dtype)
        counts = metrics._histogram_counts(v, 100)
        for row, got in zip(v, counts):
            try:
                expected = np.histogram(row, bins=100)[0]
            except ValueError:  # numpy refuses ranges too narrow for 100 float bins
                continue
            np.testing.assert_array_equal(got, expected)
            checked += 1
    assert checked > 1000


@pytest.mark.parametrize("bins", [1, 5, 100])
def test_entropy_other_bin_counts(rng, bins):
    a = rng.standard_normal((2, 23, 2, 2))
    assert metrics.channel_entropy(a, bins=bins) == pytest.approx(reference.entropy(a, bins=bins), rel=1e-12)


def test_magnitude_matches_loop(rng):
    a = rng.standard_normal((3, 11, 4, 4)).astype(np.float32)
    assert metrics.activation_magnitude(a) == pytest.approx(reference.magnitude(a), rel=1e-6)


def test_torch_tensors_and_channel_axis(rng):
    a = rng.standard_normal((2, 13, 3, 3)).astype(np.float32)
    t = torch.from_numpy(a)
    np.testing.assert_allclose(metrics.channel_spectrum(t), metrics.channel_spectrum(a))
    assert metrics.channel_entropy(t) == metrics.channel_entropy(a)
    assert metrics.activation_magnitude(t) == pytest.approx(metrics.activation_magnitude(a))
    channels_last = np.moveaxis(a, 1, -1)
    np.testing.assert_allclose(metrics.channel_spectrum(channels_last, channel_axis=-1), metrics.channel_spectrum(a))
    assert metrics.channel_entropy(channels_last, channel_axis=3) == metrics.channel_entropy(a)


def test_bcn_layout(rng):
    a = rng.standard_normal((2, 10, 6)).astype(np.float32)  # (B, C, N) tokens
    np.testing.assert_allclose(metrics.channel_spectrum(a), reference.spectrum(a), rtol=1e-5, atol=1e-7)
    assert metrics.channel_entropy(a) == pytest.approx(reference.entropy(a), rel=1e-12)


def test_float16_input_is_computed_in_float32(rng):
    a = rng.standard_normal((2, 9, 2, 2)).astype(np.float16)
    assert metrics.channel_entropy(a) == pytest.approx(reference.entropy(a.astype(np.float32)), rel=1e-12)
