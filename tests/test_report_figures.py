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


def test_loss_curves_draw_the_training_loss_and_the_authors_train_loss(tmp_path):
    from dyn.paper import paper_curve

    summaries = [_run(tmp_path, "spectral", "Last1", 0.2, 300, 0)]
    ax = figures.curves_figure(summaries, "loss").axes[0]
    assert ax.get_ylabel() == "training loss"
    ours = next(line for line in ax.get_lines() if line.get_label() == "ours")
    assert set(ours.get_ydata()) == {1.0}  # the log's `loss` column
    theirs = next(line for line in ax.get_lines() if line.get_gid() == figures.PAPER_GID)
    expected = [row["train_loss"] for row in paper_curve("spectral", "Last1", 0.2, 300, "cait_s24_224",
                                                         "deit_tiny_patch16_224")]
    assert list(theirs.get_ydata()) == expected


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


# Figures say what the data say: bands over the images, rings only on a U, the channel-order controls.

def _model_files(root, model, profile, images=32, sd=0.05, spectrum_perm=True, arch="cait_digits", seed=0):
    """entropy.nc, magnitude.nc, spectrum.nc of one model as the metric rules write them (per-image entropies
    around `profile`; a low-pass spectrum, and a flat one for the channel-permuted control), and its
    phases.nc from them as `dyn metrics phases` writes it."""
    from dyn.analysis import nulls, phases

    folder = root / model
    folder.mkdir(parents=True)
    per_image = nulls.simulate(profile, images, np.random.default_rng(seed), sd=sd)
    layers, channels = len(profile), 16
    coords = {"layer": np.arange(layers), "channels": ("layer", np.full(layers, channels))}
    attrs = {"model": model, "arch": arch, "layer_kind": "block", "bins": 100}
    xr.Dataset({"entropy": ("layer", per_image.mean(axis=1)), "sample_entropy": (("layer", "sample"), per_image)},
               coords=coords, attrs=attrs).to_netcdf(folder / "entropy.nc")
    xr.Dataset({"magnitude": ("layer", np.linspace(1, 2, layers))}, coords=coords,
               attrs=attrs).to_netcdf(folder / "magnitude.nc")
    k = np.minimum(np.arange(channels), channels - np.arange(channels))  # symmetric, as a real input's
    low = np.exp(-k[None, :] / np.linspace(1, 8, layers)[:, None])  # low-pass, less so with depth
    spectra = {"spectrum": (("layer", "frequency"), low), "intensity": ("layer", low.mean(axis=1))}
    if spectrum_perm:
        noise = 1 + 0.2 * np.random.default_rng(seed).random((layers, channels // 2 + 1))
        spectra["spectrum_perm"] = (("layer", "frequency"), np.concatenate([noise, noise[:, 1:-1][:, ::-1]], axis=1))
    xr.Dataset(spectra, coords=coords, attrs={**attrs, "permutation_seed": 0}).to_netcdf(folder / "spectrum.nc")
    phases.write_phases(folder / "entropy.nc", folder / "magnitude.nc", folder / "spectrum.nc", folder / "phases.csv")
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three models: a clear U (the authors' SoftKD student's size), a monotone profile, and a U without a
    channel-permuted control in its spectrum file."""
    from dyn.analysis import nulls

    root = tmp_path_factory.mktemp("models")
    made = {"u": _model_files(root, "u", nulls.paper_u(), sd=0.3),
            "monotone": _model_files(root, "monotone", np.linspace(5, 4, 8), images=64),
            "no_control": _model_files(root, "no_control", nulls.paper_u(), sd=0.3, spectrum_perm=False, seed=1)}
    for name, folder in made.items():
        with xr.open_dataset(folder / "phases.nc") as ds:
            assert ds.attrs["u_shape"] == (name != "monotone"), (name, ds.attrs["verdict"])
    return made


def test_bootstrap_band_holds_the_mean_and_narrows_with_images():
    rng = np.random.default_rng(0)
    values = rng.normal(4.0, 0.5, size=(3, 400))
    low, high = figures.bootstrap_band(values)
    assert np.all(low < values.mean(axis=1)) and np.all(values.mean(axis=1) < high)
    # 95% of a mean of 400 draws of sd 0.5: about +-0.049
    np.testing.assert_allclose(high - low, 2 * 1.96 * 0.5 / 20, rtol=0.15)
    narrow_low, narrow_high = figures.bootstrap_band(values[:, :40])
    assert np.all(narrow_high - narrow_low > high - low)
    again = figures.bootstrap_band(values)
    np.testing.assert_array_equal(again[0], low)  # seeded


def test_profiles_draw_a_band_per_model_with_per_image_entropies(models, tmp_path, monkeypatch):
    # A fourth model's entropy file without `sample_entropy` (an older file): its line, no band.
    old = tmp_path / "old"
    with xr.open_dataset(models["monotone"] / "entropy.nc") as ds:
        _metric(old / "entropy.nc", "entropy", ds["entropy"].values, ds["channels"].values, "old")
    folders = [models["u"], models["monotone"], models["no_control"]]
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, out_base, formats=(): drawn.append(fig) or [])
    figures.profiles([f / "entropy.nc" for f in folders] + [old / "entropy.nc"],
                     [f / "magnitude.nc" for f in folders] + [models["monotone"] / "magnitude.nc"], tmp_path / "p")
    entropy_panel = drawn[0].axes[0]
    bands = [c for c in entropy_panel.collections if c.get_gid() == figures.BAND_GID]
    assert len(entropy_panel.get_lines()) == 4 and len(bands) == 3
    lines = entropy_panel.get_lines()
    for band, line in zip(bands, lines):
        assert matplotlib_colour(band.get_facecolor()[0]) == matplotlib_colour(line.get_color())
        ys = band.get_paths()[0].vertices[:, 1]
        assert ys.min() <= line.get_ydata().min() and line.get_ydata().max() <= ys.max()
    assert not any(c.get_gid() == figures.BAND_GID for ax in drawn[0].axes[1:] for c in ax.collections)


def matplotlib_colour(colour):
    from matplotlib.colors import to_rgb

    return tuple(round(v, 3) for v in to_rgb(colour))


def test_phases_figure_rings_exactly_the_models_with_a_u_and_draws_each_control(models):
    paths = [models[name] / "phases.nc" for name in ("u", "monotone", "no_control")]
    fig = figures.phases_figure(paths)
    lowpass_panel, entropy_panel = fig.axes[:2]
    for ax in (lowpass_panel, entropy_panel):
        rings = [line for line in ax.get_lines() if line.get_gid() == figures.RING_GID]
        # the U models' rings, each in its model's colour at its bottleneck
        assert len(rings) == 2
        models_lines = [line for line in ax.get_lines() if line.get_gid() is None and len(line.get_xdata()) > 1]
        assert [matplotlib_colour(r.get_color()) for r in rings] == \
               [matplotlib_colour(models_lines[i].get_color()) for i in (0, 2)]
    with xr.open_dataset(paths[0]) as ds:
        ring = next(line for line in entropy_panel.get_lines() if line.get_gid() == figures.RING_GID)
        b = ds.attrs["bottleneck_layer"]
        assert ring.get_xdata()[0] == ds["relative_depth"].values[b]
        assert ring.get_ydata()[0] == pytest.approx(ds["entropy_tested"].values[b])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(label.startswith("monotone") and label.endswith("no U shown") for label in labels)
    assert any(label.startswith("u ") and ": U, bottleneck block" in label for label in labels)
    assert any("no channel-order control" in label for label in labels if label.startswith("no_control"))
    # One control per model that has one: dotted, in its model's colour; none on the entropy panel.
    controls = [line for line in lowpass_panel.get_lines() if line.get_gid() == figures.CONTROL_GID]
    assert len(controls) == 2 and all(c.get_linestyle() == ":" for c in controls)
    with xr.open_dataset(paths[1]) as ds:
        np.testing.assert_allclose(controls[1].get_ydata(), ds["lowpass_perm"].values)
    assert not [line for line in entropy_panel.get_lines() if line.get_gid() == figures.CONTROL_GID]
    assert any(line.get_ydata()[0] == 0.25 for line in lowpass_panel.get_lines() if len(line.get_ydata()) == 2)


def test_spectrum_figure_shows_the_permuted_control_on_the_same_scale(models, tmp_path):
    fig = figures.spectrum_figure(models["u"] / "spectrum.nc")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 and "permuted" in panels[1].get_title()
    assert panels[0].images[0].get_clim() == panels[1].images[0].get_clim()
    single = figures.spectrum_figure(models["no_control"] / "spectrum.nc")
    assert len([ax for ax in single.axes if ax.images]) == 1
    result = CliRunner().invoke(cli, ["report", "spectrum", "--spectrum", str(models["u"] / "spectrum.nc"),
                                      "--out", str(tmp_path / "s"), "--formats", "png"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").stat().st_size > 1000


def _sections(text):
    """{model: its section without the quoted verdict}, and {model: the quoted verdict}."""
    import re

    parts = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    sections, verdicts = {}, {}
    for part in parts:
        model = part.split()[0]
        verdicts[model] = [line[2:] for line in part.splitlines() if line.startswith("> ")]
        sections[model] = "\n".join(line for line in part.splitlines() if not line.startswith("> "))
    return sections, verdicts


def test_phases_summary_says_u_only_where_the_file_does_and_quotes_each_verdict(models, tmp_path):
    import re

    names = ("u", "monotone", "no_control")
    out = tmp_path / "results" / "phases.md"
    args = ["report", "phases-summary", *(str(models[name] / "phases.nc") for name in names), "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    sections, verdicts = _sections(out.read_text())
    assert list(sections) == list(names)
    for name in names:
        with xr.open_dataset(models[name] / "phases.nc") as ds:
            attrs, lowpass, control = ds.attrs, ds["lowpass"].values, ds["lowpass_perm"].values
            blocks = ds["block"].values
        section, u = sections[name], attrs["u_shape"] == 1
        assert verdicts[name] == [attrs["verdict"]]
        # Outside the file's own sentence, the summary names a U and a bottleneck only for a U.
        assert bool(re.search(r"\bU\b", section)) == u and ("bottleneck" in section) == u, section
        assert "low-pass phase" not in section and attrs["entropy_scale"] in section
        assert f"{np.nanmin(lowpass):.3f} to {np.nanmax(lowpass):.3f}" in section
        if np.isfinite(control).any():
            at = int(np.nanargmax(lowpass - control))
            assert f"{np.nanmin(control):.3f} to {np.nanmax(control):.3f}" in section
            assert f"{lowpass[at] - control[at]:+.3f}, at block {blocks[at]}" in section
        else:
            assert "not in this file" in section


def test_phases_summary_of_a_file_without_the_verdict_ends_in_one_line(models, tmp_path, capsys):
    from dyn.cli import main

    bare = tmp_path / "phases.nc"
    with xr.open_dataset(models["u"] / "phases.nc") as ds:
        ds.drop_attrs().to_netcdf(bare)
    with pytest.raises(SystemExit) as stop:
        main(["report", "phases-summary", str(bare), "--out", str(tmp_path / "out" / "phases.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err[-1].startswith("dyn: error: ") and "lacks the attribute" in err[-1]
    assert not (tmp_path / "out").exists()
