"""The three per-layer lenses of the paper, as pure functions, plus streaming over a capture.

For one layer's activations A with C channels at every position (sample, y, x):
- spectrum:  F[k] = (1/C) sum_c A[c] exp(-2 pi i k c / C);  S[k] = mean over positions of |F[k]|
- entropy:   the C values at a position counted into `bins` equal-width bins over their own
             min..max (as numpy.histogram does), p = counts / C, E = -sum_{p>0} p log2 p;
             the layer's value is the mean of E over positions
- magnitude: mean of |A| over all elements

Each metric has a `*_sum` form returning (sum over positions, number of positions), so a
file can be streamed chunk by chunk and the chunks' sums added up. The `block_*_sum` forms read
a block as (samples, C, positions), the memory layout of a (samples, C, H, W) capture block,
instead of copying it channels-last: an FFT along the channel axis vectorised across positions for
the spectrum (channel_fft.py; scipy's for channel counts it does not cover), numba kernels for the
entropy (numpy.histogram's arithmetic, bit for bit) and the magnitude.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from .jit import as_float_of
from .jit import kernel as _kernel

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


def channel_major(a, channel_axis: int = 1) -> np.ndarray:
    """(samples, C, positions), C-contiguous: the layout the spectrum and entropy kernels read.

    For a (samples, C, H, W) block this is a free reshape, with no channels-last copy. When fewer
    than _MIN_RUN values follow the channel axis (channels-last input, (rows, C) vectors), it is a
    transposed copy, (1, C, rows), so that the kernels still run along many positions at once.
    """
    a = _as_numpy(a)
    if not -a.ndim <= channel_axis < a.ndim:
        raise np.exceptions.AxisError(channel_axis, a.ndim)
    axis = channel_axis % a.ndim
    c = a.shape[axis]
    samples, positions = math.prod(a.shape[:axis]), math.prod(a.shape[axis + 1:])
    if positions < _MIN_RUN:
        return np.ascontiguousarray(channel_vectors(a, axis).T)[None]
    return np.ascontiguousarray(a).reshape(samples, c, positions)


def _as_kernel_floats(x: np.ndarray) -> np.ndarray:
    """x as C-contiguous float32 or float64, the types the numba kernels are compiled for."""
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)  # e.g. longdouble
    return np.ascontiguousarray(x)


# -- spectrum --------------------------------------------------------------------------------------
def _mirrored(half: np.ndarray, c: int) -> np.ndarray:
    """The length-C spectrum from its first C//2 + 1 values: the input is real, so |F[k]| = |F[C-k]|."""
    return np.concatenate([half, half[1:c - c // 2][::-1]])


def _rfft(x: np.ndarray, axis: int) -> np.ndarray:
    import scipy.fft  # here, not at the top: the entropy and magnitude rules' processes skip its import (0.15 s)

    return scipy.fft.rfft(x, axis=axis)


def spectrum_sum(vectors: np.ndarray) -> tuple[np.ndarray, int]:
    """Sum over rows of |F[k]| (length C, float64) and the number of rows."""
    return block_spectrum_sum(channel_major(vectors))


def block_spectrum_sum(x: np.ndarray) -> tuple[np.ndarray, int]:
    """spectrum_sum of a (samples, C, positions) block, transformed along its channel axis in place.

    Channel counts that are 2 x a product of 2s and 3s (every ViT width) go through our own FFT,
    vectorised across positions (channel_fft.py); others through scipy's pocketfft, which also runs
    transforms along a middle axis several at a time in SIMD lanes.
    """
    from . import channel_fft

    samples, c, positions = x.shape
    half = channel_fft.abs_sums(_as_kernel_floats(x))
    if half is None:
        half = np.abs(_rfft(x, axis=1)).sum(axis=(0, 2), dtype=np.float64)
    return _mirrored(half / c, c), samples * positions


# -- entropy: numpy.histogram's counts at every position, in numba --------------------------------
# numpy.histogram(v, bins) with v's own range works in v's float type: edges = linspace(lo, hi,
# bins + 1) (lo - 0.5, hi + 0.5 for a constant v), index = int((v - lo) / (hi - lo) * bins), the
# index of hi moved into the last bin, then moved down one where v < edges[index] and up one
# where v >= edges[index + 1] (not from the last bin). The kernels below do the same arithmetic in
# the same type, position by position, so their counts equal numpy's bit for bit.
#
# nogil: stream_metrics runs several blocks in threads at once. error_model="numpy": a float
# division by zero gives inf instead of a Python-style check per value, which blocks SIMD.
# No fastmath: reassociating or fusing the arithmetic would move values across bin edges.
_TILE = 256  # positions counted together: their (positions, bins) counts stay in L2
_MIN_RUN = 8  # fewer positions per sample than this are transposed into one long run (channel_major)
_RANGE_ERROR = ("numpy.histogram: a channel vector has no finite range to bin "
                "(NaN or inf values, or a constant too large to widen by 0.5)")


@_kernel
def _outer_edges(x, s, p0, low, high):
    """numpy.histogram's outer edges of positions p0.. of sample s: min..max over channels,
    widened to min - 0.5 .. max + 0.5 where the vector is constant."""
    n = low.shape[0]
    low[:] = x[s, 0, p0:p0 + n]
    high[:] = low
    for c in range(1, x.shape[1]):
        row = x[s, c, p0:p0 + n]  # a contiguous run of positions: vectorised min and max
        for j in range(n):
            v = row[j]
            low[j] = v if v < low[j] else low[j]
            high[j] = v if v > high[j] else high[j]
    half = as_float_of(0.5, low[0])
    for j in range(n):
        if low[j] == high[j]:
            low[j] -= half
            high[j] += half


@_kernel
def _linspace_steps(low, high, bins, delta, step):
    """delta = high - low and numpy's linspace step delta / bins, per position, in the input's type.

    False where a width is not finite and positive (NaN, inf, or a constant too large to widen):
    numpy.histogram raises there too.
    """
    fbins = as_float_of(bins, low[0])
    for j in range(low.shape[0]):
        delta[j] = high[j] - low[j]
        step[j] = delta[j] / fbins
        if not (delta[j] > 0 and delta[j] < np.inf):
            return False
    return True


@_kernel
def _linspace_edge(k, low, delta, step, fbins):
    """numpy's linspace(low, low + delta, bins + 1)[k] for k < bins (it sets the last one to stop)."""
    if step == 0:  # the step underflowed (denormal delta): numpy divides k by bins first, gh-5437
        return k / fbins * delta + low
    return k * step + low


@_kernel
def _bin_counters(row, low, delta, step, bins, tiny_steps, counter):
    """Where each value of one channel across positions is counted: counter[j] = j * bins + its
    numpy.histogram bin. False if a value is outside its position's range (NaN).

    `tiny_steps`: some position's step underflowed to 0, which takes numpy's other linspace formula.
    """
    fbins = as_float_of(bins, row[0])
    zero = fbins - fbins
    one = fbins / fbins
    last = np.int32(bins - 1)
    # unsigned counters: numba then skips its negative-index wraparound in _count
    first_counter, counters_per_position = np.uint32(0), np.uint32(bins)
    outside = False
    for j in range(row.shape[0]):
        v = row[j]
        f = (v - low[j]) / delta[j] * fbins
        inside = (f >= zero) & (f <= fbins)
        outside |= not inside
        i = min(np.int32(f if inside else zero), last)  # hi itself goes into the last bin
        k = as_float_of(i, v)
        if tiny_steps:
            edge = _linspace_edge(k, low[j], delta[j], step[j], fbins)
            next_edge = _linspace_edge(k + one, low[j], delta[j], step[j], fbins)
        else:  # the same arithmetic without a branch per value, so that the loop vectorises
            edge = k * step[j] + low[j]
            next_edge = (k + one) * step[j] + low[j]
        down = v < edge
        up = (v >= next_edge) & (i != last) & (not down)  # numpy tests `up` on the moved index
        counter[j] = first_counter + np.uint32(i - np.int32(down) + np.int32(up))
        first_counter += counters_per_position  # in uint32 rather than from j (int64): narrower SIMD
    return not outside


@_kernel
def _count(counter, counts):
    """counts[counter[j]] += 1: one value per position, so no two updates hit the same counter."""
    for j in range(counter.shape[0]):
        counts[counter[j]] += 1


@_kernel
def _count_tile(x, s, p0, bins, low, high, delta, step, counter, counts):
    """Add numpy.histogram(x[s, :, p], bins) of the positions p = p0 .. p0 + len(low) - 1 to
    counts, flat (position, bin)."""
    _outer_edges(x, s, p0, low, high)
    if not _linspace_steps(low, high, bins, delta, step):
        raise ValueError(_RANGE_ERROR)
    tiny_steps = np.any(step == 0)
    n = low.shape[0]
    for c in range(x.shape[1]):
        if not _bin_counters(x[s, c, p0:p0 + n], low, delta, step, bins, tiny_steps, counter):
            raise ValueError(_RANGE_ERROR)
        _count(counter, counts)


@_kernel
def _tile_buffers(x, tile):
    """low, high, delta, step and counter for one tile of positions."""
    return (np.empty(tile, x.dtype), np.empty(tile, x.dtype), np.empty(tile, x.dtype), np.empty(tile, x.dtype),
            np.empty(tile, np.uint32))


@_kernel
def _entropy_total(x, bins, term, counts):
    """Sum over the positions of a (samples, C, positions) block of sum_b term[count in bin b].

    counts: zeros, a multiple of bins long; its length / bins positions are counted at a time.
    """
    samples, _, positions = x.shape
    tile = counts.shape[0] // bins
    low, high, delta, step, counter = _tile_buffers(x, tile)
    # One float64 accumulator per bin, so the sum over positions vectorises without reassociation.
    per_bin = np.zeros(bins)
    for s in range(samples):
        for p0 in range(0, positions, tile):
            n = min(tile, positions - p0)
            _count_tile(x, s, p0, bins, low[:n], high[:n], delta[:n], step[:n], counter[:n], counts)
            for j in range(n):
                for b in range(bins):
                    per_bin[b] += term[counts[j * bins + b]]
                    counts[j * bins + b] = 0
    return per_bin.sum()


@_kernel
def _histogram_counts_native(x, bins, counts):
    """numpy.histogram counts of every position of a (samples, C, positions) block, (samples,
    positions, bins); counts: zeros, as for _entropy_total."""
    samples, _, positions = x.shape
    tile = counts.shape[0] // bins
    out = np.zeros((samples, positions, bins), np.int64)
    low, high, delta, step, counter = _tile_buffers(x, tile)
    for s in range(samples):
        for p0 in range(0, positions, tile):
            n = min(tile, positions - p0)
            _count_tile(x, s, p0, bins, low[:n], high[:n], delta[:n], step[:n], counter[:n], counts)
            out[s, p0:p0 + n] = counts[:n * bins].reshape(n, bins)
            counts[:] = 0
    return out


def _counts_buffer(x: np.ndarray, bins: int) -> np.ndarray:
    """Zeroed flat (position, bin) counts for one tile of positions of x, in the narrowest
    type that holds C (uint16 halves the cache the random increments touch)."""
    c, positions = x.shape[1], x.shape[2]
    tile = min(_TILE, positions, max(1, _TILE * DEFAULT_BINS // bins))  # fewer positions for many bins
    return np.zeros(tile * bins, np.uint16 if c < 2**16 else np.uint32)


def _histogram_input(x: np.ndarray, bins: int) -> np.ndarray:
    """x checked and converted for the histogram kernels."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if x.shape[1] == 0:
        raise ValueError("no channels to histogram")
    return _as_kernel_floats(x)


def _entropy_terms(c: int) -> np.ndarray:
    """-p log2 p for every possible count n = 0..C (p = n / C), looked up instead of computed per bin."""
    p = np.arange(c + 1, dtype=np.float64) / c
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, -p * np.log2(p), 0.0)


def _block_histogram_counts(x: np.ndarray, bins: int) -> np.ndarray:
    """numpy.histogram(x[s, :, p], bins) counts of a (samples, C, positions) block: (samples, positions, bins)."""
    x = _histogram_input(x, bins)
    return _histogram_counts_native(x, bins, _counts_buffer(x, bins))


def _histogram_counts(vectors: np.ndarray, bins: int) -> np.ndarray:
    """Per-row numpy.histogram(row, bins) counts of (rows, C) vectors: (rows, bins)."""
    return _block_histogram_counts(channel_major(vectors), bins)[0]


def block_entropy_sum(x: np.ndarray, bins: int = DEFAULT_BINS) -> tuple[float, int]:
    """entropy_sum of a (samples, C, positions) block, read in that layout."""
    samples, c, positions = x.shape
    if samples * positions == 0 and bins >= 1:
        return 0.0, 0
    x = _histogram_input(x, bins)
    return float(_entropy_total(x, bins, _entropy_terms(c), _counts_buffer(x, bins))), samples * positions


def entropy_sum(vectors: np.ndarray, bins: int = DEFAULT_BINS) -> tuple[float, int]:
    """Sum over rows of the Shannon entropy (bits) of each row's histogram, and the number of rows."""
    return block_entropy_sum(channel_major(vectors), bins)


# -- magnitude -------------------------------------------------------------------------------------
@_kernel
def _abs_total(flat):
    """sum |v| in float64, over 256 interleaved accumulators so that it vectorises without fastmath."""
    lanes = 256
    per_lane = np.zeros(lanes)
    whole = flat.shape[0] // lanes * lanes
    for start in range(0, whole, lanes):
        for lane in range(lanes):
            per_lane[lane] += abs(np.float64(flat[start + lane]))
    tail = 0.0
    for i in range(whole, flat.shape[0]):
        tail += abs(np.float64(flat[i]))
    return per_lane.sum() + tail


def magnitude_sum(a) -> tuple[float, int]:
    a = _as_numpy(a)
    return float(_abs_total(_as_kernel_floats(a).reshape(-1))), a.size


# -- per-layer values ------------------------------------------------------------------------------
def channel_spectrum(a, channel_axis: int = 1) -> np.ndarray:
    """Mean over positions of |FFT along channels| / C, length C: S[k] for k = 0..C-1."""
    total, n = block_spectrum_sum(channel_major(a, channel_axis))
    return total / n


def channel_entropy(a, bins: int = DEFAULT_BINS, channel_axis: int = 1) -> float:
    """Mean over positions of the Shannon entropy (bits) of the channel vector's `bins`-bin histogram."""
    total, n = block_entropy_sum(channel_major(a, channel_axis), bins)
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
        x = channel_major(block)  # a free reshape: both kernels read (samples, C, H*W) as it is
        if "spectrum" in names:
            sums["spectrum"] = block_spectrum_sum(x)
        if "entropy" in names:
            sums["entropy"] = block_entropy_sum(x, bins)
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

    Each of `workers` threads loads (reads and decompresses) a whole chunk of the file and
    summarises it, a few chunks in flight, so memory stays bounded by a few blocks (files that are
    not in whole chunks of our layout are read through the NetCDF library by a read-ahead thread
    instead). Pread, inflate and the kernels all run without the GIL. Returns {name: values}: a
    list of per-layer arrays for the spectrum (lengths may differ between CNN stages), a float array
    of shape (layers,) for entropy and magnitude.
    """
    import functools
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import nullcontext

    from .capture import ChunkReader, in_order, iter_layer_blocks
    from .chunks import Scratch

    unknown = [name for name in names if name not in METRICS]
    if unknown:  # before the file is opened
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}: valid metrics are {', '.join(METRICS)}")
    means = LayerMeans()
    desc = "+".join(names)
    reader = ChunkReader.open(capture_path, samples_per_chunk)
    if reader is not None:
        loads = reader.loaders(progress, desc)
    else:
        loads = ((layer, lambda scratch, block=block: block) for layer, block in
                 iter_layer_blocks(capture_path, samples_per_chunk, progress=progress, desc=desc, prefetch=True))

    # Each worker thread loads chunk after chunk into the same buffers (a block is summed before
    # the thread's next load), so the pass does not page-fault fresh memory in for every chunk.
    per_thread = threading.local()

    def summarise(load):
        if not hasattr(per_thread, "scratch"):
            per_thread.scratch = Scratch()
        return block_sums(load(scratch=per_thread.scratch), names, bins)

    tasks = ((layer, functools.partial(summarise, load)) for layer, load in loads)
    with reader or nullcontext(), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for layer, sums in in_order(pool, tasks, ahead=max(1, workers)):
            means.add(layer, sums)
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
