"""The paper's figures from metric, evolution and run files: profiles, spectrum heatmaps, entropy evolution,
top-1 curves; where a run's setup is the paper's, the authors' published numbers (`dyn.paper`) beside ours.
Each figure draws what the files support: entropy profiles with a bootstrap band over the images, channel
spectra and low-pass scores beside their channel-permuted controls, a bottleneck only where phases.nc shows
a U."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from ..errors import UserError  # noqa: E402
from ..files import load_netcdf, read_json, unreadable  # noqa: E402
from ..paper import paper_curve, paper_entropy, setup_of  # noqa: E402
from ..atomic import atomic_path  # noqa: E402
from ..training.methods import METHODS  # noqa: E402

PAPER_GID = "paper"  # the gid of every line drawn from the authors' numbers (tests look for it)
BAND_GID = "bootstrap"  # the profiles figure's per-model 95% bootstrap bands over the images
RING_GID = "bottleneck"  # the phases figure's rings: a bottleneck, only where the file shows a U
CONTROL_GID = "control"  # the phases figure's channel-permuted low-pass scores
N_BOOTSTRAP = 1000  # resamplings of the images behind each entropy band
BOOTSTRAP_SEED = 0


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


def intensity(ds: xr.Dataset, source: str | Path = "a spectrum file") -> np.ndarray:
    """A spectrum file's per-layer average frequency intensity: its `intensity` variable, or for an older
    file without it, the mean of each layer's `spectrum` over its first `channels` frequencies."""
    if "intensity" in ds:
        return ds["intensity"].values
    if "spectrum" not in ds or "channels" not in ds:
        raise UserError(f"{source} has neither 'intensity' nor 'spectrum' with 'channels': not a spectrum file "
                        "(dyn metrics spectrum writes them)")
    spectrum, channels = ds["spectrum"].values, ds["channels"].values.astype(int)
    return np.array([np.mean(row[:c]) for row, c in zip(spectrum, channels)])


