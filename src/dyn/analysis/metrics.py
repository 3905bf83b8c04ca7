"""The three per-layer lenses of the paper, in numpy and scipy, and their pass over a capture file.

For one layer's activations A with C channels at every position (sample, y, x):
- spectrum:  F[k] = (1/C) sum_c A[c] exp(-2 pi i k c / C);  S[k] = mean over positions of |F[k]|
- entropy:   the C values at a position counted into `bins` equal-width bins over their own
             min..max (numpy.histogram's bins), p = counts / C, E = -sum_{p>0} p log2 p;
             the layer's value is the mean of E over positions
- magnitude: mean of |A| over all elements

Every function reads a block as (samples, C, positions), the memory layout of a (samples, C, H, W)
capture block, so no channels-last copy is made. A file is summarised block by block: each block
gives (sum over its positions, number of positions), and the sums of a layer add up to its mean.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numpy.lib.array_utils import normalize_axis_index

METRICS = ("spectrum", "entropy", "magnitude")
DEFAULT_BINS = 100


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


def histogram_counts(x: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """numpy.histogram(x[s, :, p], bins) counts for every position of a (samples, C, positions) block,
    as (samples, positions, bins), computed for all positions at once.

    As numpy.histogram: each position's range is its min..max (min - 0.5..max + 0.5 when constant),
    a value's bin is (v - min) / (max - min) * bins, moved down or up one where it falls outside
    that bin's edges min + k (max - min) / bins after rounding, and the maximum goes into the last bin.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    samples, c, positions = x.shape
    low, high = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    constant = low == high
    low, high = np.where(constant, low - 0.5, low), np.where(constant, high + 0.5, high)
    delta = (high - low).astype(x.dtype)
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


def position_entropies(x: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """The Shannon entropy (bits) of each position's `bins`-bin histogram of a (samples, C, positions)
    block, as (samples, positions)."""
    c = x.shape[1]
    p = np.arange(c + 1) / c
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(p), 0.0)  # -p log2 p for every possible count 0..C
    return terms[histogram_counts(x, bins)].sum(axis=2)


def entropy_total(x: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """Sum over the positions of a (samples, C, positions) block of their entropies."""
    return float(position_entropies(x, bins).sum())


def magnitude_total(x: np.ndarray) -> float:
    """Sum of |x| over every element, in float64."""
    return float(np.abs(x).sum(dtype=np.float64))


def block_sums(block, names=METRICS, bins: int = DEFAULT_BINS, workers: int = 1) -> dict[str, tuple]:
    """{metric: (sum, number of positions or elements)} of one (samples, C, H, W) block (array or tensor)."""
    x = channel_major(block)
    positions = x.shape[0] * x.shape[2]
    sums = {}
    if "spectrum" in names:
        sums["spectrum"] = (spectrum_total(x, workers), positions)
    if "entropy" in names:
        sums["entropy"] = (entropy_total(x, bins), positions)
    if "magnitude" in names:
        sums["magnitude"] = (magnitude_total(x), x.size)
    return sums


# -- per-layer values of one array ---------------------------------------------------------------------
def channel_spectrum(a, channel_axis: int = 1) -> np.ndarray:
    """Mean over positions of |FFT along channels| / C, length C: S[k] for k = 0..C-1."""
    x = channel_major(a, channel_axis)
    return spectrum_total(x) / (x.shape[0] * x.shape[2])


def channel_entropy(a, bins: int = DEFAULT_BINS, channel_axis: int = 1) -> float:
    """Mean over positions of the Shannon entropy (bits) of the channel vector's `bins`-bin histogram."""
    x = channel_major(a, channel_axis)
    return entropy_total(x, bins) / (x.shape[0] * x.shape[2])


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
        """{name: per-layer means}: a list of arrays for the spectrum, a float array otherwise."""
        out = {}
        for name, per_layer in self.totals.items():
            values = [per_layer[layer][0] / per_layer[layer][1] for layer in sorted(per_layer)]
            out[name] = values if name == "spectrum" else np.asarray(values, dtype=np.float64)
        return out


def stream_metrics(capture_path: str | Path, names=METRICS, bins: int = DEFAULT_BINS,
                   samples_per_block: int | None = None, progress: bool = False, workers: int = 1) -> dict:
    """Per-layer values of several metrics of a capture file, in one pass over its blocks (memory: one
    block). `workers` threads run the spectrum's FFT. Returns {name: values}: a list of per-layer arrays
    for the spectrum (lengths may differ between CNN stages), a float array (layers,) otherwise, and with
    the entropy `sample_entropy`: each image's mean entropy per layer, (layers, samples)."""
    from .capture import iter_layer_blocks

    unknown = [name for name in names if name not in METRICS]
    if unknown:  # before the file is opened
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}: valid metrics are {', '.join(METRICS)}")
    means, per_sample = LayerMeans(), {}
    for layer, block in iter_layer_blocks(capture_path, samples_per_block, progress=progress, desc="+".join(names)):
        x = channel_major(block)
        sums = block_sums(x, [name for name in names if name != "entropy"], bins, workers)
        if "entropy" in names:  # kept per image too: the phases' bootstrap resamples images
            entropies = position_entropies(x, bins)
            sums["entropy"] = (float(entropies.sum()), entropies.size)
            per_sample.setdefault(layer, []).append(entropies.mean(axis=1))
        means.add(layer, sums)
    values = means.means()
    if per_sample:
        values["sample_entropy"] = np.stack([np.concatenate(per_sample[layer]) for layer in sorted(per_sample)])
    return values


def metric_dataset(capture_path: str | Path, name: str, bins: int = DEFAULT_BINS, progress: bool = False,
                   workers: int = 1):
    """An xarray Dataset holding one metric of a capture file, with the capture's attrs."""
    import xarray as xr

    streamed = stream_metrics(capture_path, (name,), bins, progress=progress, workers=workers)
    values = streamed[name]
    with xr.open_dataset(capture_path) as capture:
        attrs = dict(capture.attrs)
        channels = capture["channels"].values.astype(int)
        samples = capture["sample"].values
        labels = capture["label"].values if "label" in capture.coords else None
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
            ds["sample_entropy"] = (("layer", "sample"), streamed["sample_entropy"])
            ds = ds.assign_coords(sample=samples, **({"label": ("sample", labels)} if labels is not None else {}))
            ds["sample_entropy"].attrs.update(units="bits", long_name="each image's mean entropy per layer")
        else:
            ds[name].attrs.update(long_name="mean absolute activation")
    ds.attrs = attrs
    return ds


def write_metric(capture_path: str | Path, name: str, out: str | Path, bins: int = DEFAULT_BINS,
                 progress: bool = False, workers: int = 1) -> Path:
    """`dyn metrics NAME`: `out` (.nc) and a long-form .csv beside it, both written atomically."""
    from ..errors import UserError
    from ..workflow.atomic import atomic_path, write_text

    if not Path(capture_path).is_file():
        raise UserError(f"capture file not found: {capture_path}")
    out = Path(out)
    ds = metric_dataset(capture_path, name, bins, progress, workers)
    with atomic_path(out) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")
    frame = ds[name].to_dataframe().reset_index().dropna(subset=[name])
    write_text(out.with_suffix(".csv"), frame.to_csv(index=False))
    return out
