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


# -- the (samples, C, positions) kernels -------------------------------------------------------------
def per_position_histograms(x, bins):
    """numpy.histogram of every position's channel vector of a (samples, C, positions) block, or None
    where numpy refuses the range (too narrow for `bins` float bins)."""
    out = []
    for s in range(x.shape[0]):
        for p in range(x.shape[2]):
            try:
                out.append(np.histogram(x[s, :, p], bins=bins)[0])
            except ValueError:
                out.append(None)
    return out


def assert_counts_equal_numpy(x, bins):
    got = metrics._block_histogram_counts(x, bins).reshape(-1, bins)
    expected = per_position_histograms(x, bins)
    checked = 0
    for position, (g, e) in enumerate(zip(got, expected)):
        if e is not None:
            np.testing.assert_array_equal(g, e, err_msg=f"position {position}")
            checked += 1
        assert g.sum() == x.shape[1]
    return checked


def awkward_block(rng, shape, dtype):
    """A (samples, C, positions) block of random values with constant vectors, ties on bin edges and a vector far from zero."""
    x = rng.standard_normal(shape)
    x[0, :, 0] = 1.5                                            # constant: numpy's -0.5..+0.5 range
    x[-1, :, 1] = 2.0 ** -130                                   # constant, tiny (denormal in float32)
    x[0, :, -1] = rng.integers(0, 7, shape[1]) / 3              # ties, many exactly on edges
    x[-1, :, -1] = rng.integers(-50, 50, shape[1]) / 10         # edges at multiples of 1 / bins
    x[-1, :, 2] = 1e4 + 1e-2 * rng.standard_normal(shape[1])    # large offset: edges round widely
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bins", [1, 7, 100])
@pytest.mark.parametrize("c", [37, 250])
def test_block_counts_equal_numpy_histogram(rng, dtype, bins, c):
    x = awkward_block(rng, (3, c, 20), dtype)
    assert assert_counts_equal_numpy(x, bins) >= 3 * 20 - 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_counts_on_bin_edges_at_many_scales(rng, dtype):
    for scale in (1.0, 0.1, 1e-3, 1e5):
        x = (rng.integers(0, 7, (2, 41, 30)) / rng.integers(1, 9)) * scale
        assert assert_counts_equal_numpy(x.astype(dtype), 100) == 60


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_counts_far_from_zero(rng, dtype):
    x = (1e4 + rng.choice([1e-2, 1.0]) * rng.standard_normal((4, 53, 25))).astype(dtype)
    assert assert_counts_equal_numpy(x, 100) > 50


def test_block_counts_span_several_tiles(rng, monkeypatch):
    monkeypatch.setattr(metrics, "_TILE", 7)  # 20 positions: tiles of 7, 7 and 6
    x = awkward_block(rng, (2, 19, 20), np.float32)
    assert assert_counts_equal_numpy(x, 100) >= 39
    x[-1, :, 2] = rng.standard_normal(19)  # one numpy accepts, for the reference entropy
    assert metrics.block_entropy_sum(x)[0] == pytest.approx(reference.entropy(x) * 40, rel=1e-12)


def test_step_that_underflows_takes_numpys_other_linspace_formula(rng):
    # delta / bins underflows to 0 in float32 at one position (numpy.histogram itself refuses it);
    # the others, in the same tile, must still count as numpy does.
    x = rng.standard_normal((1, 12, 5)).astype(np.float32)
    x[0, :, 3] = np.arange(12) * np.float32(2.0 ** -149)
    counts = metrics._block_histogram_counts(x, 100)[0]
    assert counts[3].sum() == 12
    for p in (0, 1, 2, 4):
        np.testing.assert_array_equal(counts[p], np.histogram(x[0, :, p], bins=100)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_entropy_with_unequal_height_and_width(rng, dtype):
    x = awkward_block(rng, (2, 29, 15), dtype)
    x[-1, :, 2] = 1e4 + rng.standard_normal(29)  # an offset numpy accepts, for the reference entropy
    a = x.reshape(2, 29, 3, 5)
    assert metrics.channel_entropy(a) == pytest.approx(reference.entropy(a), rel=1e-12)
    sums = metrics.block_sums(a)
    assert sums["entropy"][1] == 2 * 3 * 5
    assert sums["entropy"][0] / 30 == pytest.approx(reference.entropy(a), rel=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_entropy_of_non_finite_values_raises_like_numpy(rng, bad):
    x = rng.standard_normal((2, 9, 4)).astype(np.float32)
    x[1, 4, 2] = bad
    with pytest.raises(ValueError):
        np.histogram(x[1, :, 2], bins=100)
    with pytest.raises(ValueError):
        metrics.block_entropy_sum(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_spectrum_matches_definition(rng, dtype):
    a = rng.standard_normal((2, 12, 3, 5)).astype(dtype)  # H != W, C = 12 = 3 * 4
    total, n = metrics.block_spectrum_sum(metrics.channel_major(a))
    assert n == 2 * 3 * 5
    np.testing.assert_allclose(total / n, reference.spectrum(a), rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-7 if dtype == np.float32 else 1e-15)


def test_magnitude_in_float64_and_with_a_tail(rng):
    a = rng.standard_normal(3 * 257)  # not a multiple of the kernel's 256 lanes
    assert metrics.activation_magnitude(a) == pytest.approx(np.abs(a).mean(), rel=1e-13)


def test_block_sums_from_threads_equal_sequential(rng):
    from concurrent.futures import ThreadPoolExecutor

    blocks = [rng.standard_normal((2, 24, 4, 4)).astype(np.float32) for _ in range(6)]
    sequential = [metrics.block_sums(b) for b in blocks]
    with ThreadPoolExecutor(max_workers=3) as pool:
        threaded = list(pool.map(metrics.block_sums, blocks))
    for one, other in zip(sequential, threaded):
        np.testing.assert_array_equal(one["spectrum"][0], other["spectrum"][0])
        assert one["entropy"] == other["entropy"] and one["magnitude"] == other["magnitude"]


def test_channels_last_memory_and_channel_axis_zero(rng):
    a = rng.standard_normal((2, 13, 3, 4)).astype(np.float32)
    strided = torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, 1, -1))).permute(0, 3, 1, 2)  # NCHW view of NHWC
    assert metrics.channel_entropy(strided) == metrics.channel_entropy(a)
    assert metrics.channel_entropy(a[0], channel_axis=0) == pytest.approx(reference.entropy(a[0], channel_axis=0),
                                                                          rel=1e-12)


def test_kernels_still_compile_without_a_writable_cache_dir(monkeypatch):
    from dyn import jit

    real_njit = jit.njit

    def njit_without_cache_dir(*args, cache=False, **options):
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'metrics.py'")
        return real_njit(*args, **options)

    monkeypatch.setattr(jit, "njit", njit_without_cache_dir)
    with pytest.warns(RuntimeWarning, match="NUMBA_CACHE_DIR"):
        kernel = jit.kernel(lambda x: x + 1)
    assert kernel(1) == 2
