"""The phases of a model as numbers: whether its entropy profile is a U and where its bottleneck is,
each claim tested against its null, from its three metric files.

The U test. The bottleneck is the layer of lowest mean entropy, and each end's rise is measured from
it; chosen and measured on the same images, the minimum's own noise makes rises out of nothing (a flat
profile gets a U half the time). So the analysis images are split in two at random (seeded): the
bottleneck is chosen on one half (selection) and both rises, first layer minus bottleneck and last
layer minus bottleneck, are measured image by image on the other half (test), each tested one-sided
against a smallest effect `min_rise` (bits) with a t test at level `alpha`. The profile is a U when the
bottleneck is interior and both rises are shown. Whatever the profile, a U is called with probability
at most `alpha` when either rise is truly at most `min_rise` (tests/test_phases.py measures it on
exchangeable, fall-then-flat, monotone and width-changing nulls).

Width. Where the layers differ in width, the test reads each layer's entropy on vectors of the
narrowest layer's width (`sample_entropy_matched`, controls.py), so a narrow layer is not a bottleneck
by its narrowness. `entropy_norm` (entropy / log2(min(C, bins)), the share of the layer's ceiling) is
reported beside it; it does not equalise layers of iid values (a 64-value histogram in 100 bins fills
them differently than a 512-value one), so the test does not use it.

Channel order. `lowpass`: the share of the layer's non-DC mean channel spectrum S[k] (k = 1..C/2, one
side of the symmetric spectrum) at the lowest quarter of the channel frequencies (k <= C/8): 0.25 for a
flat spectrum. `lowpass_perm`: the same with the layer's channels in a fixed random order (the spectrum
file's control); `dc_share`: S[0]'s share of the whole spectrum S[0..C-1]. Training fixes no channel
order, so a low-pass score says something about the layer only where it differs from its control; no
low-pass verdict is printed.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

N_BOOTSTRAP = 2000
MIN_RISE = 0.05   # bits: the smallest rise of an end above the bottleneck that counts towards a U
ALPHA = 0.05      # level of each one-sided rise test (and so the U's false-positive rate)


def lowpass_score(spectrum: np.ndarray, channels: int) -> float:
    """Share of the non-DC one-sided spectrum S[1..C/2] at channel frequencies k <= C/8."""
    half = np.asarray(spectrum[1:channels // 2 + 1], dtype=np.float64)
    k = np.arange(1, channels // 2 + 1)
    total = half.sum()
    return float(half[k <= channels / 8].sum() / total) if total > 0 else float("nan")


def dc_share(spectrum: np.ndarray, channels: int) -> float:
    """S[0]'s share of the whole spectrum S[0..C-1]."""
    full = np.asarray(spectrum[:channels], dtype=np.float64)
    return float(full[0] / full.sum()) if full.sum() > 0 else float("nan")


def entropy_norm(entropy: np.ndarray, channels: np.ndarray, bins: int) -> np.ndarray:
    """Entropy as a share of its ceiling, log2(min(C, bins)) bits."""
    return np.asarray(entropy) / np.log2(np.minimum(channels, bins))


def _rise(differences: np.ndarray, min_rise: float) -> dict:
    """Mean of per-image rises, its 95% t interval and the one-sided p-value of mean <= min_rise."""
    from scipy import stats

    n, mean = len(differences), float(differences.mean())
    se = float(differences.std(ddof=1)) / math.sqrt(n)
    if se == 0:  # every image rises by the same amount
        return {"rise": mean, "ci": (mean, mean), "p": 0.0 if mean > min_rise else 1.0}
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return {"rise": mean, "ci": (mean - half, mean + half), "p": float(stats.t.sf((mean - min_rise) / se, n - 1))}


