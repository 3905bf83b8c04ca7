"""The three per-layer lenses of the paper, in numpy and scipy (their pass over a capture file: metric_files.py).

For one layer's activations A with C channels at every position (sample, y, x):
- spectrum:  F[k] = (1/C) sum_c A[c] exp(-2 pi i k c / C);  S[k] = mean over positions of |F[k]|
- entropy:   the C values at a position counted into `bins` equal-width bins, p = counts / C,
             E = -sum_{p>0} p log2 p; the layer's value is the mean of E over positions. The bins span
             one range for every vector (`global`, the authors' code: the minimum and maximum of the
             whole capture, all layers, images, channels and positions; numpy.histogram(v, bins,
             range=(min, max))) or each vector's own min..max (`vector`: numpy.histogram(v, bins))
- intensity: the mean of S[k] over the C frequencies (the authors' "average frequency intensity")
- magnitude: mean of |A| over all elements

Every function reads a block as (samples, C, positions), the memory layout of a (samples, C, H, W)
capture block, so no channels-last copy is made. A file is summarised block by block: each block
gives (sum over its positions, number of positions), and the sums of a layer add up to its mean.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.array_utils import normalize_axis_index

METRICS = ("spectrum", "entropy", "magnitude")
DEFAULT_BINS = 100
ENTROPY_RANGES = ("global", "vector")  # one range for the whole capture (the authors'), or each vector's own


def channel_major(a, channel_axis: int = 1) -> np.ndarray:
    """(samples, C, positions) float32 or float64 values of an array or torch tensor, channels on `channel_axis`:
    a free reshape for a C-contiguous (samples, C, H, W) block."""
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().float().cpu().numpy()
    a = np.asarray(a)
    if a.dtype.kind != "f" or a.dtype.itemsize < 4:  # float16 and ints: work in float32
        a = a.astype(np.float32)
    axis = normalize_axis_index(channel_axis, a.ndim)  # AxisError if out of range
    samples, positions = math.prod(a.shape[:axis]), math.prod(a.shape[axis + 1:])
    return np.ascontiguousarray(a).reshape(samples, a.shape[axis], positions)


# -- one block: (sum over positions, number of positions) --------------------------------------------
def spectrum_total(x: np.ndarray, workers: int = 1) -> np.ndarray:
    """Sum over the positions of a (samples, C, positions) block of |F[k]|, k = 0..C-1, in float64."""
    import scipy.fft  # here, not at the top: the entropy and magnitude jobs skip its import

    c = x.shape[1]
    half = np.abs(scipy.fft.rfft(x, axis=1, workers=workers)).sum(axis=(0, 2), dtype=np.float64) / c
    return np.concatenate([half, half[1:c - c // 2][::-1]])  # real input: |F[k]| = |F[C - k]|


def histogram_counts(x: np.ndarray, bins: int = DEFAULT_BINS, value_range: tuple | None = None) -> np.ndarray:
    """numpy.histogram(x[s, :, p], bins, range) counts for every position of a (samples, C, positions)
    block, as (samples, positions, bins), computed for all positions at once.

    `value_range`: (low, high) shared by every position (every value must lie in it), or None for each
    position's own min..max. As numpy.histogram: a range of one value is widened to value -0.5..+0.5, a
    value's bin is (v - low) / (high - low) * bins, moved down or up one where it falls outside that
    bin's edges low + k (high - low) / bins after rounding, and the maximum goes into the last bin.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    samples, c, positions = x.shape
    if value_range is None:
        low, high = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
        constant = low == high
        low, high = np.where(constant, low - 0.5, low), np.where(constant, high + 0.5, high)
    else:
        low, high = (x.dtype.type(v) for v in value_range)  # numpy's edges are in the data's type
        if low == high:
            low, high = low - x.dtype.type(0.5), high + x.dtype.type(0.5)
        if x.size and not (low <= x.min() and x.max() <= high):  # also False for NaN
            raise ValueError(f"values outside the entropy range {low}..{high} (or not finite)")
    delta = np.asarray(high - low, dtype=x.dtype)
    if not np.isfinite(delta).all() or not (delta > 0).all():
        raise ValueError("histogram of a channel vector with no finite range (NaN or inf values)")
    # numpy.histogram's arithmetic, in place (one block's worth of temporaries): the bin of v is
    # (v - min) / delta * bins, and numpy.linspace's edge k is k * (delta / bins) + min.
    step, f = delta / x.dtype.type(bins), x - low
    f /= delta
    f *= x.dtype.type(bins)
    index = f.astype(np.intp)
    np.minimum(index, bins - 1, out=index)
    np.copyto(f, index, casting="unsafe")  # f = k
    f *= step
    f += low
    down = x < f  # below its bin's lower edge
    np.copyto(f, index, casting="unsafe")
    f += 1
    f *= step
    f += low
    up = x >= f  # at or above its bin's upper edge (the last bin keeps the maximum)
    up &= index < bins - 1
    index += up
    index -= down
    # one counter per (sample, position, bin)
    index += (np.arange(samples * positions, dtype=np.intp) * bins).reshape(samples, 1, positions)
    return np.bincount(index.ravel(), minlength=samples * positions * bins).reshape(samples, positions, bins)


