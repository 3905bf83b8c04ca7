"""The Snakemake workflow: dry runs, lint, user mistakes, and one end-to-end run of a tiny config."""
import csv
import json
import math
import re
import subprocess

import numpy as np
import pytest
import xarray as xr
import yaml

from conftest import tool


def snakemake(args, cwd, env, timeout=600):
    return subprocess.run([tool("snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run, as {rule: count}; the cohorts' rules (distill_<cohort>) count
    together as `distill`."""
    table = output[output.index("Job stats:"):].splitlines()
    counts = {}
    for line in table[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        rule = "distill" if match.group(1).startswith("distill_") else match.group(1)
        counts[rule] = counts.get(rule, 0) + int(match.group(2))
    return counts


def cohorts_listed(output: str) -> dict[str, list[str]]:
    """{cohort id: its run ids}, from the jobs' messages of a dry run."""
    return {m.group(1): m.group(2).split(", ")
            for m in re.finditer(r"^(?:Job \d+: )?distill (\S+): \d+ student\(s\): (.+)$", output, re.MULTILINE)}


def test_dry_run_of_the_default_config(repo, env):
    result = snakemake(["-n", "--cores", "2", "--forceall"], repo, env)  # also after a `make run`
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    # 39 runs in 6 cohorts: 11 runs of 18 epochs and 2 of 30, in each of 3 seeds.
    assert counts == {"all": 1, "fetch": 3, "capture": 3, "spectrum": 3, "entropy": 3, "magnitude": 3,
                      "phases": 3, "distill": 6, "table1": 1, "figure_profiles": 1, "figure_phases": 1,
                      "figure_spectrum": 3, "figure_evolution": 1, "figure_curves": 1, "phases_summary": 1,
                      "total": 34}
    cohorts = cohorts_listed(result.stdout)
    assert sorted(cohorts) == [f"cohort_e{e}_s{s}" for e in (18, 30) for s in range(3)]
    assert cohorts["cohort_e30_s1"] == ["softkd_none_b0_e30_s1", "spectral_Last1_b0.2_e30_s1"]
    assert sum(len(runs) for runs in cohorts.values()) == 39 and len(cohorts["cohort_e18_s2"]) == 11


def _with_distill(repo, tmp_path, **distill):
    cfg = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    cfg["distill"].update(distill)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_cohort_size_splits_and_cohort_false_gives_one_job_per_run(repo, env, tmp_path):
    capped = snakemake(["results/table1.csv", "-n", "--cores", "2", "--forceall", "--configfile",
                        _with_distill(repo, tmp_path, cohort_size=4)], repo, env)
    assert capped.returncode == 0, capped.stderr
    cohorts = cohorts_listed(capped.stdout)
    # 11 runs of one seed and 18 epochs, at most 4 per job: three near-equal parts, config order kept.
    assert [len(cohorts[f"cohort_e18_s0_{k}of3"]) for k in (1, 2, 3)] == [4, 3, 4]
    assert cohorts["cohort_e18_s0_1of3"][0] == "softkd_none_b0_e18_s0" and job_counts(capped.stdout)["distill"] == 12
    # Across epochs: one job per seed, the 30-epoch runs beside the 18-epoch ones.
    seeds = snakemake(["results/table1.csv", "-n", "--cores", "2", "--forceall", "--configfile",
                       _with_distill(repo, tmp_path, cohort_across_epochs=True)], repo, env)
    assert seeds.returncode == 0, seeds.stderr
    assert {k: len(v) for k, v in cohorts_listed(seeds.stdout).items()} == {f"cohort_s{s}": 13 for s in range(3)}
    single = snakemake(["results/table1.csv", "-n", "--cores", "2", "--forceall", "--configfile",
                        _with_distill(repo, tmp_path, cohort=False)], repo, env)
    assert single.returncode == 0, single.stderr
    assert job_counts(single.stdout)["distill"] == 39
    assert cohorts_listed(single.stdout)["softkd_none_b0_e18_s0"] == ["softkd_none_b0_e18_s0"]


def test_one_runs_summary_builds_its_cohort(repo, env):
    result = snakemake(["-n", "--cores", "2", "--forceall", "results/runs/softkd_none_b0_e30_s2/summary.json"],
                       repo, env)
    assert result.returncode == 0, result.stderr
    assert cohorts_listed(result.stdout) == {"cohort_e30_s2": ["softkd_none_b0_e30_s2", "spectral_Last1_b0.2_e30_s2"]}


def test_table1_target_builds_only_what_the_table_needs(repo, env):
    result = snakemake(["-n", "--cores", "2", "results/table1.csv", "--forceall"], repo, env)
    assert result.returncode == 0, result.stderr
    # The teacher's checkpoint and the runs: no model's analysis (the digits grid has no `auto` run).
    assert job_counts(result.stdout) == {"fetch": 1, "distill": 6, "table1": 1, "total": 8}


def test_dry_run_of_the_paper_config(repo, env):
    # No ImageNet here: the dry run lists every job all the same.
    result = snakemake(["-n", "-p", "--cores", "4", "--resources", "gpu=4", "--configfile", "config/paper.yaml",
                        "--forceall"], repo, env)
    assert result.returncode == 0, result.stderr
    # Five models analysed, and the teacher once more on training images (`auto` chooses its layers there).
    counts = job_counts(result.stdout)
    assert {rule: counts[rule] for rule in ("fetch", "capture", "spectrum", "entropy", "magnitude", "phases",
                                            "distill", "table1")} == {
        "fetch": 5, "capture": 6, "spectrum": 6, "entropy": 6, "magnitude": 6, "phases": 6, "distill": 2, "table1": 1}
    assert "results/activations/cait_s24@train.nc" in result.stdout and "--split train" in result.stdout
    # The paper's 9 students of 300 epochs (and our 4 beyond it) in one cohort, its 2 of 500 in another.
    assert {k: len(v) for k, v in cohorts_listed(result.stdout).items()} == {"cohort_e300_s0": 13, "cohort_e500_s0": 2}
    # Four GPUs per cohort: each starts torchrun on four free GPU slots.
    assert result.stdout.count("dyn gpu-run --gpus 4 -- torchrun --standalone --nproc_per_node=4 -m dyn.cli distill") == 2
    assert "--teacher-phases results/metrics/cait_s24@train/phases.csv" in result.stdout


def test_lint_passes(repo, env):
    result = snakemake(["--lint"], repo, env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_mistake_ends_in_one_line_exit_2(repo, env, tmp_path):
    cfg = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    cfg["distill"]["runs"][1]["layers"] = ["First1", "Frist1"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake(["-n", "--cores", "1", "-s", str(repo / "workflow" / "Snakefile"),
                        "--configfile", str(tmp_path / "bad.yaml")], tmp_path, env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dyn: error: config error at distill.runs[1].layers: bad layer spec 'Frist1': part 'Frist1' is not valid; use "
        "FirstK, LastK, '+'-joined parts like First1+Last1, explicit pairs like s0:t0,s11:t23, auto or autoK (alone), "
        "or none"]


def test_a_jobs_mistake_ends_snakemake_with_its_one_line_and_exit_2(repo, env, tmp_path):
    cfg = yaml.safe_load((repo / ".test" / "config" / "config.yaml").read_text())
    cfg["dataset"] = {"name": "imagefolder", "root": str(tmp_path / "imagenet")}  # not there
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake(["results/table1.csv", "--cores", "1", "-s", str(repo / "workflow" / "Snakefile"),
                        "--configfile", str(tmp_path / "bad.yaml")], tmp_path, env)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"dyn: error: dataset.root does not exist: {tmp_path / 'imagenet'} (dataset 'imagefolder') "
                    "(results/logs/fetch/cait.log)")
    assert not (tmp_path / "resources" / "checkpoints" / "cait.safetensors").exists()


@pytest.mark.e2e
def test_end_to_end_tiny_config(repo, env, tmp_path):
    config = str(repo / ".test" / "config" / "config.yaml")
    workflow = ["-s", str(repo / "workflow" / "Snakefile"), "--configfile", config]
    result = snakemake(["--cores", "2", *workflow], tmp_path, env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = tmp_path / "results"

    assert (results / "table1_summary.csv").read_text().startswith("method,layers,beta,epochs,n_seeds,")
    assert "| spectral | First1+Last1 | 0.2 | 2 | 1 |" in (results / "table1.md").read_text()
    rows = list(csv.DictReader((results / "table1.csv").open()))
    assert [r["run"] for r in rows] == ["softkd_none_b0_e2_s0", "spectral_First1+Last1_b0.2_e2_s0",
                                        "projector_Last1_b0.2_e2_s0", "lowpass_Last1_b0.2_e2_s0",
                                        "pca_Last1_b0.2_e2_s0"]
    for row in rows:
        assert 0 <= float(row["top1"]) <= float(row["top5"]) <= 100
        assert math.isclose(float(row["delta_top1"]), float(row["top1"]) - float(rows[0]["top1"]), abs_tol=1e-3)
    assert json.loads((results / "runs" / "lowpass_Last1_b0.2_e2_s0" / "summary.json").read_text())["lowpass_keep"] == 0.25
    pca = json.loads((results / "runs" / "pca_Last1_b0.2_e2_s0" / "summary.json").read_text())
    assert pca["pca_keep"] == 0.25 and (results / "runs" / "pca_Last1_b0.2_e2_s0" / "pca.safetensors").is_file()

    assert not (tmp_path / "resources" / "checkpoints" / "deit.safetensors").exists()  # the student is not analysed
    for name in ["profiles", "phases", "evolution", "curves", "curves_loss", "spectrum_cait"]:
        for fmt in ("png", "pdf"):
            assert (results / "figures" / f"{name}.{fmt}").stat().st_size > 1000

    depth = {"cait": 12}
    for model, layers in depth.items():
        info = json.loads((tmp_path / "resources" / "checkpoints" / f"{model}.json").read_text())
        assert info["source"].startswith("trained here") and len(info["sha256"]) == 64
        with xr.open_dataset(results / "activations" / f"{model}.nc") as ds:
            assert ds["activation"].sizes["layer"] == layers and ds["activation"].sizes["sample"] == 8
        with xr.open_dataset(results / "metrics" / model / "entropy.nc") as ds:
            entropy = ds["entropy"].values
            assert entropy.shape == (layers,)
            assert np.all(entropy > 0) and np.all(entropy <= np.log2(ds["channels"].values))
        with xr.open_dataset(results / "metrics" / model / "magnitude.nc") as ds:
            assert np.all(ds["magnitude"].values > 0)
        with xr.open_dataset(results / "metrics" / model / "spectrum.nc") as ds:
            assert ds["spectrum"].sizes["layer"] == layers and np.nanmin(ds["spectrum"].values) >= 0
        with xr.open_dataset(results / "metrics" / model / "phases.nc") as ds:
            assert ds.sizes["layer"] == layers and ds.attrs["u_shape"] in (0, 1) and ds.attrs["n_images"] == 8

    with xr.open_dataset(results / "runs" / "softkd_none_b0_e2_s0" / "evolution.nc") as ds:
        assert list(ds["epoch"].values) == [0, 1, 2] and ds.sizes["layer"] == 8
    # The five runs are one cohort: one job, one log with every student's epochs.
    cohort_log = (results / "logs" / "distill" / "cohort_e2_s0.log").read_text()
    assert "cohort of 5 students" in cohort_log
    assert all(cohort_log.count(f"{row['run']}: epoch ") == 2 for row in rows)
    assert not list((results / "state").rglob("*.pt")), "finished runs leave no resume state"

    for rule, name in [("fetch", "cait"), ("capture", "cait"), ("distill", "cohort_e2_s0")]:
        assert (results / "benchmarks" / rule / f"{name}.tsv").read_text().startswith("s\th:m:s")

    # Nothing left to do: a second invocation is a no-op.
    again = snakemake(["-n", "--cores", "2", *workflow], tmp_path, env)
    assert "Nothing to be done" in again.stdout + again.stderr

    # One HTML page with Table 1 and every figure, each with its caption.
    report = snakemake(["--report", "results/report.html", *workflow], tmp_path, env)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (results / "report.html").read_text()
    for name in ["table1.csv", "table1_summary.csv", "profiles.png", "phases.png", "evolution.png", "curves.png", "curves_loss.png",
                 "spectrum_cait.png", "phases.md"] + [f"{m}/phases.csv" for m in depth]:
        assert name in html, name
    assert html.count('"data_uri": "data:image/png;') == 6 and html.count('"data_uri": "data:text/csv;') == 3
    assert "one row per distillation run" in html and "Channel spectrum of cait" in html
    assert "Phases of cait" in html and "low-pass score" in html

    # A run added to the finished cohort: Snakemake reruns the cohort's job, which trains only the new run
    # and restores the five others from results/state/finished/ unchanged.
    cfg = yaml.safe_load(open(config))
    cfg["distill"]["runs"].append({"method": "spectral", "layers": "First1", "beta": 0.2, "epochs": 2})
    (tmp_path / "added.yaml").write_text(yaml.safe_dump(cfg))
    weights = (results / "runs" / rows[1]["run"] / "student.safetensors").read_bytes()
    added = snakemake(["results/runs/spectral_First1_b0.2_e2_s0/summary.json", "--cores", "2", "-s",
                       str(repo / "workflow" / "Snakefile"), "--configfile", str(tmp_path / "added.yaml")],
                      tmp_path, env)
    assert added.returncode == 0, added.stdout[-3000:] + added.stderr[-3000:]
    cohort_log = (results / "logs" / "distill" / "cohort_e2_s0.log").read_text()
    assert all(f"{row['run']}: reused from results/state/finished/{row['run']}" in cohort_log for row in rows)
    assert cohort_log.count("INFO spectral_First1_b0.2_e2_s0: epoch ") == 2 and not any(
        f"INFO {row['run']}: epoch " in cohort_log for row in rows)
    assert (results / "runs" / rows[1]["run"] / "student.safetensors").read_bytes() == weights
