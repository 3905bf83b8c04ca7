"""The README's "Your own model" walkthrough, run as it stands: a plain torch model of a user's module,
layers by a glob, an image folder; the analysis alone, then a distillation."""
import csv
import json
import subprocess

import pytest
import xarray as xr



def _walkthrough(readme: str) -> str:
    section = readme.split("## Your own model", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.mark.e2e
def test_the_readme_walkthrough_runs_as_it_stands(repo, env, tmp_path):
    for name in ("workflow", "examples"):
        (tmp_path / name).symlink_to(repo / name)
    block = _walkthrough((repo / "README.md").read_text())
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = tmp_path / "mine" / "results"

    with xr.open_dataset(results / "activations" / "tiny.nc") as capture:
        assert capture.attrs["layer_kind"] == "module" and capture.attrs["layer_globs"] == "blocks.*"
        assert capture.attrs["layer_modules"] == ", ".join(f"blocks.{i}" for i in range(6))
        # 16 patch tokens of width 32 without a grid: (C, N, 1)
        assert dict(capture["activation"].sizes) == {"layer": 6, "sample": 16, "channel": 32, "y": 16, "x": 1}
    phases = list(csv.DictReader((results / "metrics" / "tiny" / "phases.csv").open()))
    assert len(phases) == 6
    for name in ("profiles", "phases", "spectrum_tiny", "evolution", "curves"):
        assert (results / "figures" / f"{name}.png").stat().st_size > 1000
    rows = list(csv.DictReader((results / "table1.csv").open()))
    assert [row["run"] for row in rows] == ["softkd_none_b0_e2_s0", "spectral_Last1_b0.2_e2_s0"]
    summary = json.loads((results / "runs" / "spectral_Last1_b0.2_e2_s0" / "summary.json").read_text())
    assert summary["student"] == "tinynet:student" and summary["pairs"] == [[3, 5]]
    assert not (tmp_path / "mine" / "resources" / "checkpoints" / "small.safetensors").exists()
