"""The docs' measured tables are written by `tools/docs.py` from the files the commands write."""
import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import docs  # noqa: E402


def _bench(results):
    machine = {"cpus": 2, "processor": "x86_64", "memory_gib": 23.5, "torch": "2.14.1", "numpy": "2.4.6"}
    rows = [{"section": "metrics", "what": "three rules", "baseline": "a loop", "ours_s": 7.136, "baseline_s": 30.19,
             "ratio": 4.231, "ratio_means": "speed-up", "goal": ">= 3x", "met": True},
            {"section": "memory", "what": "peak", "baseline": "budget", "ours_s": 217.4, "baseline_s": 512,
             "ratio": 0.42, "ratio_means": "peak / budget", "goal": "< 1", "met": True},
            {"section": "train", "what": "a step", "baseline": "reference", "ours_s": 0.028, "baseline_s": 0.06,
             "ratio": 2.16, "ratio_means": "speed-up", "goal": ">= 1.25x", "met": False}]
    calibration = [{"what": "exchangeable", "min_rise": 0.0, "runs": 2000, "u_rate": 0.0125},
                   {"what": "exchangeable", "min_rise": 0.05, "runs": 2000, "u_rate": 0.004}]
    sections = {name: {"date": "2026-11-30", "seconds": 12.3, "machine": machine}
                for name in ("metrics", "memory", "train", "calibration")}
    (results / "bench.json").write_text(json.dumps({"rows": rows, "calibration": calibration, "sections": sections}))


def test_each_block_is_written_anew_from_its_file(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    _bench(results)
    (results / "table1.md").write_text("Teacher t.\n\n| method | top-1 |\n| --- | --- |\n| softkd | 91.74 |\n\nNote.\n")
    text = ("intro\n<!-- make docs: bench metrics,memory -->\nold numbers\n<!-- end make docs -->\nmiddle\n"
            "<!-- make docs: calibration -->\n<!-- end make docs -->\n<!-- make docs: table1 -->\nold\n"
            "<!-- end make docs -->\n<!-- make docs: phases -->\nkept\n<!-- end make docs -->\nend\n")
    missing = []
    out = docs.render(text, results, missing)
    assert "old numbers" not in out and out.startswith("intro\n") and out.endswith("end\n")
    assert "| three rules | a loop | 7.14 s | 30.2 s | 4.23, speed-up | >= 3x | yes |" in out
    assert "| peak | budget | 217 MiB | 512 MiB |" in out and "a step" not in out, "only the sections asked for"
    assert "`metrics`: measured 2026-11-30 in 12 s on 2 CPUs (x86_64), 23.5 GiB" in out
    assert "| exchangeable | 1.2% of 2,000 | 0.4% of 2,000 |" in out
    assert "| softkd | 91.74 |" in out and "Note." not in out and "Teacher t." not in out
    assert "kept" in out and missing == ["phases"], "a block without its file stays as it was"
    assert docs.render(out, results, []) == out, "written again, the same"


def test_an_unknown_generator_is_one_line():
    with pytest.raises(SystemExit, match="unknown generator 'tables'"):
        docs.render("<!-- make docs: tables -->\n<!-- end make docs -->\n", REPO / "results", [])


def test_the_docs_blocks_name_known_generators_and_are_closed():
    for path in docs.DOCS:
        text = path.read_text()
        assert text.count("<!-- make docs:") == text.count("<!-- end make docs -->") == len(
            docs.BLOCK.findall(text)), path
        for match in docs.BLOCK.finditer(text):
            assert match["spec"].split()[0] in docs.GENERATORS, (path, match["spec"])


def test_the_phases_table_is_read_from_each_models_phases_file(tmp_path):
    import numpy as np
    import xarray as xr

    from dyn.analysis import nulls, phases

    folder = tmp_path / "metrics" / "deit"
    folder.mkdir(parents=True)
    (tmp_path / "metrics" / "deit@train").mkdir()  # the training-image copy of an `auto` teacher: not shown
    u = [5.0, 4.6, 4.2, 3.9, 3.7, 3.8, 4.0, 4.2, 4.4, 4.6, 4.8, 5.0]
    per_image = nulls.simulate(u, 32, np.random.default_rng(0), sd=0.05)
    coords = {"layer": np.arange(12), "channels": ("layer", np.full(12, 64))}
    attrs = {"bins": 100, "arch": "deit_digits", "layer_kind": "block"}
    xr.Dataset({"entropy": ("layer", per_image.mean(axis=1)), "sample_entropy": (("layer", "sample"), per_image)},
               coords=coords, attrs=attrs).to_netcdf(folder / "entropy.nc")
    xr.Dataset({"magnitude": ("layer", np.ones(12))}, coords=coords).to_netcdf(folder / "magnitude.nc")
    xr.Dataset({"spectrum": (("layer", "frequency"), np.ones((12, 64))),
                "spectrum_perm": (("layer", "frequency"), np.ones((12, 64)))},
               coords=coords).to_netcdf(folder / "spectrum.nc")
    phases.write_phases(folder / "entropy.nc", folder / "magnitude.nc", folder / "spectrum.nc", folder / "phases.csv")
    table = docs.phases(tmp_path)
    assert table.count("\n") == 3 and "| `deit_digits` (12 blocks, 32 images) | U: " in table
