"""The three per-layer lenses of the paper, as pure vectorised functions, plus streaming over a capture.

For one layer's activations A with C channels at every position (sample, y, x):
- spectrum:  F[k] = (1/C) sum_c A[c] exp(-2 pi i k c / C);  S[k] = mean over positions of |F[k]|
- entropy:   the C values at a position counted into `bins` equal-width bins over their own
             min..max (as numpy.histogram does), p = counts / C, E = -sum_{p>0} p log2 p;
             the layer's value is the mean of E over positions
- magnitude: mean of |A| over all elements

Each metric has a `*_sum` form returning (sum over positions, number of positions), so a
file can be streamed chunk by chunk and the chunks' sums added up.
"""
from __future__ import annotations

from pathlib import Path
import numpy as np

METRICS = ("spectrum", "entropy", "magnitude")
DEFAULT_BINS = 100


def _as_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().float().cpu().numpy()
    a = np.asarray(a)
    # float16 histograms and FFTs are slow and coarse in numpy: work in at least float32.
    if a.dtype.kind != "f" or a.dtype.itemsize < 4:
        a = a.astype(np.float32)
    return a


def channel_vectors(a, channel_axis: int = 1) -> np.ndarray:
    """(positions, C): one row per position, the C channel values of that position."""
    a = _as_numpy(a)
    return np.moveaxis(a, channel_axis, -1).reshape(-1, a.shape[channel_axis])


