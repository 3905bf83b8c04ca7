"""Watching a job while it trains: live run files, progress lines and progress.json, DYN_LIVE=0."""
import csv
import datetime
import json
import logging
import os
import platform
import re
from types import SimpleNamespace

import pytest
import xarray as xr

from dyn.training import loop, watch
from dyn.training.distill import distill
from conftest import snapshots
from dyn.training.recipe import Recipe
from dyn.grid.runs import RunSpec

DIGITS = {"name": "digits", "val_fraction": 0.7}  # 539 training images: 5 steps of 128
RECIPE = dict(global_batch=128, lr_base=2e-3, lr_base_size=64, warmup_epochs=1, augment=False, num_workers=0,
              eval_batch_size=512, crop_pct=None, log_interval=2)
COHORT = [RunSpec("softkd", "none", 0.0, 3, 0), RunSpec("projector", "Last1", 0.2, 3, 0)]
LINE = re.compile(r"^\S+ \S+ INFO progress (?P<job>\S+): epoch (?P<epoch>\d+)/(?P<epochs>\d+) step (?P<step>\d+)/"
                  r"(?P<steps>\d+) \| [\d,]+ img/s \| epoch ETA \d+:\d\d:\d\d \| job ETA \d+:\d\d:\d\d "
                  r"\((?P<n>\d+) students?\)$")
SIDECAR = {"cohort", "host", "pid", "updated", "epoch", "epochs", "step", "steps", "images_per_s", "eta_epoch_s",
           "eta_job_s", "members"}
MEMBER = {"done", "epochs", "last_top1", "best_top1", "best_epoch", "stopped"}


def _cohort(teacher, runs, state, **recipe):
    return distill(COHORT, "cait_digits", teacher, "deit_digits", DIGITS, Recipe(**{**RECIPE, **recipe}),
                   [runs / spec.run_id for spec in COHORT], state_path=state,
                   snapshots=snapshots(num_images=8, every=1))


def _on_disk(run):
    """What a reader finds in a run directory now: log.csv's epochs, evolution.nc's, the best weights."""
    rows = [int(row["epoch"]) for row in csv.DictReader((run / "log.csv").open())] if (run / "log.csv").exists() else []
    snapshots = []
    if (run / "evolution.nc").exists():
        with xr.open_dataset(run / "evolution.nc") as ds:
            snapshots = [int(e) for e in ds["epoch"].values]
    return rows, snapshots, (run / "student_best.safetensors").exists()


def test_a_job_s_files_and_progress_while_it_trains_and_after_a_resume(teacher, tmp_path, monkeypatch, caplog):
    runs, state = tmp_path / "runs", tmp_path / "state" / "cohort_e3_s0" / "last.pt"
    sidecar = state.parent / "progress.json"
    caplog.set_level("INFO", logger="dyn")
    log_file = tmp_path / "distill.log"  # the job log is a file: what its lines look like there
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))  # the CLI's format
    logging.getLogger("dyn").addHandler(handler)

    # First attempt: killed right after epoch 1's state reached the disk, before its live files.
    real_save = loop.save_state

    def save_then_die(*args):
        real_save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _cohort(teacher, runs, state)
    monkeypatch.setattr(loop, "save_state", real_save)
    for spec in COHORT:  # Snakemake deletes the job's declared outputs before it reruns it
        for name in ("log.csv", "evolution.nc"):
            (runs / spec.run_id / name).unlink(missing_ok=True)

    # The rerun: at each epoch's end, what a reader of the run directories and of progress.json finds.
    seen, real_end = [], loop.end_of_epoch

    def end_of_epoch(the_loop, active, epoch, *args):
        before = {spec.run_id: _on_disk(runs / spec.run_id) for spec in COHORT}
        progress = json.loads(sidecar.read_text())
        real_end(the_loop, active, epoch, *args)
        seen.append((epoch + 1, before, progress, {spec.run_id: _on_disk(runs / spec.run_id) for spec in COHORT}))

    monkeypatch.setattr(loop, "end_of_epoch", end_of_epoch)
    try:
        summaries = _cohort(teacher, runs, state)
    finally:
        logging.getLogger("dyn").removeHandler(handler)
        handler.close()

    assert [epoch for epoch, *_ in seen] == [2, 3], "resumed after epoch 1"
    for epoch, before, progress, after in seen:
        for spec in COHORT:
            # written from the state at start (epoch 1), then a row and a snapshot at each epoch's end
            assert before[spec.run_id] == (list(range(1, epoch)), list(range(epoch)), True)
            assert after[spec.run_id] == (list(range(1, epoch + 1)), list(range(epoch + 1)), True)
        # progress.json as the last progress line left it: step 4 of this epoch (log_interval 2, 5 steps)
        assert set(progress) == SIDECAR and set(progress["members"]) == {spec.run_id for spec in COHORT}
        assert (progress["cohort"], progress["host"], progress["pid"]) == ("cohort_e3_s0", platform.node(), os.getpid())
        assert (progress["epoch"], progress["epochs"], progress["step"], progress["steps"]) == (epoch, 3, 4, 5)
        assert datetime.datetime.fromisoformat(progress["updated"]).tzinfo is not None
        assert progress["images_per_s"] > 0 and progress["eta_job_s"] >= progress["eta_epoch_s"] >= 0
        for spec, summary in zip(COHORT, summaries):
            member = progress["members"][spec.run_id]
            assert set(member) == MEMBER
            assert (member["done"], member["epochs"], member["stopped"]) == (epoch - 1, 3, None)
            assert isinstance(member["last_top1"], float) and isinstance(member["best_top1"], float)
            assert 1 <= member["best_epoch"] <= epoch - 1
    assert not state.exists() and not sidecar.exists(), "removed with the state when the job finishes"

    lines = [LINE.match(line) for line in log_file.read_text().splitlines() if " progress " in line]
    assert lines and all(lines), "every progress line in the format"
    # one line per job (not per student) at steps 2 and 4 and at each epoch's end (not the killed epoch's)
    assert [(m["epoch"], m["step"]) for m in lines] == [("1", "2"), ("1", "4")] + [
        (e, s) for e in ("2", "3") for s in ("2", "4", "5")]
    assert {(m["job"], m["epochs"], m["steps"], m["n"]) for m in lines} == {("cohort_e3_s0", "3", "5", "2")}


