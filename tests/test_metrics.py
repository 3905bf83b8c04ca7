"""The metrics against plain loops over positions (reference.py) and numpy.histogram, on random data."""
import numpy as np
import pytest
import torch

from dyn.analysis import metrics

import reference


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 7, 3, 2), (3, 12, 5), (1, 30, 2, 3), (2, 384, 2, 2)])  # odd and ViT widths
def test_spectrum_matches_definition(rng, shape, dtype):
    a = rng.standard_normal(shape).astype(dtype)
    got = metrics.channel_spectrum(a)
    assert got.shape == (shape[1],)
    np.testing.assert_allclose(got, reference.spectrum(a), rtol=1e-5, atol=1e-7)


def test_spectrum_of_constant_vector_is_dc_only():
    a = np.full((2, 9, 2, 2), 3.0, dtype=np.float32)
    got = metrics.channel_spectrum(a)
    np.testing.assert_allclose(got[0], 3.0, rtol=1e-6)
    np.testing.assert_allclose(got[1:], 0.0, atol=1e-6)


def test_spectrum_with_fft_threads_equals_one_thread(rng):
    x = rng.standard_normal((4, 24, 30)).astype(np.float32)
    np.testing.assert_array_equal(metrics.spectrum_total(x, workers=2), metrics.spectrum_total(x, workers=1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 37, 4, 5), (2, 7, 3), (4, 100, 2, 2), (2, 250, 3)])
def test_entropy_matches_loop(rng, dtype, shape):
    a = rng.standard_normal(shape).astype(dtype)
    a[0, :, 0] = 1.5                     # constant vectors: entropy 0
    a[-1] = np.round(a[-1] * 3) / 3      # many ties, values on bin edges
    assert metrics.channel_entropy(a) == pytest.approx(reference.entropy(a), rel=1e-6)


def test_entropy_constant_vectors_is_zero():
    assert metrics.channel_entropy(np.ones((2, 17, 3, 3), dtype=np.float32)) == 0.0


@pytest.mark.parametrize("bins", [1, 5, 100])
def test_entropy_other_bin_counts(rng, bins):
    a = rng.standard_normal((2, 23, 2, 2))
    assert metrics.channel_entropy(a, bins=bins) == pytest.approx(reference.entropy(a, bins=bins), rel=1e-6)


def awkward_block(rng, shape, dtype):
    """A (samples, C, positions) block with constant vectors, ties on bin edges and a vector far from zero."""
    x = rng.standard_normal(shape)
    x[0, :, 0] = 1.5                                            # constant: numpy's -0.5..+0.5 range
    x[0, :, -1] = rng.integers(0, 7, shape[1]) / 3              # ties, many exactly on edges
    x[-1, :, -1] = rng.integers(-50, 50, shape[1]) / 10         # edges at multiples of 1 / bins
    x[-1, :, 2] = 1e4 + 1e-2 * rng.standard_normal(shape[1])    # large offset: edges round widely
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bins", [1, 7, 100])
@pytest.mark.parametrize("c", [37, 250])
def test_histogram_counts_agree_with_numpy_histogram(rng, dtype, bins, c):
    # numpy.histogram's own arithmetic: counts agree position by position, ties on edges included,
    # apart from rounding of its last edge at most one value in a few positions.
    x = awkward_block(rng, (3, c, 20), dtype)
    got = metrics.histogram_counts(x, bins)
    assert got.shape == (3, 20, bins) and (got.sum(axis=2) == c).all()
    moved = []
    for s in range(3):
        for p in range(20):
            try:
                moved.append(np.abs(got[s, p] - np.histogram(x[s, :, p], bins=bins)[0]).sum())
            except ValueError:  # numpy refuses a range too narrow for `bins` float bins
                pass
    assert len(moved) >= 59 and sum(m > 0 for m in moved) <= 2 and max(moved) <= 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bins", [1, 7, 100])
