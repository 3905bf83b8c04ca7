"""SLURM execution through profiles/slurm, on a real single-node Slurm cluster started by the tests.

`slurm_cluster` starts munged, slurmctld and slurmd (Debian's `munge` and `slurm-wlm`, installed by
.ci/run) on 127.0.0.1 with a generated slurm.conf in a temp dir and no accounting database, and stops
them by their PIDs at the end. Its node has stand-in GPUs (Slurm GRES on /dev/null), so the jobs ask
for GPUs as on a GPU cluster: two per distillation run, which starts torchrun on them itself (gloo on
the CPU here), one per fetch and capture. Without Slurm (or root) the tests are skipped with the reason
and the command that installs it, except under CI=true, where they fail: CI never skips them silently.
If Slurm is there but cannot be brought up, they fail.

One workflow run serves both tests, because on two cores it costs a minute or two (each Slurm job
starts Snakemake twice): the whole DAG of a tiny config through the profile, its two distillation runs
one cohort job, cancelled by `scancel` after its first finished epoch, which the profile's retries
submit again.
"""
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import BIN, REPO, tool

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

PROGRAMS = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "srun"]
NODE = "dyn-node"
GPUS = 8                 # stand-in GPUs of the node

CONFIG = REPO / ".test" / "config" / "slurm.yaml"
# The one cohort of CONFIG (its two runs), cancelled part-way.
COHORT, LONG_EPOCHS = "cohort_e6_s0", 6
COHORT_RUNS = ["spectral_First1+Last1_b0.2_e6_s0", "softkd_none_b0_e6_s0"]
# Submitted with sbatch: the capture and the three metric jobs of a model as one group job
# (group "analysis"); Table 1 and the figures are localrules, run beside Snakemake.
SUBMITTED = ["fetch", "group_analysis", "distill"]
LOCAL = ["table1", "figure_profiles", "figure_spectrum", "figure_evolution", "figure_curves"]


@dataclass
class Cluster:
    conf: Path
    env: dict

    def run(self, *args: str) -> str:
        result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{' '.join(args)}: {result.stderr.strip()}"
        return result.stdout

    def jobs(self) -> list[dict]:
        """Every job slurmctld still knows (MinJobAge keeps finished ones for an hour)."""
        out = self.run("squeue", "--noheader", "--states=all", "--format=%i|%T|%j|%k")
        return [dict(zip(("id", "state", "name", "comment"), line.split("|", 3))) for line in out.splitlines()]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _node_line(slurmd: str) -> str:
    """This machine's CPUs and memory as slurmd sees them (`slurmd -C`), under the name NODE."""
    out = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30).stdout
    hw = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))
    cpus = int(hw["CPUs"])
    memory = int(int(hw["RealMemory"]) * 0.9)
    # Four Slurm CPUs per core (config_overrides lets slurmd accept them): the jobs are mostly Python
    # start-up and share the cores. Memory is not a consumable here (CR_Core), only a bound per job.
    return (f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={4 * cpus} Sockets={4 * cpus} CoresPerSocket=1 "
            f"ThreadsPerCore=1 RealMemory={memory} Gres=gpu:{GPUS} State=UNKNOWN")


