"""GPU slots for concurrent jobs on one machine: one lock file per visible GPU.

Snakemake's `--resources gpu=N` caps how many GPU jobs run at once but does not say which GPU each
should use. A job takes free slots here (an exclusive `flock` on `<pool>/gpu-<id>.lock`), runs its
command with CUDA_VISIBLE_DEVICES set to them, and holds the locks for the command's life. The
command inherits the locked descriptors, so the slot stays taken while it runs even if the
launcher dies, and the kernel frees it when the last holder exits, however it exits.

Under SLURM the scheduler has already given the job its GPUs (and CUDA_VISIBLE_DEVICES), so no
pool is used there.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

from ..errors import UserError

log = logging.getLogger("dyn")

FAKE_SLOTS_ENV = "DYN_GPU_SLOTS"  # a number of pretend GPUs, for tests on machines without any


def default_pool() -> Path:
    return Path(os.environ.get("DYN_GPU_POOL", Path(tempfile.gettempdir()) / f"dyn-gpu-slots-{os.getuid()}"))


def visible_gpus() -> list[str]:
    """The ids CUDA_VISIBLE_DEVICES would take for each usable GPU (empty on a machine without)."""
    if os.environ.get(FAKE_SLOTS_ENV):
        return [str(i) for i in range(int(os.environ[FAKE_SLOTS_ENV]))]
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def try_acquire(count: int, pool: Path, gpus: Sequence[str]) -> tuple[list[str], list[int]] | None:
    """Lock `count` free slots now, or lock none and return None."""
    pool.mkdir(parents=True, exist_ok=True)
    taken: list[tuple[str, int]] = []
    for gpu in gpus:
        fd = os.open(pool / f"gpu-{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        taken.append((gpu, fd))
        if len(taken) == count:
            return [g for g, _ in taken], [fd for _, fd in taken]
    for _, fd in taken:
        os.close(fd)
    return None


def acquire(count: int, pool: Path, gpus: Sequence[str], poll_seconds: float = 1.0) -> tuple[list[str], list[int]]:
    """Wait until `count` slots are free and lock them; returns (gpu ids, lock descriptors)."""
    if count > len(gpus):
        raise UserError(f"a job asks for {count} GPU(s) but only {len(gpus)} are visible ({','.join(gpus) or 'none'})")
    while (got := try_acquire(count, pool, gpus)) is None:
        time.sleep(poll_seconds)
    return got


def run_on_free_gpus(count: int, command: Sequence[str], pool: Path | None = None) -> int:
    """Run `command` on `count` free GPUs (CUDA_VISIBLE_DEVICES set); returns its exit code."""
    env = dict(os.environ)
    fds: list[int] = []
    gpus = visible_gpus()
    if count == 0 or not gpus:
        log.info("running without a GPU slot (%s)", "none asked" if count == 0 else "no GPU visible")
    elif "SLURM_JOB_ID" in os.environ:
        log.info("SLURM job %s: using its GPUs %s", os.environ["SLURM_JOB_ID"], ",".join(gpus))
    else:
        pool = pool or default_pool()
        ids, fds = acquire(count, pool, gpus)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
        log.info("GPU slot(s) %s of %s (pool %s)", ",".join(ids), ",".join(gpus), pool)
    try:
        child = subprocess.Popen(list(command), env=env, pass_fds=fds)
    except FileNotFoundError:
        raise UserError(f"command not found: {command[0]}") from None
    # Pass termination on, so a cancelled job stops its training too.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    code = child.wait()
    for fd in fds:
        os.close(fd)
    return code
