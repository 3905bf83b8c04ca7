"""Synthetic nulls for the phases' claims, and the rates at which the U test calls a U on them.

The suite (tests/test_phases.py) checks the rates on a few hundred draws; `make bench` (section
`calibration`) measures them on more and writes them to results/bench.json, whence the table in
docs/beyond.md.
"""
from __future__ import annotations

import numpy as np

from . import controls, metrics, phases

# A profile that falls, then stays flat: the second rise of a U is missing.
FALL_THEN_FLAT = (5.0, 4.7, 4.45, 4.3) + (4.25,) * 8
# The widths of a CNN whose only narrow stage is in the middle.
NARROW_MIDDLE = (32, 64, 16, 64, 128)
# Per-image noise for the nulls and the paper's U: each image's mean entropy of a layer scatters by 0.3
# bits (the digits models' scatter by 0.02-0.3 bits), half as much again shared by all layers of an image.
PAPER_NOISE = {"sd": 0.3, "image_sd": 0.15}


def paper_u() -> np.ndarray:
    """A U of the paper's size: the authors' SoftKD DeiT-Tiny after 300 epochs (their Analysis_Results),
    minimum at block 4, rises of 0.62 and 1.53 bits."""
    from ..paper import paper_entropy

    return paper_entropy("softkd", "none", 0.0, 300, "cait_s24_224", "deit_tiny_patch16_224")[300]


def simulate(profile, images: int, rng: np.random.Generator, sd: float = 0.05, image_sd: float = 0.05,
             rho: float = 0.5) -> np.ndarray:
    """Per-image entropies (layers, images) around a mean `profile`: each image's own level (`image_sd`)
    plus noise correlated along depth (AR(1) with `rho`), as neighbouring layers of one image are."""
    layers = len(profile)
    e = rng.standard_normal((images, layers))
    noise = np.empty_like(e)
    noise[:, 0] = e[:, 0]
    for layer in range(1, layers):
        noise[:, layer] = rho * noise[:, layer - 1] + np.sqrt(1 - rho ** 2) * e[:, layer]
    return np.asarray(profile, dtype=float)[:, None] + sd * noise.T + image_sd * rng.standard_normal(images)[None, :]


def u_rate(profile, images: int, runs: int = 400, seed: int = 0, min_rise: float = phases.MIN_RISE,
           alpha: float = phases.ALPHA, **noise) -> float:
    """The share of `runs` simulated captures of `profile` that the U test calls a U (each its own split)."""
    rng = np.random.default_rng(seed)
    return float(np.mean([phases.u_test(simulate(profile, images, rng, **noise), min_rise, alpha, seed=run)["u"]
                          for run in range(runs)]))


def iid_layers(rng: np.random.Generator, widths, images: int = 32, positions: int = 16) -> list[np.ndarray]:
    """iid N(0, 1) activations, (images, C, positions), one array per width."""
    return [rng.standard_normal((images, c, positions)).astype(np.float32) for c in widths]


def per_image_entropies(layers: list[np.ndarray], matched: bool, seed: int = 0,
                        bins: int = metrics.DEFAULT_BINS) -> np.ndarray:
    """Each image's mean entropy per layer (layers, images) over the layers' global range, in raw bits or
    on vectors of the narrowest width (the width control)."""
    bounds = metrics.global_range(layers)
    if not matched:
        return np.stack([metrics.position_entropies(x, bins, bounds).mean(axis=1) for x in layers])
    narrowest = min(x.shape[1] for x in layers)
    return np.stack([controls.matched_entropies(x, narrowest, controls.channel_permutation(x.shape[1], seed, i),
                                                bins, bounds) for i, x in enumerate(layers)])


def width_u_rate(widths=NARROW_MIDDLE, matched: bool = True, runs: int = 100, seed: int = 0) -> float:
    """The share of `runs` captures of iid values in layers of `widths` that the U test calls a U."""
    rng = np.random.default_rng(seed)
    return float(np.mean([phases.u_test(per_image_entropies(iid_layers(rng, widths), matched, seed=run),
                                        seed=run)["u"] for run in range(runs)]))


def calibration(runs: int = 2000) -> list[dict]:
    """The U test's rates on every null and on the paper's U, at the default smallest rise and level."""
    paper = paper_u()
    cases = [(f"exchangeable layers: {layers} layers, {images} images", [4.0] * layers, images)
             for layers in (12, 24) for images in (32, 64)]
    cases += [("fall then flat, 12 layers, 32 images", FALL_THEN_FLAT, 32),
              ("flat then rise, 12 layers, 32 images", FALL_THEN_FLAT[::-1], 32),
              ("monotone fall, 12 layers, 32 images", np.linspace(5, 4, 12), 32),
              ("the paper's U (authors' SoftKD student, 300 epochs), 32 images", paper, 32)]
    rows = []
    for what, profile, images in cases:
        for min_rise in (0.0, phases.MIN_RISE):
            rows.append({"what": what, "min_rise": min_rise, "runs": runs,
                         "u_rate": u_rate(profile, images, runs, min_rise=min_rise, **PAPER_NOISE)})
    for matched in (False, True):
        rows.append({"what": f"iid values, widths {NARROW_MIDDLE}, 32 images, "
                             + ("width-matched entropy" if matched else "raw bits"),
                     "min_rise": phases.MIN_RISE, "runs": runs // 10,
                     "u_rate": width_u_rate(matched=matched, runs=runs // 10)})
    return rows