def u_test(values: np.ndarray, min_rise: float = MIN_RISE, alpha: float = ALPHA, seed: int = 0) -> dict:
    """The split-sample U test of a (layers, images) array of per-image entropies.

    Returns the bottleneck chosen on the selection half (`bottleneck`), each rise measured on the test
    half (`first`, `last`: rise, 95% interval, one-sided p-value), `u` (bool) and the halves' sizes.
    """
    layers, n = values.shape
    order = np.random.default_rng(seed).permutation(n)
    select, test = order[:n // 2], order[n // 2:]
    if layers < 3 or len(select) < 2 or len(test) < 3:
        return {"bottleneck": int(np.argmin(values.mean(axis=1))), "first": None, "last": None, "u": False,
                "n_select": len(select), "n_test": len(test)}
    bottleneck = int(np.argmin(values[:, select].mean(axis=1)))
    rises = {name: _rise(values[end, test] - values[bottleneck, test], min_rise)
             for name, end in (("first", 0), ("last", layers - 1))}
    interior = 0 < bottleneck < layers - 1
    u = interior and all(rise["p"] < alpha for rise in rises.values())
    return {"bottleneck": bottleneck, **rises, "u": bool(u), "n_select": len(select), "n_test": len(test)}


def bootstrap_bottleneck(values: np.ndarray, n: int = N_BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval, over `n` resamplings of all the images, of the lowest layer's index."""
    rng = np.random.default_rng(seed)
    layers, samples = values.shape
    draws = rng.integers(0, samples, size=(n, samples))
    lowest = values[:, draws].mean(axis=2).argmin(axis=0)
    return tuple(float(v) for v in np.percentile(lowest, [2.5, 97.5]))


def label_phases(layers: int, bottleneck: int, u_shape: bool) -> list[str]:
    """Each layer's phase: compression, bottleneck, expansion around the bottleneck of a U; `none`
    everywhere when no U is shown."""
    if not u_shape:
        return ["none"] * layers
    return ["compression" if layer < bottleneck else "bottleneck" if layer == bottleneck else "expansion"
            for layer in range(layers)]


def phases_dataset(entropy_path: str | Path, magnitude_path: str | Path, spectrum_path: str | Path,
                   min_rise: float = MIN_RISE, alpha: float = ALPHA, seed: int = 0):
    """An xarray Dataset of the per-layer table (`layer` dim) with the verdict in its attributes."""
    import xarray as xr

    ent, mag, spec = _load(entropy_path, magnitude_path, spectrum_path)
    entropy, channels, attrs = ent["entropy"].values, spec["channels"].values.astype(int), dict(ent.attrs)
    layers, bins = len(entropy), int(attrs["bins"])
    matched = "sample_entropy_matched" in ent
    tested = ent["sample_entropy_matched" if matched else "sample_entropy"].values
    scale = (f"bits, each layer's vectors cut to the narrowest width ({attrs.get('matched_channels')} channels)"
             if matched else "bits")
    test = u_test(tested, min_rise, alpha, seed)
    spectrum = spec["spectrum"].values
    perm = spec["spectrum_perm"].values if "spectrum_perm" in spec else np.full_like(spectrum, np.nan)
    ds = xr.Dataset(
        {"block": ("layer", np.arange(1, layers + 1)),
         "relative_depth": ("layer", np.arange(layers) / max(layers - 1, 1)),
         "channels": ("layer", channels),
         "entropy": ("layer", entropy), "entropy_norm": ("layer", entropy_norm(entropy, channels, bins)),
         "entropy_tested": ("layer", tested.mean(axis=1)),
         "magnitude": ("layer", mag["magnitude"].values),
         "lowpass": ("layer", [lowpass_score(row, c) for row, c in zip(spectrum, channels)]),
         "lowpass_perm": ("layer", [lowpass_score(row, c) for row, c in zip(perm, channels)]),
         "dc_share": ("layer", [dc_share(row, c) for row, c in zip(spectrum, channels)]),
         "phase": ("layer", label_phases(layers, test["bottleneck"], test["u"]))},
        coords={"layer": np.arange(layers)})
    ds["entropy_norm"].attrs["long_name"] = "entropy / log2(min(C, bins)): the share of the layer's ceiling"
    ds["entropy_tested"].attrs["long_name"] = f"the mean entropy the U test reads ({scale})"
    ds["lowpass"].attrs["long_name"] = "share of the non-DC channel spectrum at k <= C/8 (0.25: flat)"
    ds["lowpass_perm"].attrs["long_name"] = "the same with the layer's channels in a fixed random order (control)"
    ds["dc_share"].attrs["long_name"] = "the DC term's share of the channel spectrum S[0..C-1]"
    ci = bootstrap_bottleneck(tested, seed=seed)
    ds.attrs = {**{k: attrs[k] for k in ("model", "arch", "layer_kind", "dataset", "sample_selection",
                                         "entropy_range") if k in attrs},
                "u_shape": int(test["u"]), "bottleneck_layer": test["bottleneck"],
                "bottleneck_block": test["bottleneck"] + 1, "bottleneck_block_ci": [v + 1 for v in ci],
                "u_min_rise": min_rise, "u_alpha": alpha, "split_seed": seed, "entropy_scale": scale,
                "n_images": int(tested.shape[1]), "n_select": test["n_select"], "n_test": test["n_test"],
                "n_bootstrap": N_BOOTSTRAP, "permutation_seed": int(spec.attrs.get("permutation_seed", 0)),
                "verdict": _verdict(test, layers, attrs.get("layer_kind", "layer"), min_rise, alpha)}
    for name in ("first", "last"):
        if test[name] is not None:
            ds.attrs.update({f"rise_{name}": test[name]["rise"], f"rise_{name}_ci": list(test[name]["ci"]),
                             f"rise_{name}_p": test[name]["p"]})
    return ds


def _load(entropy_path, magnitude_path, spectrum_path):
    from ..errors import UserError
    from ..files import load_netcdf

    ent = load_netcdf(entropy_path, "entropy file", ["entropy"])
    if "sample_entropy" not in ent:
        raise UserError(f"{entropy_path} has no per-image entropies (an older dyn wrote it): "
                        "remake it, e.g. snakemake --forcerun entropy")
    mag = load_netcdf(magnitude_path, "magnitude file", ["magnitude"])
    spec = load_netcdf(spectrum_path, "spectrum file", ["spectrum", "channels"])
    if not len(mag["magnitude"]) == len(spec["spectrum"]) == len(ent["entropy"]) == ent["sample_entropy"].shape[0]:
        raise UserError(f"{entropy_path}, {magnitude_path} and {spectrum_path} have different numbers of layers: "
                        "give the three metric files of one model")
    return ent, mag, spec


def _verdict(test: dict, layers: int, kind: str, min_rise: float, alpha: float) -> str:
    where = f"the entropy minimum of the selection half of the images is at {kind} {test['bottleneck'] + 1} of {layers}"
    if test["first"] is None:
        return f"no U shown: {test['n_select'] + test['n_test']} images are too few to split and test"
    rises = "; ".join(f"{name} {kind} {test[name]['rise']:+.3f} bits (95% CI {test[name]['ci'][0]:+.3f} to "
                      f"{test[name]['ci'][1]:+.3f}, p = {test[name]['p']:.2g})" for name in ("first", "last"))
    if test["u"]:
        return (f"U: {where}, and on the other half both ends rise above it by more than {min_rise:g} bits "
                f"(one-sided t tests at {alpha:g}): {rises}")
    if not 0 < test["bottleneck"] < layers - 1:
        return f"no U: {where}, an end of the profile"
    within = [name for name in ("first", "last") if test[name]["p"] >= alpha]
    return (f"no U shown: {where}, but on the other half the rise of the {' and the '.join(within)} {kind} is not "
            f"shown above {min_rise:g} bits at {alpha:g}: {rises}")


COLUMNS = ["block", "relative_depth", "channels", "entropy", "entropy_norm", "entropy_tested", "magnitude",
           "lowpass", "lowpass_perm", "dc_share", "phase"]


def write_phases(entropy_path: str | Path, magnitude_path: str | Path, spectrum_path: str | Path,
                 out: str | Path, min_rise: float = MIN_RISE, alpha: float = ALPHA, seed: int = 0) -> Path:
    """`dyn metrics phases`: `out` (phases.csv, one row per layer) and phases.nc beside it with the same
    table and the verdict (the U test's bottleneck, rises, intervals and p-values) as attributes."""
    from ..atomic import atomic_path, write_text

    out = Path(out)
    ds = phases_dataset(entropy_path, magnitude_path, spectrum_path, min_rise, alpha, seed)
    with atomic_path(out.with_suffix(".nc")) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")
    table = ds[COLUMNS].to_dataframe().reset_index()
    write_text(out, table.to_csv(index=False, float_format="%.6g"))
    return out


def read_bottleneck(phases_csv: str | Path) -> int:
    """The bottleneck layer (0-based) of a phases.csv, for the `auto` layer spec; refuses a profile that
    shows no U (no compression phase to align)."""
    import csv

    from ..errors import UserError

    path = Path(phases_csv)
    if not path.is_file():
        raise UserError(f"phases file not found: {path} (`dyn metrics phases` writes it)")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    if rows and "phase" in rows[0] and all(row["phase"] == "none" for row in rows):
        raise UserError(f"layer spec auto needs a teacher whose entropy profile is a U, but {path} shows none "
                        "(its phases.nc says why): align fixed layers instead, e.g. First1")
    bottleneck = [row for row in rows if row.get("phase") == "bottleneck"]
    if len(bottleneck) != 1:
        raise UserError(f"{path} is not a phases table: it should name exactly one bottleneck layer")
    return int(bottleneck[0]["layer"])
