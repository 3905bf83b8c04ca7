"""The report's figures from small synthetic files: each is written, and the authors' numbers are drawn
exactly where a run's setup is the paper's."""
import csv
import json

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from dyn.cli import cli
from dyn.report import figures
from dyn.training.evolution import write_evolution


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    figures.plt.close("all")  # the figures these tests build and inspect without saving


def _run(root, method, layers, beta, epochs, seed, teacher="cait_s24_224", student="deit_tiny_patch16_224"):
    """A run directory with summary.json and log.csv as dyn distill writes them (epoch 1 = after the first)."""
    run = f"{method}_{layers}_b{beta:g}_e{epochs}_s{seed}_{teacher}"
    folder = root / run
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "run": run, "method": method, "layers": layers, "beta": beta, "epochs": epochs, "seed": seed,
        "teacher": teacher, "student": student, "top1": 70.0, "top5": 90.0, "best_top1": 70.0}))
    with (folder / "log.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "loss", "top1", "top5", "lr"])
        writer.writeheader()
        for epoch in range(1, epochs + 1):
            writer.writerow({"epoch": epoch, "loss": 1.0, "top1": 70 * epoch / epochs + seed, "top5": 90.0, "lr": 1e-3})
    return folder / "summary.json"


def _panels(fig) -> dict[str, list[str]]:
    """{panel title: the gids of its lines}."""
    return {ax.get_title(): [line.get_gid() for line in ax.get_lines()] for ax in fig.axes if ax.get_title()}


def test_curves_draw_the_authors_curve_exactly_for_the_papers_setups(tmp_path):
    summaries = [_run(tmp_path, "softkd", "none", 0.0, 300, seed) for seed in (0, 1)]
    summaries += [_run(tmp_path, "spectral", "Last1", 0.2, 300, 0), _run(tmp_path, "spectral", "Last1", 0.1, 300, 0),
                  _run(tmp_path, "spectral", "First1", 0.2, 12, 0), _run(tmp_path, "softkd", "none", 0.0, 12, 0)]
    fig = figures.curves_figure(summaries)
    panels = _panels(fig)
    assert set(panels) == {"softkd, 12 ep", "spectral First1 b0.2, 12 ep", "softkd, 300 ep",
                           "spectral Last1 b0.2, 300 ep", "spectral Last1 b0.1, 300 ep"}
    drawn = {title for title, gids in panels.items() if figures.PAPER_GID in gids}
    assert drawn == {"softkd, 300 ep", "spectral Last1 b0.2, 300 ep"}
    ax = next(a for a in fig.axes if a.get_title() == "spectral Last1 b0.2, 300 ep")
    theirs = next(line for line in ax.get_lines() if line.get_gid() == figures.PAPER_GID)
    assert theirs.get_linestyle() == "--" and theirs.get_xdata()[0] == 1 and theirs.get_xdata()[-1] == 300
    # Ours, and SoftKD at the same epochs thin grey; the seeds' band on the two-seed SoftKD panel.
    labels = [line.get_label() for line in ax.get_lines()]
    assert "ours" in labels and "SoftKD, mean of 2 seed(s)" in labels
    softkd = next(a for a in fig.axes if a.get_title() == "softkd, 300 ep")
    assert len(softkd.collections) == 1 and "ours, mean of 2 seed(s)" in [l.get_label() for l in softkd.get_lines()]
    mean = next(l for l in softkd.get_lines() if l.get_label().startswith("ours"))
    assert mean.get_ydata()[-1] == pytest.approx(70.5)  # seeds 0 and 1 end at 70 and 71


def test_curves_command_writes_the_figure_and_a_teacher_not_the_papers_gets_no_overlay(tmp_path):
    summaries = [_run(tmp_path, "softkd", "none", 0.0, 300, 0, teacher="cait_digits")]
    assert figures.PAPER_GID not in sum(_panels(figures.curves_figure(summaries)).values(), [])
    out = tmp_path / "figures" / "curves"
    result = CliRunner().invoke(cli, ["report", "curves", *map(str, summaries), "--out", str(out), "--formats", "png"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figures" / "curves.png").stat().st_size > 1000


def _evolution(path, method, layers, beta, epochs, snapshot_epochs, teacher="cait_s24_224"):
    snapshots = [(e, {"entropy": np.linspace(2, 3, 12) - e / 1000, "magnitude": np.ones(12)}) for e in snapshot_epochs]
    attrs = {"run": path.parent.name, "method": method, "layers": layers, "beta": beta, "epochs": epochs, "seed": 0,
             "teacher": teacher, "student": "deit_tiny_patch16_224", "bins": 100}
    path.parent.mkdir(parents=True)
    write_evolution(path, snapshots, attrs)
    return path


def test_evolution_draws_the_authors_profiles_at_the_same_epochs_for_the_papers_setups(tmp_path):
    paper = _evolution(tmp_path / "a" / "evolution.nc", "spectral", "First1", 0.2, 300, [0, 30, 60, 90, 300])
    other_teacher = _evolution(tmp_path / "b" / "evolution.nc", "softkd", "none", 0.0, 300, [0, 300], "cait_digits")
    no_table = _evolution(tmp_path / "c" / "evolution.nc", "projector", "First1", 0.2, 300, [0, 300])
    short = _evolution(tmp_path / "d" / "evolution.nc", "softkd", "none", 0.0, 20, [0, 10, 20])
    fig = figures.evolution_figure([paper, other_teacher, no_table, short])
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == 4
    by_title = {ax.get_title(): ax for ax in axes}
    ax = by_title["spectral First1 b0.2, 300 ep, seed 0"]
    theirs = [line for line in ax.get_lines() if line.get_gid() == figures.PAPER_GID]
    ours = [line for line in ax.get_lines() if line.get_gid() != figures.PAPER_GID]
    assert len(ours) == 5 and len(theirs) == 4  # 30, 60, 90, 300: the authors have no epoch 0
    assert [t.get_color() for t in theirs] == [o.get_color() for o in ours[1:]]
    assert all(t.get_linestyle() == "--" and len(t.get_xdata()) == 12 for t in theirs)
    for title, other in by_title.items():
        if other is not ax:
            assert figures.PAPER_GID not in [line.get_gid() for line in other.get_lines()], title
    paths = figures.evolution([paper, short], tmp_path / "out" / "evolution", ["png"])
    assert paths[0].stat().st_size > 1000


def _metric(path, name, values, channels, model):
    path.parent.mkdir(parents=True, exist_ok=True)
    dims = ("layer", "frequency") if np.ndim(values) == 2 else ("layer",)
    ds = xr.Dataset({name: (dims, np.asarray(values, dtype=float))},
                    coords={"layer": np.arange(len(values)), "channels": ("layer", channels)},
                    attrs={"model": model, "arch": model, "layer_kind": "block"})
    ds.to_netcdf(path)
    return path


def test_profiles_third_panel_is_the_frequency_intensity_or_its_fallback(tmp_path, monkeypatch):
    # Model a: spectrum without `intensity` (an older file), layers of 4 and 2 channels (NaN-padded).
    spectrum_a = [[1.0, 2.0, 3.0, 6.0], [4.0, 8.0, np.nan, np.nan]]
    a = [_metric(tmp_path / "a" / f"{n}.nc", n, v, [4, 2], "a")
         for n, v in (("entropy", [1.0, 2.0]), ("magnitude", [1.0, 2.0]), ("spectrum", spectrum_a))]
    b = [_metric(tmp_path / "b" / f"{n}.nc", n, v, [3, 3, 3], "b")
         for n, v in (("entropy", [1.0, 0.5, 2.0]), ("magnitude", [1.0, 2.0, 3.0]), ("intensity", [0.1, 0.2, 0.3]))]
    with xr.open_dataset(a[2]) as ds:
        assert figures.intensity(ds) == pytest.approx([3.0, 6.0])
    with xr.open_dataset(b[2]) as ds:
        assert figures.intensity(ds) == pytest.approx([0.1, 0.2, 0.3])
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, out_base, formats=(): drawn.append(fig) or [])
    figures.profiles([a[0], b[0]], [a[1], b[1]], tmp_path / "x", spectrum_files=[a[2], b[2]])
    figures.profiles([a[0], b[0]], [a[1], b[1]], tmp_path / "x")
    assert [len(fig.axes) for fig in drawn] == [3, 2]
    intensity_panel = drawn[0].axes[2]
    assert intensity_panel.get_title() == "per-layer intensity" and len(intensity_panel.get_lines()) == 2
    assert list(intensity_panel.get_lines()[0].get_ydata()) == pytest.approx([3.0, 6.0])
    monkeypatch.undo()
    out = tmp_path / "figures" / "profiles"
    args = ["report", "profiles", "--entropy", a[0], "--entropy", b[0], "--magnitude", a[1], "--magnitude", b[1],
            "--spectrum", a[2], "--spectrum", b[2], "--out", out, "--formats", "png,pdf"]
    result = CliRunner().invoke(cli, list(map(str, args)))
    assert result.exit_code == 0, result.output
    assert all((tmp_path / "figures" / f"profiles.{fmt}").stat().st_size > 1000 for fmt in ("png", "pdf"))


@pytest.mark.parametrize("damage, fragment", [("missing", "run log not found"),
                                              ("no top1", "has no 'epoch' and 'top1' columns"),
                                              ("not a number", "cannot read run log")])
def test_curves_with_a_bad_log_ends_in_one_line_exit_2(tmp_path, capsys, damage, fragment):
    from dyn.cli import main

    summary = _run(tmp_path, "softkd", "none", 0.0, 3, 0)
    log = summary.with_name("log.csv")
    if damage == "missing":
        log.unlink()
    else:
        log.write_text("epoch,loss\n1,2.0\n" if damage == "no top1" else "epoch,top1\n1,lots\n")
    with pytest.raises(SystemExit) as stop:
        main(["report", "curves", str(summary), "--out", str(tmp_path / "out" / "curves"), "--formats", "png"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("dyn: error: ") and fragment in err[0]
    assert not (tmp_path / "out").exists()
