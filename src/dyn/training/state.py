"""Resumable training state: everything needed to continue after a finished epoch, saved atomically.

The state holds the trainable module (student and projector), the optimiser, the scheduler, the
EMA copy, the epoch, every RNG state, and the history so far (log rows, snapshots). It lives
outside the run's declared outputs, because Snakemake deletes those before it reruns a job. A
fingerprint of the run's configuration guards against resuming another configuration's state.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..files import first_line
from ..workflow.atomic import atomic_path

log = logging.getLogger("dyn")


@dataclass
class History:
    rows: list[dict] = field(default_factory=list)                   # one per finished epoch
    snapshots: list[tuple[int, dict]] = field(default_factory=list)  # (epoch, layer_profile)


def fingerprint_of(*parts) -> str:
    """A short stable digest of a run's configuration, to tell its state file from another run's."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrapped(module):
    from timm.utils import unwrap_model

    return unwrap_model(module)


def save_state(path: Path, task, optimizer, scheduler, epoch: int, history: History, fingerprint: str = "",
               scaler=None) -> None:
    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "trainable": _unwrapped(task.get_trainable_module()).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "rng": _rng_state(),
        "rows": history.rows,
        "snapshots": [(e, {k: torch.from_numpy(v) for k, v in p.items()}) for e, p in history.snapshots],
    }
    if task.has_ema():
        state["ema"] = task.get_trainable_module(ema=True).state_dict()
    if scaler is not None:  # float16 autocast: its loss scale and growth tracker
        state["scaler"] = scaler.state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, task, optimizer, scheduler, fingerprint: str = "",
               scaler=None) -> tuple[int, History] | None:
    """Restore a state file; returns (finished epochs, history), or None if it is another run's state or
    cannot be read: then the run starts over, an unreadable file moved aside to `<name>.corrupt`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "fingerprint" not in state:
            raise ValueError("not a dyn training state")
    except Exception as error:  # truncated by a full disk, damaged, another program's file
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        log.warning("cannot read the resume state %s (%s): moved it to %s and starting over", path,
                    first_line(error), aside)
        return None
    if state.get("fingerprint", "") != fingerprint:
        log.warning("ignoring %s: it was saved by a run with another configuration", path)
        return None
    _unwrapped(task.get_trainable_module()).load_state_dict(state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"]:
        scheduler.load_state_dict(state["scheduler"])
    if "ema" in state and task.has_ema():
        task.get_trainable_module(ema=True).load_state_dict(state["ema"])
    if "scaler" in state and scaler is not None:
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    history = History(list(state["rows"]), [(e, {k: v.numpy() for k, v in p.items()}) for e, p in state["snapshots"]])
    return int(state["epoch"]), history


def clear_state(state_path: Path | None) -> None:
    """Remove a finished run's state: a later forced rerun then starts from scratch, as asked."""
    if state_path is not None:
        Path(state_path).unlink(missing_ok=True)
