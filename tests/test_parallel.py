"""Several processes: data-parallel training under torchrun (gloo on CPU) over two "nodes" of a Slurm job,
GPU slots, and kill -9 + resume."""
import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import types

import pytest
import torch
from conftest import dyn_here, rule_args, tool
from safetensors.torch import load_file
from test_train import tensorboard_scalars

from dyn.errors import UserError
from dyn.workflow import launch

DIGITS = '{"name": "digits", "val_fraction": 0.7}'  # 539 training images: fewer steps, the same paths
# 512 training images: global batches of 128 all full, so one process and two see the same batches
# (an odd last batch would be padded to split evenly, as DistributedSampler does, and differ)
EVEN = '{"name": "digits", "val_fraction": 0.715}'
TRAIN = json.dumps(dict(global_batch=64, lr_base=2e-3, lr_base_size=64, warmup_epochs=1, augment=False, num_workers=0,
                        eval_batch_size=512, crop_pct=None))


# A cohort of two students: each its own DDP module under torchrun.
COHORT = [{"method": "spectral", "layers": "First1+Last1", "beta": 0.2}, {"method": "softkd"}]


# Two processes against one, after 8 AdamW steps: only the order of the gradient's sums differs (2e-5
# measured)
WEIGHT_ATOL = 1e-4


def run_ids(epochs):
    return [f"spectral_First1+Last1_b0.2_e{epochs}_s0", f"softkd_none_b0_e{epochs}_s0"]


def distill_args(teacher, out, epochs, train=TRAIN, extra=(), dataset=DIGITS):
    return rule_args(["distill", "--runs", json.dumps([{**run, "epochs": epochs} for run in COHORT]),
            "--teacher-arch", "cait_digits", "--teacher-checkpoint", str(teacher), "--student-arch", "deit_digits",
            "--runs-dir", str(out), "--num-images", "8", "--evolution-every", "1", "--dataset", dataset,
            "--train", train, "--device", "cpu", "--threads", "1", *extra])


def log_rows(run_dir):
    return list(csv.DictReader((run_dir / "log.csv").open()))


def _rendezvous_job_id() -> int:
    """A Slurm job id whose rendezvous port (dyn.workflow.launch.PORTS) is free on this machine now."""
    low, high = launch.PORTS
    for port in random.Random().sample(range(low, high), 100):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port - low
    pytest.fail("no free rendezvous port")


def _as_node(env, node, job_id):
    """A process environment as srun gives one task per node of a 2-node job, both nodes this machine."""
    clean = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    return {**clean, "SLURM_JOB_ID": str(job_id), "SLURM_JOB_NODELIST": "127.0.0.1", "SLURM_NNODES": "2",
            "SLURM_NODEID": str(node)}


