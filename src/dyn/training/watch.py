"""What a training job shows while it runs, on its main process: a `progress <job>: ...` line per job in
the log every `log_interval` steps and at each epoch's end, the same in `progress.json` beside the state
file (`dyn status` reads it), and each run's live files (`RunFiles`: log rows, snapshots, best weights,
TensorBoard) at each epoch's end. `DYN_LIVE=0` in the environment turns the progress lines, the sidecar
and the live files off (the run directory is then written only at the end), for `make bench`'s `live`
section.

Nothing here changes what a student learns: a finished run's reuse key leaves this module out
(finished.NOT_TRAINING_CODE), so changing how a job is watched retrains nothing.
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import functools
import io
import logging
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..models import save_weights
from ..atomic import write_text
from .evolution import write_evolution

if TYPE_CHECKING:
    from .loop import Loop, Member

log = logging.getLogger("dyn")


def live_enabled() -> bool:
    """Progress lines, progress.json and live run files: on unless DYN_LIVE=0 (make bench's `live` section)."""
    return os.environ.get("DYN_LIVE", "1") != "0"


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


class Progress:
    """Where a job is, on the main process: one line per job (`progress <job>: epoch 3/20 step 12/23 |
    1,234 img/s | epoch ETA 0:00:09 | job ETA 0:02:41 (11 students)`) every `log_interval` steps and at
    each epoch's end, the same in `path` (progress.json, written atomically) where the loop has a state.

    The ETAs come from the measured speed: the seconds per step so far in this epoch (the last epoch's
    at its end) times the steps left over every remaining epoch of the longest member, each epoch
    weighed by how many members still train in it, plus per epoch the last measured end of epoch
    (evaluation, snapshots, state; none before the first epoch has ended)."""

    def __init__(self, loop: "Loop", name: str, path: Path | None):
        self.loop, self.name, self.path = loop, name, path
        self.steps = len(loop.train)
        self.last = max(m.epochs for m in loop.members)
        self.step_seconds = 0.0  # measured
        self.end_seconds = 0.0   # the last end of epoch, measured

    def _going(self, epoch: int) -> int:
        return sum(1 for m in self.loop.members if m.stopped is None and m.done <= epoch < m.epochs)

    def report(self, epoch: int, step: int, images: float, seconds: float, training: int, ended: bool = False) -> None:
        """`epoch` 0-based; `step` steps done in it; `images` over all processes in it; `seconds` since it
        started; `training` how many members train in it."""
        if step:
            self.step_seconds = seconds / step
        epoch_seconds = self.steps * self.step_seconds + self.end_seconds
        eta_epoch = 0.0 if ended else (self.steps - step) * self.step_seconds + self.end_seconds
        later = sum(self._going(e) for e in range(epoch + 1, self.last)) / max(training, 1)
        eta_job = eta_epoch + later * epoch_seconds
        speed = images / seconds if seconds > 0 else 0.0
        noun = self.loop.noun if training == 1 else self.loop.noun + "s"
        log.info("progress %s: epoch %d/%d step %d/%d | %s img/s | epoch ETA %s | job ETA %s (%d %s)", self.name,
                 epoch + 1, self.last, step, self.steps, f"{speed:,.0f}", _clock(eta_epoch), _clock(eta_job),
                 training, noun)
        if self.path is not None:
            from ..atomic import write_json

            write_json(self.path, {
                "cohort": self.name, "host": platform.node(), "pid": os.getpid(),
                "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "epoch": epoch + 1, "epochs": self.last, "step": step, "steps": self.steps,
                "images_per_s": speed, "eta_epoch_s": eta_epoch, "eta_job_s": eta_job,
                "members": {m.name: _member_progress(m) for m in self.loop.members}})


def _member_progress(member: Member) -> dict:
    rows = member.history.rows
    best = max(rows, key=lambda row: row["top1"]) if rows else None  # the first of equals, as summary.json's
    return {"done": member.done, "epochs": member.epochs, "last_top1": rows[-1]["top1"] if rows else None,
            "best_top1": best["top1"] if best else None, "best_epoch": best["epoch"] if best else None,
            "stopped": member.stopped}


def above_the_bar(bar: bool):
    """With a progress bar (a terminal), log lines (progress lines among them) print above it, not through it."""
    if not bar:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def write_log_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    keys = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def best_modules(task) -> dict[str, torch.nn.Module]:
    """What a run keeps of its best epoch, by file stem: the student (and the projector where there is one)."""
    projector = task.projector()
    return {"student": task.get_eval_model(), **({"projector": projector} if projector is not None else {})}


def write_best(out_dir: Path, best: dict | None) -> None:
    """`<stem>_best.safetensors` of each module kept from the best epoch (none from a state that had no weights)."""
    for stem, weights in ((best or {}).get("weights") or {}).items():
        save_weights(weights, out_dir / f"{stem}_best.safetensors", digest=False)


# TensorBoard tags of a log row's columns; the others are loss parts (loss/<part>).
_TAGS = {"top1": "val/top1", "top5": "val/top5", "val_loss": "val/loss", "lr": "train/lr",
         "images_per_s": "train/images_per_s", "seconds": "train/epoch_seconds"}


@functools.cache
def _summary_writer():
    """torch's SummaryWriter, or None (one warning) where tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # tensorboard is a dependency; an environment installed without it lacks it
        log.warning("no TensorBoard curves (%s): pip install tensorboard, or set train.tensorboard: false", error)
        return None
    return SummaryWriter


class RunFiles:
    """One run's files while it trains (main process; `Loop.live`): log.csv gains its row at each epoch's
    end (the whole file rewritten atomically: a reader never sees a torn row), evolution.nc is rewritten at
    each snapshot, `*_best.safetensors` when the best validation top-1 improves; with `tensorboard`, the
    scalars of each epoch and the per-layer entropy and magnitude of each snapshot go to
    `<run dir>/tensorboard/` (step = epoch), flushed at each epoch's end. All after the state is saved and
    from the member's history, which a resumed job has from its state: at start it rewrites them all from
    it (Snakemake deleted the declared outputs; a kill between the state and a file could have left them
    disagreeing), the TensorBoard folder too, so that a resumed run's curves hold each epoch once.
    `live` False (DYN_LIVE=0): TensorBoard only; the run's files are written at its end."""

    def __init__(self, out_dir: Path, attrs: dict, tensorboard: bool, live: bool = True):
        self.out_dir, self.attrs, self.tensorboard, self.live = out_dir, attrs, tensorboard, live
        self.writer = None

    def start(self, member: Member) -> None:
        if self.live:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if member.history.rows:
                write_log_csv(self.out_dir / "log.csv", member.history.rows)
            else:  # from the beginning: no file of an earlier attempt stays to be read as this one's
                (self.out_dir / "log.csv").unlink(missing_ok=True)
            if member.history.snapshots:
                write_evolution(self.out_dir / "evolution.nc", member.history.snapshots, self.attrs)
            if member.best is None:
                for stale in self.out_dir.glob("*_best.safetensors"):
                    stale.unlink()
            write_best(self.out_dir, member.best)
        if self.tensorboard and _summary_writer() is not None:
            import shutil

            folder = self.out_dir / "tensorboard"
            shutil.rmtree(folder, ignore_errors=True)  # rewritten from the state: each epoch once
            self.writer = _summary_writer()(str(folder))
            for row in member.history.rows:
                self._row(row)
            for epoch, profile in member.history.snapshots:
                self._profile(epoch, profile)
            self.writer.flush()
            if member.done >= member.epochs:
                self.close()

    def _row(self, row: dict) -> None:
        for key, value in row.items():
            if key != "epoch":
                tag = _TAGS.get(key) or (f"val_ema/{key[4:]}" if key.startswith("ema_") else f"loss/{key}")
                self.writer.add_scalar(tag, value, row["epoch"])

    def _profile(self, epoch: int, profile: dict) -> None:
        for name, values in profile.items():
            for layer, value in enumerate(values):
                self.writer.add_scalar(f"{name}/block_{layer:02d}", float(value), epoch)

    def write(self, member: Member, snapshot: bool, improved: bool) -> None:
        """After an epoch's end and the state's save: its row, its snapshot, a new best."""
        if self.live:
            write_log_csv(self.out_dir / "log.csv", member.history.rows)
            if snapshot:
                write_evolution(self.out_dir / "evolution.nc", member.history.snapshots, self.attrs)
            if improved:
                write_best(self.out_dir, member.best)
        if self.writer is not None:
            self._row(member.history.rows[-1])
            if snapshot:
                self._profile(*member.history.snapshots[-1])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
