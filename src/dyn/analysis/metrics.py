"""The three per-layer lenses of the paper, in numpy and scipy, and their pass over a capture file.

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
from pathlib import Path

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


def _kept_attrs(capture_path: str | Path) -> dict:
    """The capture's attributes and per-layer channel counts, or {} where the file cannot be read here
    (iter_layer_blocks then says in one line what is wrong with it)."""
    import netCDF4

    try:
        with netCDF4.Dataset(capture_path) as root:
            return {**root.__dict__, "channels": np.asarray(root["channels"][:], dtype=int)}
    except (OSError, ValueError, IndexError):
        return {}


def capture_range(capture_path: str | Path, samples_per_block: int | None = None) -> tuple:
    """The `global` entropy range of a capture file: (min, max) over every real value (all layers,
    images, channels and positions; NaN padding excluded). `dyn capture` keeps it in the attributes
    `value_min` and `value_max`; a file without them is read once to find it."""
    from .capture import iter_layer_blocks

    kept = _kept_attrs(capture_path)
    if "value_min" in kept and "value_max" in kept:
        return np.float32(kept["value_min"]), np.float32(kept["value_max"])
    return global_range(block for _, block in iter_layer_blocks(capture_path, samples_per_block))


class _PerSample:
    """Per-layer lists of per-sample arrays, block by block, stacked at the end."""

    def __init__(self):
        self.parts: dict[int, list] = {}

    def add(self, layer: int, values: np.ndarray) -> None:
        self.parts.setdefault(layer, []).append(values)

    def stacked(self) -> list[np.ndarray]:
        return [np.concatenate(self.parts[layer]) for layer in sorted(self.parts)]


def stream_metrics(capture_path: str | Path, names=METRICS, bins: int = DEFAULT_BINS,
                   samples_per_block: int | None = None, progress: bool = False, workers: int = 1,
                   entropy_range: str = "global", permutation_seed: int = 0) -> dict:
    """Per-layer values of several metrics of a capture file, in one pass over its blocks (memory: one
    block). `workers` threads run the spectrum's FFT; `entropy_range`: `global` or `vector` (see the
    module's docstring); `permutation_seed`: the controls' fixed channel orders (controls.py).

    Returns {name: values}: a list of per-layer arrays for the spectrum (lengths may differ between CNN
    stages), a float array (layers,) otherwise. With the spectrum also `spectrum_perm` (the same with each
    layer's channels in a fixed random order, the channel-order control). With the entropy also `sample_entropy` (each
    image's mean entropy per layer, (layers, samples)), `entropy_range` (the global range's (min, max), or
    None) and, where the layers' widths differ, `sample_entropy_matched` (the same on vectors of the
    narrowest width, `matched_channels`; None where all widths are equal)."""
    from . import controls
    from .capture import iter_layer_blocks

    unknown = [name for name in names if name not in METRICS]
    if unknown:  # before the file is opened
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}: valid metrics are {', '.join(METRICS)}")
    if entropy_range not in ENTROPY_RANGES:
        raise ValueError(f"unknown entropy range '{entropy_range}': valid are {', '.join(ENTROPY_RANGES)}")
    bounds = capture_range(capture_path) if "entropy" in names and entropy_range == "global" else None
    widths = _kept_attrs(capture_path).get("channels", np.zeros(0, dtype=int))
    matched = int(widths.min()) if "entropy" in names and len(set(widths.tolist())) > 1 else None
    means, per_sample = LayerMeans(), {key: _PerSample() for key in ("entropy", "matched")}
    for layer, block in iter_layer_blocks(capture_path, samples_per_block, progress=progress, desc="+".join(names)):
        x = channel_major(block)
        sums = block_sums(x, [name for name in names if name not in ("entropy", "spectrum")], bins, workers)
        order = controls.channel_permutation(x.shape[1], permutation_seed, layer)
        if "spectrum" in names:  # as it is, and with the layer's channels in a fixed random order
            positions = x.shape[0] * x.shape[2]
            sums["spectrum"] = (spectrum_total(x, workers), positions)
            control = x[:, order, ::controls.CONTROL_STRIDE]  # every 4th position: a quarter of the FFT's cost
            sums["spectrum_perm"] = (spectrum_total(control, workers), control.shape[0] * control.shape[2])
        if "entropy" in names:  # kept per image too: the phases' tests resample and split images
            entropies = position_entropies(x, bins, bounds)
            sums["entropy"] = (float(entropies.sum()), entropies.size)
            per_sample["entropy"].add(layer, entropies.mean(axis=1))
            if matched is not None:
                per_sample["matched"].add(layer, controls.matched_entropies(x, matched, order, bins, bounds))
        means.add(layer, sums)
    values = means.means()
    if "entropy" in names:
        values.update(sample_entropy=np.stack(per_sample["entropy"].stacked()), entropy_range=bounds,
                      matched_channels=matched,
                      sample_entropy_matched=np.stack(per_sample["matched"].stacked()) if matched else None)
    return values


def _padded_rows(rows: list[np.ndarray]) -> np.ndarray:
    """1-d arrays of different lengths as rows of one array, NaN beyond each one's own length."""
    out = np.full((len(rows), max(len(row) for row in rows)), np.nan)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def metric_dataset(capture_path: str | Path, name: str, bins: int = DEFAULT_BINS, progress: bool = False,
                   workers: int = 1, entropy_range: str = "global", permutation_seed: int = 0):
    """An xarray Dataset holding one metric of a capture file, with the capture's attrs."""
    import xarray as xr

    streamed = stream_metrics(capture_path, (name,), bins, progress=progress, workers=workers,
                              entropy_range=entropy_range, permutation_seed=permutation_seed)
    values = streamed[name]
    with xr.open_dataset(capture_path) as capture:
        attrs = dict(capture.attrs)
        channels = capture["channels"].values.astype(int)
        samples = capture["sample"].values
        labels = capture["label"].values if "label" in capture.coords else None
    attrs.update(metric=name, source=str(capture_path))
    layer = np.arange(len(values))
    per_image = {"sample": samples, **({"label": ("sample", labels)} if labels is not None else {})}
    if name == "spectrum":
        ds = xr.Dataset({"spectrum": (("layer", "frequency"), _padded_rows(values)),
                         "spectrum_perm": (("layer", "frequency"), _padded_rows(streamed["spectrum_perm"])),
                         "intensity": ("layer", [float(np.mean(v)) for v in values])},
                        coords={"layer": layer, "channels": ("layer", channels)})
        ds = ds.assign_coords(frequency=np.arange(ds.sizes["frequency"]))
        attrs["permutation_seed"] = permutation_seed
        ds["spectrum"].attrs.update(long_name="mean |FFT along channels| / C over positions",
                                    note="NaN beyond a layer's own channel count")
        ds["spectrum_perm"].attrs.update(long_name="the same with the layer's channels in a fixed random order "
                                                   "(the channel-order control; seed: permutation_seed, layer), "
                                                   "over every 4th position of each image")
        ds["intensity"].attrs.update(long_name="average frequency intensity: the spectrum's mean over the "
                                               "layer's C channel frequencies")
    else:
        ds = xr.Dataset({name: ("layer", values)}, coords={"layer": layer, "channels": ("layer", channels)})
        if name == "entropy":
            attrs.update(bins=bins, entropy_range=entropy_range)
            if streamed["entropy_range"] is not None:
                attrs.update(range_min=float(streamed["entropy_range"][0]),
                             range_max=float(streamed["entropy_range"][1]))
            ds[name].attrs.update(units="bits", long_name="mean Shannon entropy of the channel vector")
            ds["sample_entropy"] = (("layer", "sample"), streamed["sample_entropy"])
            ds = ds.assign_coords(**per_image)
            ds["sample_entropy"].attrs.update(units="bits", long_name="each image's mean entropy per layer")
            if streamed["sample_entropy_matched"] is not None:
                attrs.update(matched_channels=streamed["matched_channels"], permutation_seed=permutation_seed)
                ds["sample_entropy_matched"] = (("layer", "sample"), streamed["sample_entropy_matched"])
                ds["sample_entropy_matched"].attrs.update(
                    units="bits", long_name="each image's mean entropy per layer on vectors of matched_channels "
                                            "channels (the width control)")
        else:
            ds[name].attrs.update(long_name="mean absolute activation")
    ds.attrs = attrs
    return ds


def write_metric(capture_path: str | Path, name: str, out: str | Path, bins: int = DEFAULT_BINS,
                 progress: bool = False, workers: int = 1, entropy_range: str = "global",
                 permutation_seed: int = 0) -> Path:
    """`dyn metrics NAME`: `out` (.nc) and a long-form .csv beside it, both written atomically."""
    from ..errors import UserError
    from ..atomic import atomic_path, write_text

    if not Path(capture_path).is_file():
        raise UserError(f"capture file not found: {capture_path}")
    out = Path(out)
    ds = metric_dataset(capture_path, name, bins, progress, workers, entropy_range, permutation_seed)
    with atomic_path(out) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")
    columns = [name, "intensity"] if name == "spectrum" else [name]
    frame = ds[columns].to_dataframe().reset_index().dropna(subset=[name])
    write_text(out.with_suffix(".csv"), frame.to_csv(index=False))
    return out