def test_global_range_entropy_matches_a_loop_of_numpy_histogram(rng, dtype, bins):
    # The authors' definition: every channel vector binned over one range, the min..max of all the data.
    a = awkward_block(rng, (3, 37, 20), dtype)[..., :-1]  # minus the far-off vector: it would own the range
    low, high = a.min(), a.max()
    got = metrics.channel_entropy(a, bins=bins, value_range=(low, high))
    assert got == pytest.approx(reference.entropy(a, bins=bins, value_range=(low, high)), rel=1e-9)
    counts = metrics.histogram_counts(a, bins, (low, high))
    for s in range(3):
        for p in range(19):
            np.testing.assert_array_equal(counts[s, p], np.histogram(a[s, :, p], bins=bins, range=(low, high))[0])


def test_global_range_is_scale_dependent_and_vector_range_is_not(rng):
    a = rng.standard_normal((2, 64, 10)).astype(np.float32)
    wide = np.concatenate([a, 10 * a], axis=2)  # the same vectors and ten times larger ones, one range for all
    bounds = metrics.global_range([wide])
    small, large = (metrics.channel_entropy(part, value_range=bounds) for part in (wide[..., :10], wide[..., 10:]))
    assert small < large - 1  # the small vectors fill fewer of the shared bins
    assert metrics.channel_entropy(wide[..., :10]) == pytest.approx(metrics.channel_entropy(wide[..., 10:]), rel=1e-5)


def test_global_range_refuses_values_outside_it(rng):
    a = rng.standard_normal((2, 9, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="outside the entropy range"):
        metrics.channel_entropy(a, value_range=(a.min() + 0.1, a.max()))
    constant = np.full((1, 5, 2), 2.0, dtype=np.float32)  # a one-value range widens by 0.5 each way, as numpy's
    assert metrics.channel_entropy(constant, value_range=(2.0, 2.0)) == 0.0


def test_entropy_of_non_finite_values_raises(rng):
    for bad in (np.nan, np.inf, -np.inf):
        x = rng.standard_normal((2, 9, 4)).astype(np.float32)
        x[1, 4, 2] = bad
        with pytest.raises(ValueError):
            metrics.entropy_total(x)


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
    np.testing.assert_allclose(metrics.channel_spectrum(channels_last, channel_axis=-1), metrics.channel_spectrum(a),
                               rtol=1e-6)
    assert metrics.channel_entropy(channels_last, channel_axis=3) == pytest.approx(metrics.channel_entropy(a), rel=1e-9)
    assert metrics.channel_entropy(a[0], channel_axis=0) == pytest.approx(reference.entropy(a[0], channel_axis=0),
                                                                          rel=1e-6)
    with pytest.raises(np.exceptions.AxisError):
        metrics.channel_entropy(a, channel_axis=4)


def test_bcn_layout_and_float16(rng):
    a = rng.standard_normal((2, 10, 6)).astype(np.float32)  # (B, C, N) tokens
    np.testing.assert_allclose(metrics.channel_spectrum(a), reference.spectrum(a), rtol=1e-5, atol=1e-7)
    assert metrics.channel_entropy(a) == pytest.approx(reference.entropy(a), rel=1e-6)
    half = a.astype(np.float16)  # computed in float32
    assert metrics.channel_entropy(half) == pytest.approx(reference.entropy(half.astype(np.float32)), rel=1e-6)


def test_block_sums_add_up_to_the_layer_mean(rng):
    a = rng.standard_normal((6, 29, 3, 5)).astype(np.float32)
    means = metrics.LayerMeans()
    for start in (0, 2, 4):  # three blocks of two samples
        means.add(0, metrics.block_sums(a[start:start + 2]))
    got = means.means()
    np.testing.assert_allclose(got["spectrum"][0], reference.spectrum(a), rtol=1e-5, atol=1e-7)
    assert got["entropy"][0] == pytest.approx(reference.entropy(a), rel=1e-6)
    assert got["magnitude"][0] == pytest.approx(reference.magnitude(a), rel=1e-6)
