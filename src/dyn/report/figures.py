"""The paper's figures from metric and evolution files: profiles, spectrum heatmaps, entropy evolution."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from ..files import load_netcdf  # noqa: E402
from ..workflow.atomic import atomic_path  # noqa: E402


def save(fig, out_base: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write `out_base.<fmt>` for each format, atomically; returns the paths."""
    paths = []
    for fmt in formats:
        path = Path(out_base).with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _label(ds: xr.Dataset, fallback: str) -> str:
    return f"{ds.attrs.get('model', fallback)} ({ds.attrs.get('arch', '')})".replace(" ()", "")


def profiles(entropy_files: Sequence[str | Path], magnitude_files: Sequence[str | Path], out_base: str | Path,
             formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Per-layer entropy and magnitude of each model against relative depth (0 = first layer, 1 = last):
    models of different depths share the panels."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for files, name, ax in ((entropy_files, "entropy", axes[0]), (magnitude_files, "magnitude", axes[1])):
        for path in files:
            with load_netcdf(path, f"{name} file", [name]) as ds:
                values = ds[name].values
                depth = np.linspace(0, 1, len(values)) if len(values) > 1 else np.zeros(1)
                kind = ds.attrs.get("layer_kind", "layer")
                ax.plot(depth, values, marker="o", ms=3, label=f"{_label(ds, Path(path).parent.name)}, {len(values)} {kind}s")
        ax.set_xlabel("relative depth (layer / last layer)")
        ax.set_ylabel("entropy of the channel vector (bits)" if name == "entropy" else "mean |activation|")
        ax.set_title(f"per-layer {name}")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Per-layer entropy and magnitude of {len(entropy_files)} model(s)")
    return save(fig, out_base, formats)


def spectrum_heatmap(spectrum_file: str | Path, out_base: str | Path,
                     formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Layer x channel-frequency heatmap of the mean FFT magnitude (log colour), frequency k/C in 0..0.5."""
    with load_netcdf(spectrum_file, "spectrum file", ["spectrum", "channels"]) as ds:
        spectrum = ds["spectrum"].values
        channels = ds["channels"].values.astype(int)
        label = _label(ds, Path(spectrum_file).parent.name)
        kind = ds.attrs.get("layer_kind", "layer")
    grid = np.linspace(0.0, 0.5, int(channels.max()) // 2 + 1)
    rows = []
    for values, c in zip(spectrum, channels):
        half = values[: c // 2 + 1]
        rows.append(np.interp(grid, np.arange(len(half)) / c, half))
    image = np.log10(np.maximum(np.array(rows), 1e-12))
    fig, ax = plt.subplots(figsize=(6, 4))
    # Rows are blocks (stages) counted from 1, as the paper counts layers.
    mesh = ax.imshow(image, aspect="auto", origin="lower", extent=(0, 0.5, 0.5, len(rows) + 0.5), cmap="magma")
    fig.colorbar(mesh, ax=ax, label="log10 mean |F[k]|")
    ax.set_xlabel("channel frequency k / C")
    ax.set_ylabel(f"{kind} (1 = first)")
    ax.set_title(f"Mean channel spectrum of each {kind}: {label}")
    return save(fig, out_base, formats)


def evolution(evolution_files: Sequence[str | Path], out_base: str | Path,
              formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """The student's entropy profile over training, one panel per distillation run, colour = epoch."""
    files = sorted(evolution_files)
    cols = min(4, len(files))
    rows = int(np.ceil(len(files) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, path in zip(axes.flat, files):
        with load_netcdf(path, "evolution file", ["entropy"], dims=("epoch", "layer")) as ds:
            epochs = ds["epoch"].values
            for i, epoch in enumerate(epochs):
                colour = cmap(i / max(len(epochs) - 1, 1))
                ax.plot(ds["layer"].values + 1, ds["entropy"].sel(epoch=epoch).values, color=colour,
                        label=f"epoch {int(epoch)}" if i in (0, len(epochs) - 1) else None)
            title = ds.attrs.get("method", "")
            if ds.attrs.get("method") != "softkd":
                title += f" {ds.attrs.get('layers')} b{ds.attrs.get('beta')}"
            ax.set_title(f"{title}, {ds.attrs.get('epochs')} ep, seed {ds.attrs.get('seed')}", fontsize=8)
        ax.set_xlabel("student block (1 = first)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes.flat[len(files):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("entropy (bits)", fontsize=8)
    fig.suptitle("Student's per-block entropy at each snapshot epoch")
    fig.tight_layout()
    return save(fig, out_base, formats)


def phases(phases_files: Sequence[str | Path], out_base: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Each model's low-pass score (left) and entropy (right) against relative depth, transformers solid
    and CNNs dashed, the entropy minimum ringed: the paper's comparison of ViT and CNN layers in one picture."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for path in phases_files:
        with load_netcdf(path, "phases file", ["relative_depth", "lowpass", "entropy"]) as ds:
            depth, bottleneck = ds["relative_depth"].values, int(ds.attrs["bottleneck_layer"])
            style = "-" if ds.attrs.get("layer_kind", "block") == "block" else "--"
            label = f"{_label(ds, Path(path).parent.name)}, {ds.sizes['layer']} {ds.attrs.get('layer_kind', 'layer')}s"
            for ax, name in zip(axes, ("lowpass", "entropy")):
                line, = ax.plot(depth, ds[name].values, style, marker="o", ms=3, label=label)
                ax.plot(depth[bottleneck], ds[name].values[bottleneck], "o", ms=9, mfc="none", color=line.get_color())
    axes[0].axhline(0.25, color="grey", ls=":", lw=1)
    axes[0].set_ylabel("low-pass score (share of spectrum at k <= C/8)")
    axes[1].set_ylabel("entropy of the channel vector (bits)")
    for ax in axes:
        ax.set_xlabel("relative depth (layer / last layer)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Low-pass score and entropy of every layer (ringed: each model's entropy minimum)")
    return save(fig, out_base, formats)
