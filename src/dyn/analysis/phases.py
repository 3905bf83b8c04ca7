"""The phases of a model as numbers: where its entropy bottleneck is, whether the profile is a U,
and how sure we can be, from its three metric files.

Per layer: `lowpass`, the share of the layer's non-DC mean channel spectrum S[k] (k = 1..C/2, one side
of the symmetric spectrum) that lies in the lowest quarter of the channel frequencies (k <= C/8): 0.25
for a flat spectrum, near 1 for a low-pass one. `phase`: `compression` before the bottleneck (the layer
of lowest mean entropy), `bottleneck`, `expansion` after it.

A U is present when the bottleneck is interior and both ends of the profile exceed it by more than the
noise. The noise comes from a bootstrap over the analysis images (each image's mean entropy per layer,
kept in entropy.nc): resampling the images with replacement gives 95% percentile intervals for the
bottleneck layer and for each end's rise above the profile's minimum; both rises' intervals must lie
above 0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

N_BOOTSTRAP = 2000


def lowpass_score(spectrum: np.ndarray, channels: int) -> float:
    """Share of the non-DC one-sided spectrum S[1..C/2] at channel frequencies k <= C/8."""
    half = np.asarray(spectrum[1:channels // 2 + 1], dtype=np.float64)
    k = np.arange(1, channels // 2 + 1)
    total = half.sum()
    return float(half[k <= channels / 8].sum() / total) if total > 0 else float("nan")


def label_phases(entropy: np.ndarray) -> tuple[int, list[str]]:
    """(bottleneck layer, each layer's phase) of a per-layer entropy profile."""
    bottleneck = int(np.argmin(entropy))
    phases = ["compression" if layer < bottleneck else "bottleneck" if layer == bottleneck else "expansion"
              for layer in range(len(entropy))]
    return bottleneck, phases


def bootstrap(sample_entropy: np.ndarray, n: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% percentile intervals, over `n` resamplings of the images (columns of a (layers, samples)
    array), of the bottleneck layer and of the first and last layers' rise above the minimum."""
    rng = np.random.default_rng(seed)
    layers, samples = sample_entropy.shape
    draws = rng.integers(0, samples, size=(n, samples))
    profiles = sample_entropy[:, draws].mean(axis=2).T  # (n, layers)
    lowest = profiles.min(axis=1)
    found = {"bottleneck": profiles.argmin(axis=1), "rise_first": profiles[:, 0] - lowest,
             "rise_last": profiles[:, -1] - lowest}
    return {name: tuple(float(v) for v in np.percentile(values, [2.5, 97.5])) for name, values in found.items()}


def phases_dataset(entropy_path: str | Path, magnitude_path: str | Path, spectrum_path: str | Path, seed: int = 0):
    """An xarray Dataset of the per-layer table (`layer` dim) with the verdict in its attributes."""
    import xarray as xr

    from ..files import load_netcdf

    ent = load_netcdf(entropy_path, "entropy file", ["entropy"])
    if "sample_entropy" not in ent:
        from ..errors import UserError

        raise UserError(f"{entropy_path} has no per-image entropies (an older dyn wrote it): "
                        "remake it, e.g. snakemake --forcerun entropy")
    mag = load_netcdf(magnitude_path, "magnitude file", ["magnitude"])
    spec = load_netcdf(spectrum_path, "spectrum file", ["spectrum", "channels"])
    entropy, per_image, attrs = ent["entropy"].values, ent["sample_entropy"].values, dict(ent.attrs)
    magnitude, spectrum, channels = mag["magnitude"].values, spec["spectrum"].values, spec["channels"].values.astype(int)
    layers = len(entropy)
    if not len(magnitude) == len(spectrum) == layers == per_image.shape[0]:
        from ..errors import UserError

        raise UserError(f"{entropy_path}, {magnitude_path} and {spectrum_path} have different numbers of layers: "
                        "give the three metric files of one model")
    bottleneck, phases = label_phases(entropy)
    noise = bootstrap(per_image, seed=seed)
    interior = 0 < bottleneck < layers - 1
    u_shape = interior and noise["rise_first"][0] > 0 and noise["rise_last"][0] > 0
    ds = xr.Dataset(
        {"block": ("layer", np.arange(1, layers + 1)),
         "relative_depth": ("layer", np.arange(layers) / max(layers - 1, 1)),
         "entropy": ("layer", entropy), "magnitude": ("layer", magnitude),
         "lowpass": ("layer", [lowpass_score(row, c) for row, c in zip(spectrum, channels)]),
         "phase": ("layer", phases)},
        coords={"layer": np.arange(layers)})
    ds["lowpass"].attrs["long_name"] = "share of the non-DC channel spectrum at k <= C/8 (0.25: flat)"
    ds.attrs = {**{k: attrs[k] for k in ("model", "arch", "layer_kind", "dataset", "sample_selection") if k in attrs},
                "bottleneck_layer": bottleneck, "bottleneck_block": bottleneck + 1,
                "bottleneck_block_ci": [v + 1 for v in noise["bottleneck"]], "u_shape": int(u_shape),
                "rise_first": float(entropy[0] - entropy[bottleneck]), "rise_first_ci": list(noise["rise_first"]),
                "rise_last": float(entropy[-1] - entropy[bottleneck]), "rise_last_ci": list(noise["rise_last"]),
                "n_images": int(per_image.shape[1]), "n_bootstrap": N_BOOTSTRAP, "bootstrap_seed": seed,
                "verdict": _verdict(u_shape, bottleneck, layers, attrs.get("layer_kind", "layer"), noise)}
    return ds


def _verdict(u_shape: bool, bottleneck: int, layers: int, kind: str, noise: dict) -> str:
    where = f"the entropy minimum is at {kind} {bottleneck + 1} of {layers}"
    if u_shape:
        return f"U: {where}, and both ends rise above it by more than the bootstrap noise"
    if not 0 < bottleneck < layers - 1:
        return f"no U: {where}, an end of the profile"
    within = [name.removeprefix("rise_") for name in ("rise_first", "rise_last") if noise[name][0] <= 0]
    return f"no U shown: {where}, but the rise of the {' and the '.join(within)} {kind} is within the bootstrap noise"


def write_phases(entropy_path: str | Path, magnitude_path: str | Path, spectrum_path: str | Path,
                 out: str | Path) -> Path:
    """`dyn metrics phases`: `out` (phases.csv, one row per layer) and phases.nc beside it with the same
    table and the verdict (bottleneck, U or not, the bootstrap intervals) as attributes."""
    from ..workflow.atomic import atomic_path, write_text

    out = Path(out)
    ds = phases_dataset(entropy_path, magnitude_path, spectrum_path)
    with atomic_path(out.with_suffix(".nc")) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")
    table = ds[["block", "relative_depth", "entropy", "magnitude", "lowpass", "phase"]].to_dataframe().reset_index()
    write_text(out, table.to_csv(index=False, float_format="%.6g"))
    return out


def read_bottleneck(phases_csv: str | Path) -> int:
    """The bottleneck layer (0-based) of a phases.csv, for the `auto` layer spec."""
    import csv

    from ..errors import UserError

    path = Path(phases_csv)
    if not path.is_file():
        raise UserError(f"phases file not found: {path} (`dyn metrics phases` writes it)")
    with path.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("phase") == "bottleneck"]
    if len(rows) != 1:
        raise UserError(f"{path} is not a phases table: it should name exactly one bottleneck layer")
    return int(rows[0]["layer"])
