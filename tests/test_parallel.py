"""Several processes: data-parallel training under torchrun (gloo on CPU), GPU slots, and kill -9 + resume."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file


from conftest import dyn_here, tool
from test_train import tensorboard_scalars

DIGITS = '{"name": "digits", "val_fraction": 0.7}'  # 539 training images: fewer steps, the same paths
TRAIN = json.dumps(dict(global_batch=64, lr_base=2e-3, lr_base_size=64, warmup_epochs=1, augment=False, num_workers=0,
                        eval_batch_size=512, crop_pct=None))


# A cohort of two students: each its own DDP module under torchrun.
COHORT = [{"method": "spectral", "layers": "First1+Last1", "beta": 0.2}, {"method": "softkd"}]


def run_ids(epochs):
    return [f"spectral_First1+Last1_b0.2_e{epochs}_s0", f"softkd_none_b0_e{epochs}_s0"]


def distill_args(teacher, out, epochs, train=TRAIN, extra=()):
    return ["distill", "--runs", json.dumps(COHORT), "--epochs", str(epochs),
            "--teacher-arch", "cait_digits", "--teacher-checkpoint", str(teacher), "--student-arch", "deit_digits",
            "--runs-dir", str(out), "--num-images", "8", "--evolution-every", "1", "--dataset", DIGITS,
            "--train", train, "--device", "cpu", "--threads", "1", *extra]


def log_rows(run_dir):
    return list(csv.DictReader((run_dir / "log.csv").open()))


def test_ddp_on_cpu_matches_one_process(teacher, tmp_path, env):
    # One process against two gloo processes with the same global batch of 128 (64 each): the same
    # global batches (each rank takes every other sample of the epoch's order) and the same mean loss.
    single = dict(json.loads(TRAIN), global_batch=128, lr_base_size=128)
    one = dyn_here(distill_args(teacher, tmp_path / "one", 2, json.dumps(single)))  # no process of its own needed
    assert one.returncode == 0, one.stderr
    two = subprocess.run([tool("torchrun"), "--standalone", "--nproc_per_node=2", "-m", "dyn.cli",
                          *distill_args(teacher, tmp_path / "two", 2, json.dumps(single))],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]

    for run in run_ids(2):
        summary = json.loads((tmp_path / "two" / run / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["global_batch_size"] == 128
        assert summary["batch_size_per_process"] == 64 and summary["cohort"] == run_ids(2)
        assert summary["lr"] == pytest.approx(2e-3) and summary["devices"] == ["cpu", "cpu"]
        assert sorted(p.name for p in (tmp_path / "two" / run).iterdir()) == [
            "evolution.nc", "log.csv", "student.safetensors", "student_best.safetensors", "summary.json",
            "tensorboard"]
        assert two.stderr.count(f"{run}: epoch 2/2") == 1, "only rank 0 logs epochs"
        assert len(list((tmp_path / "two" / run / "tensorboard").glob("events.out.tfevents.*"))) == 1, "rank 0's"

        rows_one, rows_two = log_rows(tmp_path / "one" / run), log_rows(tmp_path / "two" / run)
        assert len(rows_two) == 2
        for a, b in zip(rows_one, rows_two):
            assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=2e-3)
            assert float(b["top1"]) == pytest.approx(float(a["top1"]), abs=1.0)
        assert float(rows_two[-1]["loss"]) < float(rows_two[0]["loss"])
    # one progress line per cohort (not per student) at each epoch's end (5 steps < log_interval), rank 0's
    progress = [line for line in two.stderr.splitlines() if " progress " in line]
    assert len(progress) == 2 and all("step 5/5 | " in line and "(2 students)" in line for line in progress)


def _state_epoch(path):
    """The cohort state's finished epochs (one for all its students)."""
    try:
        return min(entry["epoch"] for entry in torch.load(path, weights_only=True)["members"].values())
    except Exception:  # not written yet, or being replaced
        return 0


