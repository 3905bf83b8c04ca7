"""The cohort section of `make bench`: the digits grid's nine runs as one cohort job against the same
runs one after another, as the workflow starts them (`dyn distill` processes, start-up included)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cli_defaults import rule_args

REPO = Path(__file__).resolve().parents[1]

# Table 1's nine students of "300" epochs (20 on the digits), as `dyn distill --runs` takes them.
TABLE1_GRID = [{"method": "softkd"}] + [
    {"method": method, "layers": layers, "beta": beta} for method, layers, beta in [
        ("spectral", "First1+Last1", 0.2), ("spectral", "First1", 0.2), ("spectral", "Last1", 0.2),
        ("spectral", "Last8", 0.2), ("spectral", "Last1", 0.1), ("projector", "First1", 0.2),
        ("projector", "Last1", 0.2), ("projector", "First1+Last1", 0.2)]]


def measured_process(command: list[str]):
    """Run one process to its end: its wall seconds (start-up included), its resource usage (os.wait4)
    and what it logged; a failure raises with the log's tail."""
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a full pipe would stall the process
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        log.seek(0)
        text = log.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {text[-2000:]}")
    return seconds, usage, text


def timed_process(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of one process, start-up included."""
    seconds, usage, _ = measured_process(command)
    return seconds, usage.ru_maxrss / 1024


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def bench_cohort(row, epochs: int = 20) -> list[dict]:
    """The digits grid's nine runs with augmentation on and the teacher cache off, as the workflow
    starts them (`dyn distill` processes, one thread each as distill.threads: 1): one cohort job
    against the nine runs one after another. Also checks that each student came out the same.
    `row` makes bench.py's table row."""
    import json

    import timm
    import torch
    import yaml

    import dyn.models  # noqa: F401  (the embedded architectures)
    from dyn.models import save_weights

    dyn = str(Path(sys.executable).with_name("dyn"))
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    train = {**config["train"], "augment": True, "teacher_cache": False}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        teacher = Path(tmp) / "cait.safetensors"
        save_weights(timm.create_model("cait_digits"), teacher)  # untrained: the timing is the same

        def command(runs, out):
            runs = [{**run, "epochs": epochs} for run in runs]
            return [dyn, *rule_args(["distill", "--runs", json.dumps(runs), "--teacher-arch", "cait_digits",
                                     "--teacher-checkpoint", teacher, "--student-arch", "deit_digits", "--runs-dir",
                                     Path(tmp) / out, "--evolution-every", "2", "--dataset",
                                     json.dumps(config["dataset"]), "--train", json.dumps(train), "--device", "cpu",
                                     "--threads", "1"])]

        serial = [timed_process(command([run], "serial")) for run in TABLE1_GRID]
        cohort_s, cohort_mib = timed_process(command(TABLE1_GRID, "cohort"))
        alone = sorted((Path(tmp) / "serial").glob("*/student.safetensors"))
        same = len(alone) == len(TABLE1_GRID) and all(
            same_weights(path, Path(tmp) / "cohort" / path.parent.name / path.name) for path in alone)
    serial_s, serial_mib = sum(s for s, _ in serial), max(m for _, m in serial)
    what = f"distill: digits grid, 9 runs x {epochs} epochs, augmentation on, teacher cache off, CPU, 1 thread"
    speedup = serial_s / cohort_s
    return [row(what + ": one cohort job", "the 9 runs one after another (9 dyn distill processes)",
                cohort_s, serial_s, speedup, "speed-up (baseline / ours)", ">= 2.5x", speedup >= 2.5,
                peak_mib_ours=round(cohort_mib), peak_mib_baseline=round(serial_mib), students_bit_identical=same)]
