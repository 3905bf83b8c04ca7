"""The metrics of a capture file: one pass over its blocks (memory: one block) with the formulas of
metrics.py, the metric datasets (`spectrum.nc`, `entropy.nc`, `magnitude.nc`) and their atomic writes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .metrics import (DEFAULT_BINS, ENTROPY_RANGES, METRICS, LayerMeans, block_sums, channel_major, global_range,
                      position_entropies, spectrum_total)


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