def _slurm_conf(d: Path, slurmd: str) -> str:
    ctld_port, slurmd_port = _free_ports(2)
    return "\n".join([
        "ClusterName=dyntest",
        f"SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "AuthType=auth/munge",
        f"AuthInfo=socket={d / 'munge.sock'}",
        "SlurmUser=root",
        f"StateSaveLocation={d / 'state'}",
        f"SlurmdSpoolDir={d / 'spool'}",
        f"SlurmctldPidFile={d / 'slurmctld.pid'}",
        f"SlurmdPidFile={d / 'slurmd.pid'}",
        f"SlurmctldLogFile={d / 'slurmctld.log'}",
        f"SlurmdLogFile={d / 'slurmd.log'}",
        "SlurmdParameters=config_overrides",
        "GresTypes=gpu",
        # No cgroups in a container: plain process tracking, no task binding, no accounting database.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1",
        # squeue is the status command without accounting: finished jobs must stay visible long enough.
        "MinJobAge=3600",
        "ReturnToService=2",
        "KillWait=5",
        _node_line(slurmd),
        f"PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    exe = {name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") for name in PROGRAMS}
    missing = [name for name, path in exe.items() if not path]
    why = (f"Slurm is not installed (missing {', '.join(missing)})" if missing else
           "the Slurm tests start slurmd, which must run as root" if os.geteuid() != 0 else None)
    if why:
        how = "as root: `apt-get install slurm-wlm munge` (.ci/run does), then `pytest -m slurm`"
        if os.environ.get("CI") == "true":  # CI must run them: never a silent skip there
            pytest.fail(f"{why}; CI requires the Slurm tests. {how}", pytrace=False)
        pytest.skip(f"{why}; to run them, {how}")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "bin"):
        (d / sub).mkdir()
    key = d / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    conf = d / "slurm.conf"
    conf.write_text(_slurm_conf(d, exe["slurmd"]))
    # Stand-in GPUs: slurmd wants a device file per GPU; with no cgroups nothing is opened.
    for i in range(GPUS):
        (d / f"gpu{i}").symlink_to("/dev/null")
    (d / "gres.conf").write_text(f"AutoDetect=off\nNodeName={NODE} Name=gpu File={d}/gpu[0-{GPUS - 1}]\n")
    # The jobstep plugin clears SLURM_* (SLURM_CONF too) before the srun inside each job; a real cluster
    # keeps slurm.conf in /etc/slurm, this one in a temp dir, so a shim points that srun at it.
    srun = d / "bin" / "srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF="{conf}" exec "{exe["srun"]}" "$@"\n')
    srun.chmod(0o755)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(SLURM_CONF=str(conf), PATH=os.pathsep.join([str(d / "bin"), str(BIN), os.environ.get("PATH", "")]))
    log = (d / "daemons.log").open("w")
    procs = []

    def start(*args):
        procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    cluster = Cluster(conf, env)
    try:
        # -f: munged runs as root here; its files stay in the temp dir.
        start(exe["munged"], "--foreground", "--force", f"--socket={d / 'munge.sock'}", f"--key-file={key}",
              f"--pid-file={d / 'munged.pid'}", f"--seed-file={d / 'munged.seed'}", f"--log-file={d / 'munged.log'}")
        _wait(lambda: (d / "munge.sock").exists(), 20, "munged did not create its socket", d)
        start(exe["slurmctld"], "-D", "-i", "-f", str(conf))
        start(exe["slurmd"], "-D", "-N", NODE, "-f", str(conf))
        _wait(lambda: _node_idle(cluster), 60, "the Slurm node did not become idle", d)
        yield cluster
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True, timeout=30)
        for proc in reversed(procs):  # slurmd, slurmctld, munged: each by its own PID
            _stop(proc)
        log.close()


def _node_idle(cluster: Cluster) -> bool:
    result = subprocess.run(["sinfo", "--noheader", "--format=%T"], env=cluster.env, capture_output=True,
                            text=True, timeout=30)
    return result.returncode == 0 and result.stdout.strip() == "idle"


def _wait(condition, seconds: float, what: str, d: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(d.glob("*.log")))
    pytest.fail(f"{what} within {seconds} s\n{logs}", pytrace=False)