def spectrum_sum(vectors: np.ndarray) -> tuple[np.ndarray, int]:
    """Sum over rows of |F[k]| (length C, float64) and the number of rows."""
    c = vectors.shape[-1]
    # The input is real, so |F[k]| = |F[C-k]|: take the half spectrum and mirror it.
    half = np.abs(np.fft.rfft(vectors, axis=-1)).sum(axis=0, dtype=np.float64) / c
    full = np.concatenate([half, half[1:c - c // 2][::-1]])
    return full, vectors.shape[0]


def _histogram_counts(vectors: np.ndarray, bins: int) -> np.ndarray:
    """Per-row numpy.histogram(row, bins) counts, (rows, bins), with numpy's own arithmetic.

    numpy computes, in the input's float type: edges = linspace(min, max, bins + 1) (min-0.5,
    max+0.5 for a constant row), index = int((v - min) / (max - min) * bins), then moves the index
    by one where float rounding put v on the wrong side of an edge. The fast path here computes the
    same index; only values whose position lies within rounding distance of an edge (a tiny share)
    go through numpy's edge comparisons, so ties on bin edges land in the same bins as numpy's.
    """
    dt = vectors.dtype
    rows, c = vectors.shape
    low = vectors.min(axis=1)
    high = vectors.max(axis=1)
    constant = low == high
    low = np.where(constant, low - dt.type(0.5), low)
    high = np.where(constant, high + dt.type(0.5), high)
    delta = (high - low).astype(dt)

    position = vectors - low[:, None]
    position /= delta[:, None]
    position *= dt.type(bins)
    inside = (position > 0) & (position < bins)  # the row's min and max: exact, never moved by numpy
    whole = np.floor(position)
    # How far float rounding can move a value across an edge, in bins: a few ulps of the row's scale.
    scale = np.maximum(np.abs(low), np.abs(high)) / delta * bins + bins
    half_width = (dt.type(0.5) - 8 * np.finfo(dt).eps * scale).astype(dt)
    position -= whole  # now the fraction within a bin; in float, not int, to stay in the input's type
    position -= dt.type(0.5)
    near = np.abs(position, out=position) > half_width[:, None]
    near &= inside
    np.minimum(whole, bins - 1, out=whole)  # v == max lands in the last bin
    suspect_rows = np.flatnonzero(near.any(axis=1))  # few rows hold a value near an edge
    if suspect_rows.size:
        r, k = np.nonzero(near[suspect_rows])
        r = suspect_rows[r]
        index = whole[r, k].astype(np.intp)
        whole[r, k] = _exact_index(vectors[r, k], index, low[r], high[r], delta[r], bins, dt)
    if rows * bins < 2**24 and dt.itemsize == 4:  # flat bin ids are exact in float32 up to 2^24
        whole += (np.arange(rows, dtype=dt) * dt.type(bins))[:, None]
        flat = whole.astype(np.intp)
    else:
        flat = whole.astype(np.intp) + (np.arange(rows) * bins)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * bins).reshape(rows, bins)


def _exact_index(v, index, low, high, delta, bins, dt):
    """numpy.histogram's index correction for single values, with its linspace edges."""
    step = (delta / dt.type(bins)).astype(dt)

    def edge(k):
        with np.errstate(invalid="ignore", divide="ignore"):
            # linspace: k * step + start (k / bins * delta + start for a denormal step); last edge = stop
            value = np.where(step == 0, k.astype(dt) / dt.type(bins) * delta, k.astype(dt) * step) + low
        return np.where(k == bins, high, value.astype(dt))

    index = index.copy()
    index -= v < edge(index)
    index += (v >= edge(index + 1)) & (index != bins - 1)
    return index


def entropy_sum(vectors: np.ndarray, bins: int = DEFAULT_BINS) -> tuple[float, int]:
    """Sum over rows of the Shannon entropy (bits) of each row's histogram, and the number of rows."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    counts = _histogram_counts(vectors, bins)
    # -p log2 p for every possible count n = 0..C (p = n / C), looked up instead of computed per bin.
    p = np.arange(vectors.shape[1] + 1, dtype=np.float64) / vectors.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(p > 0, -p * np.log2(p), 0.0)
    return float(term[counts].sum()), vectors.shape[0]


def magnitude_sum(a) -> tuple[float, int]:
    a = _as_numpy(a)
    return float(np.abs(a).sum(dtype=np.float64)), a.size


def channel_spectrum(a, channel_axis: int = 1) -> np.ndarray:
    """Mean over positions of |FFT along channels| / C, length C: S[k] for k = 0..C-1."""
    total, n = spectrum_sum(channel_vectors(a, channel_axis))
    return total / n


def channel_entropy(a, bins: int = DEFAULT_BINS, channel_axis: int = 1) -> float:
    """Mean over positions of the Shannon entropy (bits) of the channel vector's `bins`-bin histogram."""
    total, n = entropy_sum(channel_vectors(a, channel_axis), bins)
    return total / n


def activation_magnitude(a) -> float:
    """Mean absolute activation over all elements."""
    total, n = magnitude_sum(a)
    return total / n


def block_sums(block, names=METRICS, bins: int = DEFAULT_BINS) -> dict[str, tuple]:
    """{metric: (sum, count)} of one (samples, C, H, W) block (numpy array or torch tensor) of a layer."""
    block = _as_numpy(block)
    sums = {}
    if "spectrum" in names or "entropy" in names:
        vectors = channel_vectors(block)  # one channels-last copy for both
        if "spectrum" in names:
            sums["spectrum"] = spectrum_sum(vectors)
        if "entropy" in names:
            sums["entropy"] = entropy_sum(vectors, bins)
    if "magnitude" in names:
        sums["magnitude"] = magnitude_sum(block)
    return sums


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
        """{name: per-layer means}: a list of arrays for the spectrum, a float array otherwise."""
        out = {}
        for name, per_layer in self.totals.items():
            values = [per_layer[layer][0] / per_layer[layer][1] for layer in sorted(per_layer)]
            out[name] = values if name == "spectrum" else np.asarray(values, dtype=np.float64)
        return out


def stream_metrics(capture_path: str | Path, names=METRICS, bins: int = DEFAULT_BINS,
                   samples_per_chunk: int | None = None, progress: bool = False, workers: int = 1) -> dict:
    """Per-layer values of several metrics over a capture file, in one pass over its blocks.

    A background thread reads (decompresses) the next blocks while `workers` threads summarise
    the current ones (numpy and the NetCDF library release the GIL), so memory stays bounded by a
    few blocks. Returns {name: values}: a list of per-layer arrays for the spectrum (lengths may
    differ between CNN stages), a float array of shape (layers,) for entropy and magnitude.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from .capture import iter_layer_blocks

    unknown = [name for name in names if name not in METRICS]
    if unknown:  # before the file is opened
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}: valid metrics are {', '.join(METRICS)}")
    means = LayerMeans()
    blocks = iter_layer_blocks(capture_path, samples_per_chunk, progress=progress, desc="+".join(names),
                               prefetch=True)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        for layer, block in blocks:
            pending.append((layer, pool.submit(block_sums, block, names, bins)))
            while len(pending) > workers:  # at most `workers` blocks in flight
                done_layer, future = pending.popleft()
                means.add(done_layer, future.result())
        for done_layer, future in pending:
            means.add(done_layer, future.result())
    return means.means()


def stream_metric(capture_path: str | Path, name: str, bins: int = DEFAULT_BINS,
                  samples_per_chunk: int | None = None, progress: bool = False, workers: int = 1) -> np.ndarray | list:
    """One metric of a capture file (see stream_metrics)."""
    return stream_metrics(capture_path, (name,), bins, samples_per_chunk, progress, workers)[name]


def metric_dataset(capture_path: str | Path, name: str, bins: int = DEFAULT_BINS,
                   samples_per_chunk: int | None = None, progress: bool = False, workers: int = 1):
    """An xarray Dataset holding one metric of a capture file, with the capture's attrs."""
    import xarray as xr

    values = stream_metric(capture_path, name, bins, samples_per_chunk, progress, workers)
    with xr.open_dataset(capture_path) as capture:
        attrs = dict(capture.attrs)
        channels = capture["channels"].values.astype(int)
    attrs.update(metric=name, source=str(capture_path))
    layer = np.arange(len(values))
    if name == "spectrum":
        width = max(len(v) for v in values)
        padded = np.full((len(values), width), np.nan)
        for i, v in enumerate(values):
            padded[i, :len(v)] = v
        ds = xr.Dataset({"spectrum": (("layer", "frequency"), padded)},
                        coords={"layer": layer, "frequency": np.arange(width), "channels": ("layer", channels)})
        ds["spectrum"].attrs.update(long_name="mean |FFT along channels| / C over positions",
                                    note="NaN beyond a layer's own channel count")
    else:
        ds = xr.Dataset({name: ("layer", values)}, coords={"layer": layer, "channels": ("layer", channels)})
        if name == "entropy":
            attrs["bins"] = bins
            ds[name].attrs.update(units="bits", long_name="mean Shannon entropy of the channel vector")
        else:
            ds[name].attrs.update(long_name="mean absolute activation")
    ds.attrs = attrs
    return ds


def write_metric(capture_path: str | Path, name: str, out: str | Path, bins: int = DEFAULT_BINS,
                 samples_per_chunk: int | None = None, progress: bool = False, workers: int = 1) -> Path:
    """`out` (.nc) and a long-form .csv beside it, both written atomically."""
    from .atomic import atomic_path, write_text

    out = Path(out)
    ds = metric_dataset(capture_path, name, bins, samples_per_chunk, progress, workers)
    with atomic_path(out) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")
    frame = ds[name].to_dataframe().reset_index().dropna(subset=[name])
    write_text(out.with_suffix(".csv"), frame.to_csv(index=False))
    return out