def test_two_nodes_on_cpu_match_one_process(teacher, tmp_path, env):
    # One process against two "nodes" with the same global batch of 128 (64 each): each node a torchrun
    # of one gloo process, as dyn.workflow.launch starts it in a Slurm task, meeting the other by c10d
    # rendezvous at the first node (127.0.0.1 here). The same global batches (each rank takes every
    # other sample of the epoch's order), so the same mean loss and the same weights.
    single = dict(json.loads(TRAIN), global_batch=128, lr_base_size=128)
    one = dyn_here(distill_args(teacher, tmp_path / "one", 2, json.dumps(single), dataset=EVEN))  # in this process
    assert one.returncode == 0, one.stderr
    job_id = _rendezvous_job_id()
    nodes = [subprocess.Popen([sys.executable, "-m", "dyn.workflow.launch", "--on-node", "--nodes", "2", "--gpus", "0",
                               "--", *distill_args(teacher, tmp_path / "two", 2, json.dumps(single), dataset=EVEN)],
                              env=_as_node(env, node, job_id), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for node in (0, 1)]
    try:
        errs = [node.communicate(timeout=300)[1] for node in nodes]
    finally:
        for node in nodes:  # torchrun passes SIGTERM on to its worker
            if node.poll() is None:
                node.terminate()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(err[-3000:] for err in errs)
    stderr = "".join(errs)
    assert f"--rdzv_endpoint=127.0.0.1:{launch.rendezvous_port(str(job_id))}" in errs[0], "the command, logged"

    for run in run_ids(2):
        summary = json.loads((tmp_path / "two" / run / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["global_batch_size"] == 128
        assert summary["batch_size_per_process"] == 64 and summary["cohort"] == run_ids(2)
        assert summary["lr"] == pytest.approx(2e-3) and summary["devices"] == ["cpu", "cpu"]
        assert sorted(p.name for p in (tmp_path / "two" / run).iterdir()) == [
            "evolution.nc", "log.csv", "student.safetensors", "student_best.safetensors", "summary.json",
            "tensorboard"]
        assert stderr.count(f"{run}: epoch 2/2") == 1, "only rank 0 logs epochs"
        assert len(list((tmp_path / "two" / run / "tensorboard").glob("events.out.tfevents.*"))) == 1, "rank 0's"

        rows_one, rows_two = log_rows(tmp_path / "one" / run), log_rows(tmp_path / "two" / run)
        assert len(rows_two) == 2
        for a, b in zip(rows_one, rows_two):
            assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-5)  # 1e-7 measured
            assert float(b["top1"]) == pytest.approx(float(a["top1"]), abs=0.2)  # an image or two of 1285
        assert float(rows_two[-1]["loss"]) < float(rows_two[0]["loss"])
        # the same weights, but for the order of floating-point sums (the gradient's, over two processes)
        a, b = (load_file(tmp_path / where / run / "student.safetensors") for where in ("one", "two"))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=WEIGHT_ATOL, msg=key)
    # one progress line per cohort (not per student) at each epoch's end (4 steps < log_interval), rank 0's
    progress = [line for line in stderr.splitlines() if " progress " in line]
    assert len(progress) == 2 and all("step 4/4 | " in line and "(2 students)" in line for line in progress)


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


# dyn.workflow.launch: what a job of several Slurm nodes asks for and runs, as pure functions.

@pytest.mark.parametrize("nodelist, first", [("gpu07", "gpu07"), ("gpu[07-09,12],cpu1", "gpu07"),
                                             ("rack[1-2]-n[3-4]", "rack1-n3"), ("a,b[1-2]", "a"),
                                             ("n[5]", "n5"), ("127.0.0.1", "127.0.0.1")])
def test_first_host_of_a_slurm_node_list(nodelist, first):
    assert launch.first_host(nodelist) == first


def test_each_node_starts_torchrun_with_a_c10d_rendezvous_at_the_first():
    env = {"SLURM_JOB_ID": "4711", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2", "SLURM_NODEID": "1"}
    task = launch.slurm_task(env)
    assert task == launch.SlurmTask("4711", 1, 2, "gpu07")
    assert launch.slurm_task({**env, "SLURM_STEP_NODELIST": "gpu[03-04]"}).first_host == "gpu03", "the step's"
    assert launch.torchrun_argv(task, 2, 4, ["distill", "--seed", "0"]) == [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=4", "--rdzv_backend=c10d", "--rdzv_endpoint=gpu07:24711",
        "--rdzv_id=4711", "--rdzv_conf=is_host=0", "-m", "dyn.cli", "distill", "--seed", "0"]
    first = launch.slurm_task({**env, "SLURM_NODEID": "0"})
    assert "--rdzv_conf=is_host=1" in launch.torchrun_argv(first, 2, 4, ["distill"]), "the first node hosts"
    assert "--nproc_per_node=1" in launch.torchrun_argv(first, 2, 0, ["distill"]), "a node without GPUs: one"
    assert launch.rendezvous_port("123456") == 23456 and launch.rendezvous_port("29999") == 29999
    with pytest.raises(UserError, match="distill.nodes is 3 but this Slurm step has 2"):
        launch.torchrun_argv(task, 3, 4, ["distill"])
    with pytest.raises(UserError, match="not in a Slurm task"):
        launch.slurm_task({"SLURM_JOB_ID": "4711"})


def test_the_job_starts_one_task_per_node():
    assert launch.srun_argv(2, 4, 32, ["distill", "--seed", "0"]) == [
        "srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=32", "--gres=gpu:4",
        "--kill-on-bad-exit=1", sys.executable, "-m", "dyn.workflow.launch", "--on-node", "--nodes=2", "--gpus=4",
        "--", "distill", "--seed", "0"]
    assert not any(a.startswith("--gres") for a in launch.srun_argv(2, 0, 1, ["distill"])), "CPU nodes"


def test_several_nodes_outside_slurm_end_in_one_line(monkeypatch, capsys):
    for name in [n for n in os.environ if n.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    for on_node, says in [([], "distill.nodes 2 needs a Slurm allocation of 2 nodes"),
                          (["--on-node"], "not in a Slurm task")]:
        with pytest.raises(SystemExit) as ended:
            launch.main(["--nodes", "2", "--gpus", "4", *on_node, "--", "distill", "--seed", "0"])
        err = capsys.readouterr().err
        assert ended.value.code == 2 and err.count("\n") == 1 and err.startswith(f"dyn: error: {says}"), err


def test_slurm_resources_of_one_node_and_of_several():
    site = {"slurm_partition": "gpu", "gpu_model": "a100"}
    assert launch.slurm_resources(1, 4, 8, 1, site) == {"gpu": 4, "cpus_per_gpu": 8, **site}, "as before"
    assert launch.slurm_resources(2, 4, 8, 1, site) == {
        "nodes": 2, "tasks": 2, "mpi": "srun", "tasks_per_gpu": 0, "cpus_per_task": 32, "gres": "gpu:a100:4",
        "slurm_partition": "gpu"}
    cpu = launch.slurm_resources(3, 0, 8, 6, {})
    assert cpu["cpus_per_task"] == 6 and "gres" not in cpu and "gpu" not in cpu
    with pytest.raises(UserError, match="resources.distill.slurm sets gres, nodes"):
        launch.slurm_resources(2, 4, 8, 1, {"nodes": 3, "gres": "gpu:2"})


def test_a_global_batch_that_does_not_divide_among_the_processes_ends_before_any_job():
    launch.check_global_batch(128, 2, 4)
    launch.check_global_batch(6, 3, 0)  # one process on each node without GPUs
    with pytest.raises(UserError, match=r"train.global_batch 100 does not divide among the 16 processes .*"
                                        r"\(distill.nodes 2 x distill.gpus 8\): use a multiple of 16"):
        launch.check_global_batch(100, 2, 8)


class _Resources(dict):
    __getattr__ = dict.__getitem__


def test_a_two_node_eight_gpu_cohort_asks_slurm_for_two_nodes_of_four_gpus():
    # The sbatch line snakemake-executor-plugin-slurm builds from those resources (docs/cluster.md).
    submit = pytest.importorskip("snakemake_executor_plugin_slurm.submit_string")
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    resources = _Resources(launch.slurm_resources(2, 4, 8, 1, {"gpu_model": "a100"}), mem_mb=64000, runtime=1440)
    job = types.SimpleNamespace(resources=resources, threads=1)
    params = {"run_uuid": "u", "slurm_logfile": "log", "comment_str": "rule_distill_c", "account": "", "partition": "",
              "workdir": ""}
    call = (submit.get_submit_command(job, params) + set_gres_string(job)).split()
    for option in ["--nodes=2", "--ntasks=2", "--cpus-per-task=32", "--gres=gpu:a100:4", "1440", "64000"]:
        assert option in call, (option, call)
    assert not any(a.startswith(("--gpus", "--ntasks-per-gpu", "--cpus-per-gpu")) for a in call), call
