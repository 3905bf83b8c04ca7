"""Resumable training state: everything needed to continue after a finished epoch, saved atomically.

One file per job holds an entry per member (each student of a cohort, or the one model trained):
the trainable module (student and projector), the optimiser, the scheduler, the EMA copy, the
finished epochs, the member's random stream, its history so far (log rows, snapshots) and the weights
of its best validation top-1 epoch (the state is their authority: a resumed job rewrites the run's
`*_best.safetensors` from it). The
data pipeline's randomness is a function of (seed, epoch) and needs no saving. The file lives
outside the runs' declared outputs, because Snakemake deletes those before it reruns a job. A
fingerprint of each member's configuration guards against resuming another configuration's state.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..files import first_line
from ..atomic import atomic_path

log = logging.getLogger("dyn")
PROGRESS_FILE = "progress.json"  # the running job's progress beside its state (`dyn status` reads it)
STATE_FORMAT = 2  # one entry per member of a cohort (1: one run, before cohorts)


@dataclass
class History:
    rows: list[dict] = field(default_factory=list)                   # one per finished epoch
    snapshots: list[tuple[int, dict]] = field(default_factory=list)  # (epoch, layer_profile)


def fingerprint_of(*parts) -> str:
    """A short stable digest of a run's configuration, to tell its state file from another run's."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _unwrapped(module):
    from timm.utils import unwrap_model

    return unwrap_model(module)


def _entry(member) -> dict:
    """One member's resumable state: weights, optimiser, scheduler, EMA, loss scale, random stream, history."""
    task = member.task
    entry = {
        "fingerprint": member.fingerprint,
        "epoch": member.done,
        "trainable": _unwrapped(task.get_trainable_module()).state_dict(),
        "optimizer": member.optimizer.state_dict(),
        "scheduler": member.scheduler.state_dict() if member.scheduler is not None else {},
        "rng": member.rng.state(),
        "rows": member.history.rows,
        "snapshots": [(e, {k: torch.from_numpy(v) for k, v in p.items()}) for e, p in member.history.snapshots],
    }
    if member.best is not None:  # {"epoch", "top1", "weights": {file stem: state dict} or None}
        entry["best"] = member.best
    if task.has_ema():
        entry["ema"] = task.get_trainable_module(ema=True).state_dict()
    if member.scaler is not None:  # float16 autocast: its loss scale and growth tracker
        entry["scaler"] = member.scaler.state_dict()
    return entry


def save_state(path: Path, members) -> None:
    """Every member's state in one file, written atomically after each epoch: a kill at any moment leaves
    the state of one whole epoch. A stopped member keeps the entry of its last good epoch (`member.kept`)."""
    entries = {}
    for member in members:
        entry = member.kept if member.stopped else _entry(member)
        if entry is not None:
            entries[member.name] = entry
    with atomic_path(path) as tmp:
        torch.save({"format": STATE_FORMAT, "members": entries}, tmp)


def _read(path: Path) -> dict | None:
    """The members' entries of a state file; None (the file moved aside to `<name>.corrupt`) if unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not ("members" in state or "fingerprint" in state):
            raise ValueError("not a dyn training state")
    except Exception as error:  # truncated by a full disk, damaged, another program's file
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        log.warning("cannot read the resume state %s (%s): moved it to %s and starting over", path,
                    first_line(error), aside)
        return None
    return state.get("members", {}) if state.get("format") == STATE_FORMAT else {}


def load_state(path: Path, members) -> None:
    """Give each member whose configuration (fingerprint) has an entry in the file that entry's state:
    weights, optimiser, scheduler, EMA, loss scale, random stream, finished epochs and history."""
    entries = _read(path)
    for member in members if entries is not None else []:
        entry = entries.get(member.name)
        if entry is None or entry.get("fingerprint", "") != member.fingerprint:
            log.warning("%s: no state of this configuration in %s; it starts from the beginning", member.name, path)
            continue
        task = member.task
        _unwrapped(task.get_trainable_module()).load_state_dict(entry["trainable"])
        member.optimizer.load_state_dict(entry["optimizer"])
        if member.scheduler is not None and entry["scheduler"]:
            member.scheduler.load_state_dict(entry["scheduler"])
        if "ema" in entry and task.has_ema():
            task.get_trainable_module(ema=True).load_state_dict(entry["ema"])
        if "scaler" in entry and member.scaler is not None:
            member.scaler.load_state_dict(entry["scaler"])
        member.rng.load(entry["rng"])
        member.done = int(entry["epoch"])
        member.history = History(list(entry["rows"]),
                                 [(e, {k: v.numpy() for k, v in p.items()}) for e, p in entry["snapshots"]])
        member.best = entry.get("best")
        if member.best is None and member.history.rows and member.keep_best is not None:
            # a state written before best weights were kept: the best epoch so far is known, its weights are not
            row = max(member.history.rows, key=lambda row: row["top1"])
            member.best = {"epoch": row["epoch"], "top1": row["top1"], "weights": None}
            log.warning("%s: the state in %s holds no best weights: the best-epoch files start with a better epoch "
                        "than %d", member.name, path, row["epoch"])


def kept_entry(path: Path | None, name: str) -> dict | None:
    """`name`'s entry in the state file as it is on disk (its last good epoch), or None."""
    if path is None or not path.is_file():
        return None
    entries = _read(path)
    return (entries or {}).get(name)


def progress_path(state_path: Path | str) -> Path:
    """The job's progress sidecar: `progress.json` in its state's folder (one folder per job)."""
    return Path(state_path).parent / PROGRESS_FILE


def clear_state(state_path: Path | None) -> None:
    """Remove a finished job's state and its progress sidecar: a later forced rerun then starts from
    scratch, as asked, and `dyn status` lists only jobs that run or have not finished."""
    if state_path is not None:
        Path(state_path).unlink(missing_ok=True)
        progress_path(state_path).unlink(missing_ok=True)