def test_progress_eta_weighs_each_remaining_epoch_by_the_students_still_training_in_it(tmp_path, caplog):
    caplog.set_level("INFO", logger="dyn")

    def member(name, epochs, done=0, stopped=None):
        return SimpleNamespace(name=name, epochs=epochs, done=done, stopped=stopped,
                               history=SimpleNamespace(rows=[{"epoch": 1, "top1": 50.0}, {"epoch": 2, "top1": 40.0}]))

    members = [member("a", 3), member("b", 2), member("c", 3, stopped="non-finite loss in epoch 1 at step 3")]
    progress = watch.Progress(SimpleNamespace(members=members, train=range(20), noun="student"), "c_e3_s0",
                             tmp_path / "progress.json")
    progress.end_seconds = 2.0  # the last end of epoch (evaluation, snapshots, state)
    progress.report(0, 10, 12_340.0, 5.0, training=2)
    # 0.5 s a step: this epoch 10 steps + its end = 7 s; then epoch 2 with both students (12 s) and
    # epoch 3 with one of the two (half of 12 s)
    assert caplog.messages[-1] == ("progress c_e3_s0: epoch 1/3 step 10/20 | 2,468 img/s | epoch ETA 0:00:07 | "
                                   "job ETA 0:00:25 (2 students)")
    written = json.loads((tmp_path / "progress.json").read_text())
    assert (written["eta_epoch_s"], written["eta_job_s"], written["images_per_s"]) == (7.0, 25.0, 2468.0)
    assert written["members"]["c"] == {"done": 0, "epochs": 3, "last_top1": 40.0, "best_top1": 50.0,
                                       "best_epoch": 1, "stopped": "non-finite loss in epoch 1 at step 3"}


def test_dyn_live_0_and_no_tensorboard_write_the_run_only_at_its_end(teacher, tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="dyn")
    monkeypatch.setenv("DYN_LIVE", "0")
    spec, run = RunSpec("softkd", "none", 0.0, 1, 0), tmp_path / "runs" / "softkd_none_b0_e1_s0"
    during, real_end = [], loop.end_of_epoch

    def end_of_epoch(*args):
        real_end(*args)
        during.append((sorted(os.listdir(run)) if run.exists() else [], sorted(os.listdir(tmp_path / "state"))))

    monkeypatch.setattr(loop, "end_of_epoch", end_of_epoch)
    distill([spec], "cait_digits", teacher, "deit_digits", DIGITS, Recipe(**RECIPE, tensorboard=False), [run],
            state_path=tmp_path / "state" / "last.pt", snapshots=snapshots(num_images=8))
    assert during == [([], ["last.pt"])], "nothing but the state while it trains"
    assert sorted(os.listdir(run)) == ["evolution.nc", "log.csv", "student.safetensors", "student_best.safetensors",
                                       "summary.json"]
    assert "progress " not in caplog.text
