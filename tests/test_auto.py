"""Layer spec `auto`: it aligns the teacher's compression phase only where the teacher's phases (on
training images) show a U, and refuses before any training otherwise."""
import json

import numpy as np
import xarray as xr

from dyn.analysis import nulls, phases

from conftest import rule_args, dyn_here

DISTILL = rule_args(["distill", "--runs", json.dumps([{"method": "spectral", "layers": "auto", "beta": 0.2,
                                                      "epochs": 1}]), "--teacher-arch", "cait_digits",
           "--student-arch", "deit_digits", "--num-images", "8", "--dataset", '{"name": "digits"}',
           "--train", json.dumps(dict(global_batch=256, lr_base_size=64, warmup_epochs=0, augment=False, num_workers=0,
                                      eval_batch_size=512, crop_pct=None))])


def teacher_phases(tmp_path, profile, name):
    """The phases files of a 12-block teacher whose per-image entropies scatter around `profile`."""
    per_image = nulls.simulate(profile, 32, np.random.default_rng(0), sd=0.05)
    coords = {"layer": np.arange(12), "channels": ("layer", np.full(12, 64))}
    folder = tmp_path / name
    folder.mkdir()
    xr.Dataset({"entropy": ("layer", per_image.mean(axis=1)), "sample_entropy": (("layer", "sample"), per_image)},
               coords=coords, attrs={"bins": 100}).to_netcdf(folder / "entropy.nc")
    xr.Dataset({"magnitude": ("layer", np.ones(12))}, coords=coords).to_netcdf(folder / "magnitude.nc")
    xr.Dataset({"spectrum": (("layer", "frequency"), np.ones((12, 64)))}, coords=coords).to_netcdf(folder / "spectrum.nc")
    return phases.write_phases(folder / "entropy.nc", folder / "magnitude.nc", folder / "spectrum.nc",
                               folder / "phases.csv")


def test_auto_refuses_a_teacher_without_a_u_before_any_training(tmp_path, teacher):
    no_u = teacher_phases(tmp_path, np.linspace(5, 4, 12), "monotone")
    result = dyn_here(DISTILL + ["--teacher-phases", no_u, "--teacher-checkpoint", teacher,
                                 "--runs-dir", tmp_path / "runs"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "dyn: error: layer spec auto needs a teacher whose entropy profile is a U, but ")
    assert not (tmp_path / "runs").exists()


def test_auto_aligns_the_compression_phase_of_a_teacher_with_a_u(tmp_path, teacher):
    u = [5.0, 4.6, 4.2, 3.9, 3.7, 3.8, 4.0, 4.2, 4.4, 4.6, 4.8, 5.0]  # bottleneck at block 5
    path = teacher_phases(tmp_path, u, "u")
    assert phases.read_bottleneck(path) == 4
    result = dyn_here(DISTILL + ["--teacher-phases", path, "--teacher-checkpoint", teacher,
                                 "--runs-dir", tmp_path / "runs"])
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "runs" / "spectral_auto_b0.2_e1_s0" / "summary.json").read_text())
    assert [tuple(p) for p in summary["pairs"]] == [(0, 0), (1, 2), (2, 3)]  # student blocks at depths <= 4/11
