"""Phases as numbers: labelling, the U test with its bootstrap noise, the low-pass score, `auto` pairs."""
import numpy as np
import pytest
import xarray as xr

from dyn.analysis import phases
from dyn.errors import UserError
from dyn.workflow import layers


def _files(tmp_path, per_image, spectrum=None):
    """Metric files as the metric rules write them, from per-image entropies (layers, images)."""
    n_layers = per_image.shape[0]
    spectrum = np.ones((n_layers, 16)) if spectrum is None else spectrum
    coords = {"layer": np.arange(n_layers), "channels": ("layer", np.full(n_layers, spectrum.shape[1]))}
    xr.Dataset({"entropy": ("layer", per_image.mean(axis=1)),
                "sample_entropy": (("layer", "sample"), per_image)}, coords=coords,
               attrs={"model": "m", "layer_kind": "block"}).to_netcdf(tmp_path / "entropy.nc")
    xr.Dataset({"magnitude": ("layer", np.ones(n_layers))}, coords=coords).to_netcdf(tmp_path / "magnitude.nc")
    xr.Dataset({"spectrum": (("layer", "frequency"), spectrum)}, coords=coords).to_netcdf(tmp_path / "spectrum.nc")
    return [tmp_path / f"{name}.nc" for name in ("entropy", "magnitude", "spectrum")]


def _profile(shape, images, noise, seed=0):
    rng = np.random.default_rng(seed)
    return np.asarray(shape)[:, None] + noise * rng.standard_normal((len(shape), images))


def test_a_clear_u_is_found_with_its_bottleneck(tmp_path):
    shape = [5.0, 4.6, 4.2, 4.0, 4.3, 4.7, 5.1]
    ds = phases.phases_dataset(*_files(tmp_path, _profile(shape, 64, 0.1)))
    assert ds.attrs["u_shape"] == 1 and ds.attrs["bottleneck_block"] == 4
    assert list(ds["phase"].values) == ["compression"] * 3 + ["bottleneck"] + ["expansion"] * 3
    assert ds.attrs["bottleneck_block_ci"][0] <= 4 <= ds.attrs["bottleneck_block_ci"][1]
    assert ds.attrs["rise_first_ci"][0] > 0 and ds.attrs["verdict"].startswith("U:")
    assert list(ds["block"].values) == list(range(1, 8)) and ds["relative_depth"].values[-1] == 1


def test_a_monotone_profile_is_no_u(tmp_path):
    ds = phases.phases_dataset(*_files(tmp_path, _profile([5.0, 4.8, 4.6, 4.4, 4.2], 64, 0.05)))
    assert ds.attrs["u_shape"] == 0 and ds.attrs["bottleneck_block"] == 5
    assert ds.attrs["verdict"].startswith("no U: the entropy minimum is at block 5 of 5")
    assert list(ds["phase"].values) == ["compression"] * 4 + ["bottleneck"]


def test_a_flat_noisy_profile_shows_no_u(tmp_path):
    ds = phases.phases_dataset(*_files(tmp_path, _profile([4.0] * 6, 32, 0.3, seed=3)))
    assert ds.attrs["u_shape"] == 0  # whatever its minimum, the rises are within the noise
    assert ds.attrs["rise_first_ci"][0] <= 0 or ds.attrs["rise_last_ci"][0] <= 0


def test_bootstrap_intervals_shrink_with_more_images():
    shape = [5.0, 4.5, 4.3, 4.6, 5.0]
    few = phases.bootstrap(_profile(shape, 16, 0.5))
    many = phases.bootstrap(_profile(shape, 256, 0.5))
    width = {name: (few[name][1] - few[name][0], many[name][1] - many[name][0]) for name in few}
    assert width["rise_first"][1] < width["rise_first"][0] / 2 and width["rise_last"][1] < width["rise_last"][0] / 2
    assert width["bottleneck"][1] <= width["bottleneck"][0]


def test_lowpass_score_flat_and_low_pass():
    c = 32
    assert phases.lowpass_score(np.ones(c), c) == pytest.approx(0.25)
    low = np.exp(-np.arange(c) / 2.0)
    low = np.concatenate([low[:c // 2 + 1], low[1:c // 2][::-1]])  # symmetric, as a real input's spectrum
    assert phases.lowpass_score(low, c) > 0.8
    spectrum = np.random.default_rng(0).random(c)  # by the definition, in a loop
    inside = sum(spectrum[k] for k in range(1, c // 2 + 1) if k <= c / 8)
    assert phases.lowpass_score(spectrum, c) == pytest.approx(inside / sum(spectrum[1:c // 2 + 1]))


def test_phases_files_and_the_bottleneck_read_back(tmp_path):
    files = _files(tmp_path, _profile([5.0, 4.2, 4.0, 4.8], 32, 0.05))
    phases.write_phases(*files, tmp_path / "phases.csv")
    assert (tmp_path / "phases.csv").read_text().startswith("layer,block,relative_depth,entropy,magnitude,lowpass,phase")
    assert phases.read_bottleneck(tmp_path / "phases.csv") == 2
    with xr.open_dataset(tmp_path / "phases.nc") as ds:
        assert ds.attrs["bottleneck_layer"] == 2 and ds.attrs["n_images"] == 32


def test_auto_pairs_of_a_teacher_with_a_known_bottleneck():
    # CaiT-S24 with its bottleneck at block 9 (index 8), DeiT-Tiny's 12 blocks at the same relative depths
    assert layers.parse("auto", 12, 24, teacher_bottleneck=8) == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert layers.parse("auto2", 12, 24, teacher_bottleneck=8) == [(0, 0), (3, 6)]
    assert layers.parse("auto1", 12, 24, teacher_bottleneck=8) == [(0, 0)]
    assert layers.parse("auto", 8, 12, teacher_bottleneck=11) == [(s, round(s * 11 / 7)) for s in range(8)]
    assert layers.slug("auto2") == "auto2" and layers.is_auto("auto") and not layers.is_auto("Last1")
    with pytest.raises(UserError, match="asks for 5 pairs"):
        layers.parse("auto5", 12, 24, teacher_bottleneck=8)
    with pytest.raises(UserError, match="needs the teacher's phases"):
        layers.parse("auto", 12, 24)
    with pytest.raises(UserError, match="bad layer spec"):
        layers.check_syntax("auto+First1")