def position_entropies(x: np.ndarray, bins: int = DEFAULT_BINS, value_range: tuple | None = None) -> np.ndarray:
    """The Shannon entropy (bits) of each position's `bins`-bin histogram of a (samples, C, positions)
    block, as (samples, positions); `value_range` as in `histogram_counts`."""
    c = x.shape[1]
    p = np.arange(c + 1) / c
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(p), 0.0)  # -p log2 p for every possible count 0..C
    return terms[histogram_counts(x, bins, value_range)].sum(axis=2)


def entropy_total(x: np.ndarray, bins: int = DEFAULT_BINS, value_range: tuple | None = None) -> float:
    """Sum over the positions of a (samples, C, positions) block of their entropies."""
    return float(position_entropies(x, bins, value_range).sum())


def magnitude_total(x: np.ndarray) -> float:
    """Sum of |x| over every element, in float64."""
    return float(np.abs(x).sum(dtype=np.float64))


def block_sums(block, names=METRICS, bins: int = DEFAULT_BINS, workers: int = 1,
               value_range: tuple | None = None) -> dict[str, tuple]:
    """{metric: (sum, number of positions or elements)} of one (samples, C, H, W) block (array or tensor);
    `value_range`: the entropy's bins' range (None: each vector's own)."""
    x = channel_major(block)
    positions = x.shape[0] * x.shape[2]
    sums = {}
    if "spectrum" in names:
        sums["spectrum"] = (spectrum_total(x, workers), positions)
    if "entropy" in names:
        sums["entropy"] = (entropy_total(x, bins, value_range), positions)
    if "magnitude" in names:
        sums["magnitude"] = (magnitude_total(x), x.size)
    return sums


# -- per-layer values of one array ---------------------------------------------------------------------
def channel_spectrum(a, channel_axis: int = 1) -> np.ndarray:
    """Mean over positions of |FFT along channels| / C, length C: S[k] for k = 0..C-1."""
    x = channel_major(a, channel_axis)
    return spectrum_total(x) / (x.shape[0] * x.shape[2])


def channel_entropy(a, bins: int = DEFAULT_BINS, channel_axis: int = 1, value_range: tuple | None = None) -> float:
    """Mean over positions of the Shannon entropy (bits) of the channel vector's `bins`-bin histogram,
    over `value_range` (low, high) or, by default, each vector's own min..max."""
    x = channel_major(a, channel_axis)
    return entropy_total(x, bins, value_range) / (x.shape[0] * x.shape[2])


def global_range(blocks) -> tuple:
    """(min, max) over every value of several arrays: the `global` entropy range of a set of layers."""
    low, high = np.inf, -np.inf
    for block in blocks:
        x = channel_major(block)
        if x.size:
            low, high = min(low, x.min()), max(high, x.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("no finite values to take the entropy range of")
    return low, high


def activation_magnitude(a) -> float:
    """Mean absolute activation over all elements."""
    x = channel_major(a)
    return magnitude_total(x) / x.size


# -- a capture file ------------------------------------------------------------------------------------
class LayerMeans:
    """Per-layer sums and counts of several metrics, added block by block, read back as means."""

    def __init__(self):
        self.totals: dict[str, dict[int, list]] = {}

    def add(self, layer: int, sums: dict[str, tuple]) -> None:
        for name, (value, n) in sums.items():
            slot = self.totals.setdefault(name, {}).setdefault(layer, [0.0, 0])
            slot[0] = slot[0] + value
            slot[1] += n

    def means(self) -> dict:
        """{name: per-layer means}: a list of arrays for spectra, a float array otherwise."""
        out = {}
        for name, per_layer in self.totals.items():
            values = [per_layer[layer][0] / per_layer[layer][1] for layer in sorted(per_layer)]
            out[name] = values if name.startswith("spectrum") else np.asarray(values, dtype=np.float64)
        return out