@dataclass
class WorkflowRun:
    workdir: Path
    returncode: int
    output: str
    cancelled: str | None      # Slurm job id of the cancelled distillation job


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory) -> WorkflowRun:
    """The tiny config through `snakemake --profile profiles/slurm`, with its cohort's job cancelled once."""
    workdir = tmp_path_factory.mktemp("slurm-workflow")
    args = [tool("snakemake"), "-s", str(REPO / "workflow" / "Snakefile"), "--configfile", str(CONFIG),
            "--profile", str(REPO / "profiles" / "slurm"),
            # The test cluster has no accounting database (no sacct): squeue reports the states.
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
            "--slurm-keep-successful-logs"]
    state = workdir / "results" / "state" / COHORT / "last.pt"
    cancelled = None
    with (workdir / "snakemake.out").open("w+") as out:
        proc = subprocess.Popen(args, cwd=workdir, env=slurm_cluster.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 900
        try:
            while proc.poll() is None:
                assert time.monotonic() < deadline, "the workflow did not finish in 15 min"
                if cancelled is None and state.exists():
                    # Its first epoch is saved: cancel the job, as a preemption would.
                    running = [j for j in slurm_cluster.jobs() if j["state"] == "RUNNING"
                               and j["comment"] == f"rule_distill_{COHORT}"]
                    if running:
                        cancelled = running[0]["id"]
                        slurm_cluster.run("scancel", cancelled)
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
        out.seek(0)
        output = out.read()
    return WorkflowRun(workdir, proc.returncode, output, cancelled)


def submitted(output: str) -> dict[str, list[str]]:
    """Slurm job ids by rule (`group_<name>` for a group job), from the plugin's 'submitted with SLURM
    jobid' lines and the log folder each names."""
    jobs: dict[str, list[str]] = {}
    for job_id, folder in re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/(\w+?)/", output):
        # rule_<rule> (a cohort's rule: distill_<cohort>), or group_<group>_<its rules>
        key = folder.removeprefix("rule_") if folder.startswith("rule_") else "_".join(folder.split("_")[:2])
        key = "distill" if key.startswith("distill_") else key
        jobs.setdefault(key, []).append(job_id)
    return jobs


def test_whole_dag_runs_as_slurm_jobs(slurm_cluster, slurm_run):
    assert slurm_run.returncode == 0, slurm_run.output[-4000:]
    results = slurm_run.workdir / "results"
    rows = list(csv.DictReader((results / "table1.csv").open()))
    assert [r["run"] for r in rows] == ["softkd_none_b0_e6_s0", "spectral_First1+Last1_b0.2_e6_s0"]  # SoftKD first
    for name in ["profiles", "evolution", "spectrum_cait"]:
        assert (results / "figures" / f"{name}.png").stat().st_size > 1000
    for metric in ["spectrum", "entropy", "magnitude"]:
        assert (results / "metrics" / "cait" / f"{metric}.nc").is_file()

    # Every job went through sbatch and completed as a Slurm job of this workflow run, but for the
    # localrules; the capture and metric jobs of the one analysed model made one group job.
    by_rule = submitted(slurm_run.output)
    assert set(by_rule) == set(SUBMITTED) and len(by_rule["group_analysis"]) == 1, by_rule
    for rule in LOCAL:
        assert re.search(rf"localrule {rule}:", slurm_run.output), rule
    run_uuid = re.search(r"SLURM run ID: (\S+)", slurm_run.output).group(1)
    slurm_jobs = {j["id"]: j for j in slurm_cluster.jobs()}
    for rule, ids in by_rule.items():
        for job_id in ids:
            job = slurm_jobs[job_id]
            assert job["name"] == run_uuid and job["comment"].startswith(f"rule_{rule.removeprefix('group_')}"), job
            assert rule != "distill" or job["comment"] == f"rule_distill_{COHORT}", job
            assert job["state"] == ("CANCELLED" if job_id == slurm_run.cancelled else "COMPLETED"), job
    # Each job asked for its GPUs in one Slurm task (tasks_per_gpu: 0), not one task per GPU, and a
    # cohort started its two processes itself; the group job has the capture's one GPU.
    for rule, gpus in {"distill": 2, "fetch": 1, "group_analysis": 1}.items():
        for job_id in by_rule[rule]:
            record = slurm_cluster.run("scontrol", "show", "job", "--oneliner", job_id)
            assert re.search(rf"TresPerJob=\S*gpu:{gpus}\b", record) and " NumTasks=1 " in record, record
    for run in COHORT_RUNS:
        summary = json.loads((results / "runs" / run / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["cohort"] == COHORT_RUNS
    # Each job's Slurm log (kept by --slurm-keep-successful-logs) shows its rules running inside Slurm.
    logs = slurm_run.workdir / ".snakemake" / "slurm_logs"
    # (the cohort's job, cancelled once, shows its message: a rule with `message:` prints that instead)
    for folder, fragments in [(f"rule_distill_{COHORT}", [f"distill {COHORT}: 2 student(s)"]),
                              ("group_analysis", [f"rule {rule}:" for rule in ("capture", "spectrum", "entropy",
                                                                               "magnitude")])]:
        key = "distill" if folder.startswith("rule_distill") else folder
        for job_id in by_rule[key]:
            log = next(logs.glob(f"{folder}*/**/{job_id}.log")).read_text()
            assert all(fragment in log for fragment in fragments), log[-2000:]
    assert not list((results / "state").rglob("*.pt")), "finished runs leave no resume state"


def test_cancelled_cohort_resumes_every_student_after_its_last_epoch(slurm_run):
    assert slurm_run.cancelled, f"{COHORT} was never seen running with a saved epoch:\n{slurm_run.output[-3000:]}"
    assert slurm_run.returncode == 0, slurm_run.output[-4000:]
    # Slurm reported the cancellation, and the profile's retries submitted the cohort again.
    assert f"SLURM-job '{slurm_run.cancelled}' failed, SLURM status is: 'CANCELLED'" in slurm_run.output
    attempts = re.findall(rf"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_distill_{COHORT}/",
                          slurm_run.output)
    assert len(attempts) == 2 and attempts[0] == slurm_run.cancelled

    # The second attempt resumed each student after the last epoch the first one finished, and trained
    # only the rest.
    log = (slurm_run.workdir / "results" / "logs" / "distill" / f"{COHORT}.log").read_text()
    for run in COHORT_RUNS:
        resumed = re.search(rf"{re.escape(run)}: resumed from \S+/{COHORT}/last\.pt after epoch (\d+) of "
                            rf"{LONG_EPOCHS}", log)
        assert resumed, log[-3000:]
        done = int(resumed.group(1))
        assert 1 <= done < LONG_EPOCHS
        trained = [int(e) for e in re.findall(rf"{re.escape(run)}: epoch (\d+)/{LONG_EPOCHS} ", log)]
        assert trained == list(range(done + 1, LONG_EPOCHS + 1))
        rows = list(csv.DictReader((slurm_run.workdir / "results" / "runs" / run / "log.csv").open()))
        assert [int(r["epoch"]) for r in rows] == list(range(1, LONG_EPOCHS + 1))
