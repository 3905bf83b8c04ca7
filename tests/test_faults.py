"""Faults that are not the user's: jobs killed with -9, a full disk, a damaged resume state; and what
the workflow leaves for others to read (permissions) or for a user to find (a checkpoint of another
class count is still analysed)."""
import json
import os
import resource
import signal
import subprocess
import time

import numpy as np
import pytest
import timm
import torch
import xarray as xr

from dyn.models import save_weights

from conftest import rule_args, dyn_here, tool

DIGITS = '{"name": "digits"}'


def _run(args, env, **kwargs):
    return subprocess.run([tool("dyn"), *map(str, args)], env=env, capture_output=True, text=True, timeout=300,
                          **kwargs)


def _killed_once_then_rerun(args, out, env):
    """Start `dyn ARGS`, kill it with -9 once its temporary output appears (or halfway through an
    unbroken run's time, sooner while it still finishes first), and check it left no file under the output's name; then run it again."""
    started = time.monotonic()
    victim = subprocess.Popen([tool("dyn"), *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    while victim.poll() is None and not list(out.parent.glob(f".{out.name}.*.tmp")):
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    delay = (time.monotonic() - started) / 2
    while victim.returncode != -signal.SIGKILL:  # it finished before it could be killed: kill it sooner
        out.unlink()
        victim = subprocess.Popen([tool("dyn"), *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(delay)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        delay /= 2  # a warm start is faster than the first one
    assert not out.exists(), "a killed job left a file under its output's name"
    rerun = dyn_here(args)  # the victim needs a process of its own; the rerun does not
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert not list(out.parent.glob(f".{out.name}.*.tmp")), "the rerun cleared what the killed job left"


def _same_netcdf(a, b):
    with xr.open_dataset(a) as x, xr.open_dataset(b) as y:
        x.attrs.pop("created", None), y.attrs.pop("created", None)
        assert x.identical(y)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    save_weights(timm.create_model("cait_digits"), d / "cait.safetensors")
    return d / "cait.safetensors"


def test_kill_9_of_capture_metrics_and_report_jobs_then_rerun_gives_the_same_files(checkpoint, tmp_path, env):
    capture = rule_args(["capture", "--name", "c", "--arch", "cait_digits", "--checkpoint", checkpoint, "--num-images", "64",
               "--dataset", DIGITS, "--device", "cpu", "--out"])
    assert dyn_here(capture + [tmp_path / "whole.nc"]).returncode == 0
    _killed_once_then_rerun(capture + [tmp_path / "killed.nc"], tmp_path / "killed.nc", env)
    _same_netcdf(tmp_path / "whole.nc", tmp_path / "killed.nc")

    entropy = rule_args(["metrics", "entropy", "--capture", tmp_path / "whole.nc", "--out"])
    assert dyn_here(entropy + [tmp_path / "entropy.nc"]).returncode == 0
    _killed_once_then_rerun(entropy + [tmp_path / "m" / "entropy.nc"], tmp_path / "m" / "entropy.nc", env)
    _same_netcdf(tmp_path / "entropy.nc", tmp_path / "m" / "entropy.nc")

    summary = {"run": "softkd_none_b0_e1_s0", "method": "softkd", "layers": "none", "beta": 0.0, "epochs": 1,
               "seed": 0, "top1": 90.0, "top5": 99.0, "best_top1": 91.0}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    table = ["report", "table", tmp_path / "summary.json", "--out"]
    assert dyn_here(table + [tmp_path / "table1.csv"]).returncode == 0
    _killed_once_then_rerun(table + [tmp_path / "r" / "table1.csv"], tmp_path / "r" / "table1.csv", env)
    assert (tmp_path / "r" / "table1.csv").read_text() == (tmp_path / "table1.csv").read_text()


def test_a_full_disk_while_writing_a_capture_ends_in_one_line_and_keeps_no_file(checkpoint, tmp_path, env):
    def small_file_limit():  # files may not grow past 64 KiB; a write past it fails instead of killing
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

    out = tmp_path / "out" / "cait.nc"
    result = _run(rule_args(["capture", "--name", "c", "--arch", "cait_digits", "--checkpoint", checkpoint, "--num-images", "64",
                   "--dataset", DIGITS, "--device", "cpu", "--out", out]), env, preexec_fn=small_file_limit)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dyn: error: cannot write {out}") and "disk full" in last
    assert "Traceback" not in result.stderr
    assert not [p for p in out.parent.iterdir()], "no partial file, under any name"


def test_a_damaged_resume_state_is_moved_aside_and_the_run_starts_over(checkpoint, tmp_path, caplog):
    state = tmp_path / "last.pt"
    state.write_bytes(b"PK\x03\x04 half of a zip")  # what a full disk can leave
    result = dyn_here(rule_args(["distill", "--runs", '[{"method": "softkd", "epochs": 1}]', "--teacher-arch", "cait_digits",
                   "--teacher-checkpoint", checkpoint, "--student-arch", "deit_digits", "--runs-dir", tmp_path / "runs",
                   "--state", state, "--num-images", "4", "--dataset", DIGITS, "--device", "cpu", "--train",
                   '{"global_batch": 256, "warmup_epochs": 0, "augment": false, "num_workers": 0, "crop_pct": null}']))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "last.pt.corrupt").read_bytes().startswith(b"PK")
    assert f"cannot read the resume state {state}" in caplog.text and "starting over" in caplog.text
    assert (tmp_path / "runs" / "softkd_none_b0_e1_s0" / "summary.json").is_file() and not state.exists()


def test_files_are_readable_by_others_as_the_umask_allows(checkpoint, tmp_path):
    out = tmp_path / "ro"
    previous = os.umask(0o022)
    try:
        assert dyn_here(rule_args(["capture", "--name", "c", "--arch", "cait_digits", "--checkpoint", checkpoint, "--num-images",
                         "4", "--dataset", DIGITS, "--device", "cpu", "--out", out / "c.nc"])).returncode == 0
        assert dyn_here(rule_args(["metrics", "spectrum", "--capture", out / "c.nc", "--out", out / "s.nc"])).returncode == 0
    finally:
        os.umask(previous)
    for path in out.iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_a_checkpoint_with_another_class_count_is_fetched_and_captured_without_accuracy(tmp_path, caplog):
    # An ImageNet-1k-style head on a 10-class dataset: the checkpoint's head decides the classes.
    caplog.set_level("INFO", logger="dyn")
    torch.manual_seed(0)
    save_weights(timm.create_model("deit_digits", num_classes=1000), tmp_path / "in1k.safetensors")
    out = tmp_path / "ck" / "deit.safetensors"
    result = dyn_here(rule_args(["fetch", "--name", "deit", "--arch", "deit_digits", "--weights", tmp_path / "in1k.safetensors",
                       "--out", out, "--dataset", DIGITS, "--train", '{"num_workers": 0}']))
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["num_classes"] == 1000 and "val_top1" not in info
    assert info["evaluation"] == "skipped: the model has 1000 classes, the dataset's validation split 10"
    assert "validation accuracy skipped: the model has 1000 classes" in caplog.text
    capture = dyn_here(rule_args(["capture", "--name", "deit", "--arch", "deit_digits", "--checkpoint", out, "--num-images", "8",
                        "--dataset", DIGITS, "--out", tmp_path / "deit.nc"]))
    assert capture.returncode == 0, capture.stderr[-2000:]
    with xr.open_dataset(tmp_path / "deit.nc") as ds:
        assert ds["activation"].sizes["layer"] == 8 and np.isfinite(ds["activation"].values).all()


@pytest.mark.parametrize("args, fragment", [
    (rule_args(["metrics", "entropy", "--capture", "{tmp}/notes.nc", "--out", "{tmp}/e.nc"]), "cannot read capture file"),
    (rule_args(["fetch", "--name", "m", "--arch", "resnet_digits", "--weights", "{tmp}/notes.pth", "--out", "{tmp}/m.safetensors",
      "--dataset", DIGITS]), "cannot read checkpoint"),
])
def test_one_line_from_a_real_process(tmp_path, env, args, fragment):
    for name in ("notes.nc", "notes.pth"):
        (tmp_path / name).write_text("my notes, not data\n")
    result = _run([a.replace("{tmp}", str(tmp_path)) for a in args], env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("dyn: error: ") and fragment in result.stderr