def test_kill_9_of_a_cohort_then_rerun_resumes_every_student_bit_identical(teacher, tmp_path, env):
    epochs = 3
    whole = dyn_here(distill_args(teacher, tmp_path / "whole", epochs, extra=["--state", str(tmp_path / "whole.pt")]))
    assert whole.returncode == 0, whole.stderr

    state = tmp_path / "killed.pt"
    args = distill_args(teacher, tmp_path / "killed", epochs, extra=["--state", str(state)])
    victim = subprocess.Popen([tool("dyn"), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _state_epoch(state) < 1 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_after = _state_epoch(state)
    assert 1 <= killed_after < epochs, "the run must die part-way"
    assert not any((tmp_path / "killed" / run / "summary.json").exists() for run in run_ids(epochs))
    for run in run_ids(epochs):  # live files: a row per epoch, up to the state's (killed between the two: one less)
        live = tmp_path / "killed" / run
        assert (len(log_rows(live)) if (live / "log.csv").exists() else 0) in (killed_after - 1, killed_after)

    rerun = subprocess.run([tool("dyn"), *args], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    for run in run_ids(epochs):
        assert f"{run}: resumed from {state} after epoch {killed_after} of {epochs}" in rerun.stderr
        a = load_file(tmp_path / "whole" / run / "student.safetensors")
        b = load_file(tmp_path / "killed" / run / "student.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert [r["loss"] for r in log_rows(tmp_path / "whole" / run)] == [
            r["loss"] for r in log_rows(tmp_path / "killed" / run)]
        assert ((tmp_path / "whole" / run / "evolution.nc").read_bytes()
                == (tmp_path / "killed" / run / "evolution.nc").read_bytes())
        assert ((tmp_path / "whole" / run / "student_best.safetensors").read_bytes()
                == (tmp_path / "killed" / run / "student_best.safetensors").read_bytes())
        curves = tensorboard_scalars(tmp_path / "killed" / run / "tensorboard")
        assert [step for step, _ in curves["val/top1"]] == list(range(1, epochs + 1)), "each epoch once"
        assert [v for _, v in curves["val/top1"]] == pytest.approx([float(r["top1"]) for r in
                                                                   log_rows(tmp_path / "whole" / run)])
    assert not state.exists() and not (tmp_path / "progress.json").exists(), "removed with the state"
    assert f"progress {tmp_path.name}: epoch {epochs}/{epochs} step 9/9 | " in rerun.stderr


def _holder(tmp_path, name, env, pool):
    script = f"import os, time; open({str(tmp_path / name)!r}, 'w').write(os.environ['CUDA_VISIBLE_DEVICES']); " \
             "time.sleep(600)"
    return subprocess.Popen([tool("dyn"), "gpu-run", "--gpus", "1", "--pool", str(pool), "--", sys.executable, "-c",
                             script], env=env, start_new_session=True, stderr=subprocess.DEVNULL)


def _wait_for(path, seconds=30):
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text():
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return path.read_text()


def test_gpu_slots_are_distinct_and_reused_after_a_kill(tmp_path, env):
    env = {**env, "DYN_GPU_SLOTS": "3"}
    pool = tmp_path / "pool"
    jobs = [_holder(tmp_path, f"job{i}", env, pool) for i in range(3)]
    try:
        got = [_wait_for(tmp_path / f"job{i}") for i in range(3)]
        assert sorted(got) == ["0", "1", "2"], got
        waiting = _holder(tmp_path, "job3", env, pool)
        jobs.append(waiting)
        assert _wait_for(tmp_path / "job3", seconds=2) is None, "a fourth job must wait for a free slot"
        os.killpg(jobs[1].pid, signal.SIGKILL)  # the job dies with its training process
        assert _wait_for(tmp_path / "job3") == got[1], "the killed job's slot goes to the waiting one"
    finally:
        for job in jobs:
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