def bootstrap_band(sample_entropy: np.ndarray, n: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED,
                   level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer percentile interval (95% by default) of the mean over images of a (layers, images) array,
    over `n` resamplings of the images with replacement (seeded): the same resampled images for every layer."""
    values = np.asarray(sample_entropy, dtype=np.float64)
    images = values.shape[1]
    counts = np.random.default_rng(seed).multinomial(images, np.full(images, 1.0 / images), size=n)
    means = counts @ values.T / images  # (draws, layers)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    return low, high


def profiles(entropy_files: Sequence[str | Path], magnitude_files: Sequence[str | Path], out_base: str | Path,
             formats: Sequence[str] = ("png", "pdf"), spectrum_files: Sequence[str | Path] = ()) -> list[Path]:
    """Per-layer entropy, magnitude and (with `spectrum_files`) average frequency intensity of each model
    against relative depth (0 = first layer, 1 = last): models of different depths share the panels. Around
    each entropy profile whose file holds per-image entropies (`sample_entropy`), a 95% bootstrap band over
    the images (gid BAND_GID)."""
    panels = [(entropy_files, "entropy"), (magnitude_files, "magnitude")]
    if spectrum_files:
        panels.append((spectrum_files, "intensity"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), layout="constrained")
    ylabels = {"entropy": "entropy of the channel vector (bits)", "magnitude": "mean |activation|",
               "intensity": "average frequency intensity (mean |F[k]| / C)"}
    for (files, name), ax in zip(panels, axes):
        for path in files:
            what = "spectrum file" if name == "intensity" else f"{name} file"
            with load_netcdf(path, what, [] if name == "intensity" else [name]) as ds:
                values = intensity(ds, path) if name == "intensity" else ds[name].values
                depth = np.linspace(0, 1, len(values)) if len(values) > 1 else np.zeros(1)
                kind = ds.attrs.get("layer_kind", "layer")
                line, = ax.plot(depth, values, marker="o", ms=3,
                                label=f"{_label(ds, Path(path).parent.name)}, {len(values)} {kind}s")
                if name == "entropy" and "sample_entropy" in ds and ds["sample_entropy"].shape[0] == len(values):
                    low, high = bootstrap_band(ds["sample_entropy"].values)
                    ax.fill_between(depth, low, high, color=line.get_color(), alpha=0.2, lw=0, gid=BAND_GID)
        ax.set_xlabel("relative depth (layer / last layer)")
        ax.set_ylabel(ylabels[name])
        ax.set_title(f"per-layer {name}")
        ax.grid(alpha=0.3)
        if name != "entropy":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    if any(c.get_gid() == BAND_GID for c in axes[0].collections):
        axes[0].set_title(f"per-layer entropy (band: 95% bootstrap over the images, {N_BOOTSTRAP} draws)",
                          fontsize=9)
    shown = "entropy, magnitude and frequency intensity" if spectrum_files else "entropy and magnitude"
    fig.suptitle(f"Per-layer {shown} of {len(entropy_files)} model(s)")
    return save(fig, out_base, formats)


def _frequency_rows(spectrum: np.ndarray, channels: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Each layer's one-sided spectrum (k = 0..C/2) resampled onto the frequency grid k/C in 0..0.5, log10."""
    rows = []
    for values, c in zip(spectrum, channels):
        half = values[: c // 2 + 1]
        rows.append(np.interp(grid, np.arange(len(half)) / c, half))
    return np.log10(np.maximum(np.array(rows), 1e-12))


def spectrum_heatmap(spectrum_file: str | Path, out_base: str | Path,
                     formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Layer x channel-frequency heatmap of the mean FFT magnitude (log colour), frequency k/C in 0..0.5;
    beside it, where the file has it, the same of `spectrum_perm` (each layer's channels in a fixed random
    order: the channel-order control), on the same colour scale."""
    return save(spectrum_figure(spectrum_file), out_base, formats)


def spectrum_figure(spectrum_file: str | Path):
    """The figure of `spectrum_heatmap`: one image panel, or two with the channel-permuted control."""
    with load_netcdf(spectrum_file, "spectrum file", ["spectrum", "channels"]) as ds:
        spectrum = ds["spectrum"].values
        control = ds["spectrum_perm"].values if "spectrum_perm" in ds else None
        channels = ds["channels"].values.astype(int)
        label = _label(ds, Path(spectrum_file).parent.name)
        kind = ds.attrs.get("layer_kind", "layer")
    grid = np.linspace(0.0, 0.5, int(channels.max()) // 2 + 1)
    images = [_frequency_rows(spectrum, channels, grid)]
    titles = ["channels in the network's order" if control is not None
              else f"Mean channel spectrum of each {kind}: {label}"]
    if control is not None:
        images.append(_frequency_rows(control, channels, grid))
        titles.append("channels permuted (control)")
    finite = np.concatenate([image[np.isfinite(image)] for image in images])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (None, None)
    fig, axes = plt.subplots(1, len(images), figsize=(6 * len(images), 4), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, image, title in zip(axes[0], images, titles):
        # Rows are blocks (stages) counted from 1, as the paper counts layers.
        mesh = ax.imshow(image, aspect="auto", origin="lower", extent=(0, 0.5, 0.5, len(image) + 0.5), cmap="magma",
                         vmin=vmin, vmax=vmax)
        ax.set_xlabel("channel frequency k / C")
        ax.set_title(title, fontsize=9 if control is not None else None)
    axes[0, 0].set_ylabel(f"{kind} (1 = first)")
    fig.colorbar(mesh, ax=list(axes[0]), label="log10 mean |F[k]|")
    if control is not None:
        fig.suptitle(f"Mean channel spectrum of each {kind} of {label}, and the same with its channels permuted")
    return fig


def evolution(evolution_files: Sequence[str | Path], out_base: str | Path,
              formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """The student's entropy profile over training, one panel per distillation run, colour = epoch; where
    a run's setup is the paper's and the authors published its entropy table, their profiles at the same
    snapshot epochs, dashed, in the same colours."""
    return save(evolution_figure(evolution_files), out_base, formats)


def evolution_figure(evolution_files: Sequence[str | Path]):
    """The figure of `evolution` (its lines from the authors' table have gid PAPER_GID)."""
    files = sorted(evolution_files)
    cols = min(4, len(files))
    rows = int(np.ceil(len(files) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, path in zip(axes.flat, files):
        with load_netcdf(path, "evolution file", ["entropy"], dims=("epoch", "layer")) as ds:
            epochs = ds["epoch"].values
            colours = [cmap(i / max(len(epochs) - 1, 1)) for i in range(len(epochs))]
            for i, (epoch, colour) in enumerate(zip(epochs, colours)):
                ax.plot(ds["layer"].values + 1, ds["entropy"].sel(epoch=epoch).values, color=colour,
                        label=f"epoch {int(epoch)}" if i in (0, len(epochs) - 1) else None)
            # The authors' checkpoint after N epochs is the same point as our snapshot at epoch N.
            theirs = paper_entropy(**setup_of(ds.attrs)) or {}
            shared = [(int(epoch), colour) for epoch, colour in zip(epochs, colours) if int(epoch) in theirs]
            for i, (epoch, colour) in enumerate(shared):
                ax.plot(np.arange(1, len(theirs[epoch]) + 1), theirs[epoch], "--", lw=0.9, color=colour, gid=PAPER_GID,
                        label="authors (dashed)" if i == 0 else None)
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
    return fig


def phases(phases_files: Sequence[str | Path], out_base: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Each model's low-pass score beside its channel-permuted control (left) and the entropy the U test
    reads (right) against relative depth, transformers solid and CNNs dashed; a model's bottleneck ringed
    only where its phases.nc shows a U (`u_shape` 1)."""
    return save(phases_figure(phases_files), out_base, formats)


def phases_figure(phases_files: Sequence[str | Path]):
    """The figure of `phases`: rings have gid RING_GID, the control lines CONTROL_GID."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for path in phases_files:
        with load_netcdf(path, "phases file", ["relative_depth", "lowpass", "entropy"]) as ds:
            depth = ds["relative_depth"].values
            u_shape = int(ds.attrs.get("u_shape", 0)) == 1
            bottleneck = int(ds.attrs.get("bottleneck_layer", -1))
            style = "-" if ds.attrs.get("layer_kind", "block") == "block" else "--"
            kind = ds.attrs.get("layer_kind", "layer")
            label = f"{_label(ds, Path(path).parent.name)}, {ds.sizes['layer']} {kind}s"
            if u_shape:
                ci = ds.attrs.get("bottleneck_block_ci")
                within = f", 95% CI {ci[0]:g}-{ci[1]:g}" if ci is not None and len(np.atleast_1d(ci)) == 2 else ""
                label += f": U, bottleneck {kind} {bottleneck + 1}{within}"
            else:
                label += ": no U shown"
            entropy = ds["entropy_tested"].values if "entropy_tested" in ds else ds["entropy"].values
            control = ds["lowpass_perm"].values if "lowpass_perm" in ds else None
            if control is None or not np.isfinite(control).any():
                label += " (no channel-order control)"
            colour = None
            for ax, values in zip(axes, (ds["lowpass"].values, entropy)):
                line, = ax.plot(depth, values, style, marker="o", ms=3, color=colour,
                                label=label if ax is axes[0] else None)
                colour = line.get_color()
                if u_shape and 0 <= bottleneck < len(values):
                    ax.plot(depth[bottleneck], values[bottleneck], "o", ms=9, mfc="none", color=colour, gid=RING_GID)
            if control is not None and np.isfinite(control).any():
                axes[0].plot(depth, control, ":", marker="x", ms=3, lw=0.9, alpha=0.6, color=colour, gid=CONTROL_GID)
    axes[0].axhline(0.25, color="grey", ls="-", lw=0.8)
    axes[0].plot([], [], ":", marker="x", ms=3, lw=0.9, color="grey", label="each: channels permuted (control)")
    axes[0].set_ylabel("low-pass score (share at k <= C/8; 0.25 flat)")
    axes[0].set_title("low-pass score, and with channels permuted (dotted)", fontsize=9)
    axes[1].set_ylabel("entropy the U test reads (bits)")
    axes[1].set_title("entropy (ringed: the bottleneck of a U)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("relative depth (layer / last layer)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2 if len(labels) > 4 else 1, fontsize=7)
    fig.suptitle("Every layer's low-pass score beside its channel-order control, and its entropy")
    return fig


# What the curves figures draw: log.csv's column, the authors' log's column, the axis label, the title.
CURVES = {"top1": ("top1", "test_acc1", "top-1 (%)", "Validation top-1 over training, each grid point"),
          "loss": ("loss", "train_loss", "training loss", "Training loss over training, each grid point "
                                                         "((1 - alpha) CE + alpha KD + beta feature loss)")}


def read_run_log(path: str | Path, column: str = "top1") -> dict[int, float]:
    """A run's log.csv as {epoch (1 = after the first): its `column` (top1 in %, or loss)}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"run log not found: {path} (dyn distill writes it beside summary.json)")
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"epoch", column} <= set(rows[0]):
            raise UserError(f"run log {path} has no 'epoch' and '{column}' columns: not a log.csv dyn distill writes")
        return {int(row["epoch"]): float(row[column]) for row in rows}
    except (OSError, UnicodeDecodeError, ValueError, TypeError, csv.Error) as error:
        raise unreadable(path, "run log", error) from None


def _over_seeds(logs: list[dict[int, float]]) -> tuple[np.ndarray, ...]:
    """Epochs every seed logged, and the mean, min and max of top-1 over the seeds at each."""
    epochs = sorted(set.intersection(*(set(log) for log in logs)))
    values = np.array([[log[e] for e in epochs] for log in logs])
    return np.array(epochs), values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def curves(summary_files: Sequence[str | Path], out_base: str | Path,
           formats: Sequence[str] = ("png", "pdf"), metric: str = "top1") -> list[Path]:
    """Top-1 (or the training loss, `metric`) against epoch of every grid point (method, layers, beta,
    epochs), one panel each, from each run's summary.json and the log.csv beside it: the mean over seeds
    with a min..max band, SoftKD at the same epochs thin grey, and where the setup is the paper's, the
    authors' curve dashed."""
    return save(curves_figure(summary_files, metric), out_base, formats)


def curves_figure(summary_files: Sequence[str | Path], metric: str = "top1"):
    """The figure of `curves` (its lines from the authors' logs have gid PAPER_GID)."""
    column, theirs_column, label, suptitle = CURVES[metric]
    groups: dict[tuple, list[tuple[dict, dict[int, float]]]] = {}
    for path in summary_files:
        summary = read_json(path, "run summary", ("run", "method", "layers", "beta", "epochs", "seed"))
        setup = setup_of(summary)
        key = (setup["method"], setup["layers"], setup["beta"], setup["epochs"], setup["teacher"], setup["student"])
        groups.setdefault(key, []).append((setup, read_run_log(Path(path).with_name("log.csv"), column)))
    if not groups:
        raise UserError("no run summaries given: the curves figure needs at least one summary.json")
    order = sorted(groups, key=lambda k: (k[3], list(METHODS).index(k[0]) if k[0] in METHODS else len(METHODS),
                                          k[1], k[2], str(k[4]), str(k[5])))
    cols = min(3, len(order))
    rows = int(np.ceil(len(order) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, order):
        method, layers, beta, epochs, teacher, student = key
        runs = groups[key]
        if method != "softkd":
            softkd = [log for k, group in groups.items() if k[0] == "softkd" and k[3:] == key[3:]
                      for _, log in group]
            if softkd:
                x, mean, _, _ = _over_seeds(softkd)
                ax.plot(x, mean, color="grey", lw=0.8, label=f"SoftKD, mean of {len(softkd)} seed(s)")
        x, mean, low, high = _over_seeds([log for _, log in runs])
        if len(runs) > 1:
            ax.fill_between(x, low, high, color="C0", alpha=0.25, lw=0, label="min..max over seeds")
        ax.plot(x, mean, color="C0", lw=1.4, label=f"ours, mean of {len(runs)} seed(s)" if len(runs) > 1 else "ours")
        theirs = paper_curve(**runs[0][0])
        if theirs:
            # Their log counts epochs from 0, ours from 1: their epoch e is our epoch e + 1.
            ax.plot([r["epoch"] + 1 for r in theirs], [r[theirs_column] for r in theirs], "--", color="C3", lw=1.0,
                    gid=PAPER_GID, label=f"authors ({theirs[0]['log']})")
        title = method if method == "softkd" else f"{method} {layers} b{beta:g}"
        ax.set_title(f"{title}, {epochs} ep", fontsize=8)
        ax.set_xlabel("epoch (1 = after the first)", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes.flat[len(order):]:
        ax.axis("off")
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
