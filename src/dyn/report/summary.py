"""`results/phases.md`: each analysed model's phases in words, read only from its phases.nc.

Every statement is one the file supports: the verdict sentence as `dyn metrics phases` wrote it, a U and
its bottleneck only where `u_shape` is 1, the low-pass score beside its channel-permuted control (and no
low-pass verdict: channel order is arbitrary in a trained network), the entropy scale the U test read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..files import load_netcdf

ATTRS = ("u_shape", "verdict", "entropy_scale")


def _range(values: np.ndarray) -> str | None:
    finite = values[np.isfinite(values)]
    return f"{finite.min():.3f} to {finite.max():.3f}" if finite.size else None


def model_section(path: str | Path) -> str:
    """One Markdown section from one phases.nc."""
    with load_netcdf(path, "phases file", ["block", "lowpass", "lowpass_perm"]) as ds:
        missing = [name for name in ATTRS if name not in ds.attrs]
        if missing:
            raise UserError(f"{path} lacks the attribute(s) {', '.join(missing)}: not a phases.nc of this dyn "
                            "(remake it: dyn metrics phases)")
        attrs = dict(ds.attrs)
        blocks = ds["block"].values.astype(int)
        lowpass, control = ds["lowpass"].values.astype(float), ds["lowpass_perm"].values.astype(float)
    kind = attrs.get("layer_kind", "layer")
    model = attrs.get("model", Path(path).parent.name)
    arch = f" ({attrs['arch']})" if attrs.get("arch") else ""
    lines = [f"## {model}{arch}", "",
             f"{len(blocks)} {kind}s, {attrs.get('n_images', '?')} analysis images. "
             "The verdict, as written in phases.nc:", "", f"> {attrs['verdict']}", ""]
    if int(attrs["u_shape"]) == 1:
        ci = np.atleast_1d(attrs.get("bottleneck_block_ci", []))
        within = f" (95% bootstrap interval over the images: {kind}s {ci[0]:g} to {ci[1]:g})" if len(ci) == 2 else ""
        lines.append(f"- Entropy profile: a U is shown (u_shape = 1): compression to the bottleneck at {kind} "
                     f"{int(attrs['bottleneck_block'])}{within}, expansion after it.")
    else:
        lines.append("- Entropy profile: u_shape = 0, the test did not show both ends rising above an interior "
                     "entropy minimum; no phase is named.")
    if "n_select" in attrs and "n_test" in attrs:
        lines.append(f"- Test design: the entropy minimum chosen on {int(attrs['n_select'])} of the "
                     f"{int(attrs.get('n_images', attrs['n_select'] + attrs['n_test']))} images, each end's rise "
                     f"above it measured on the other {int(attrs['n_test'])} and tested one-sided against "
                     f"{float(attrs.get('u_min_rise', float('nan'))):g} bits at level "
                     f"{float(attrs.get('u_alpha', float('nan'))):g}.")
    lines.append(f"- Entropy scale of the test: {attrs['entropy_scale']}.")
    scores = _range(lowpass)
    lines.append(f"- Low-pass score (share of the non-DC channel spectrum at k <= C/8; 0.25 for a flat spectrum): "
                 f"{scores or 'not finite in this file'} over the {kind}s.")
    if _range(control) is None:
        lines.append("- Channel-permuted control: not in this file (its spectrum.nc had no `spectrum_perm`), "
                     "so the scores above say nothing about the layers.")
    else:
        difference = lowpass - control
        at = int(np.nanargmax(difference))
        lines.append(f"- The same with each {kind}'s channels permuted (control): {_range(control)}; largest "
                     f"difference lowpass - lowpass_perm: {difference[at]:+.3f}, at {kind} {blocks[at]}.")
    lines.append("- Channel order is arbitrary in a trained network: only a difference between a score and its "
                 "control says anything about a layer, and no low-pass verdict is drawn.")
    return "\n".join(lines) + "\n"


def phases_summary(phases_files: Sequence[str | Path]) -> str:
    """The Markdown of `results/phases.md`: a short header and one section per model."""
    if not phases_files:
        raise UserError("no phases files given: the phases summary needs at least one phases.nc")
    header = ["# Phases of the analysed models", "",
              "Written by `dyn report phases-summary` from each model's `phases.nc` (`dyn metrics phases`); "
              "every statement below is read from that file. A U is the split-sample test's: the entropy "
              "minimum chosen on half the images, both ends' rises above it tested on the other half.", ""]
    return "\n".join(header) + "\n" + "\n".join(model_section(path) for path in phases_files)


def write_phases_summary(phases_files: Sequence[str | Path], out: str | Path) -> Path:
    """`dyn report phases-summary`: `out` (Markdown), written atomically."""
    from ..atomic import write_text

    text = phases_summary(phases_files)
    out = Path(out)
    write_text(out, text)
    return out
