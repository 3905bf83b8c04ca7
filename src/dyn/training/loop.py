"""The training loop: one epoch of timm tasks, then the end-of-epoch step (evaluation, log rows,
evolution snapshots, resume state), as timm's train.py splits train_one_epoch from the rest.

The loop trains a list of members on one data stream: a cohort of students that share the
teacher's forward (`dyn distill`, LayerDistillationTasks), or one model on its own (`dyn fetch`
with weights: train, a ClassificationTask). Each member steps on every batch in turn, drawing
its randomness from its own stream, so it trains exactly as it would alone. One process or
data-parallel under torchrun (each member its own DDP module). On CUDA the forward passes run under
autocast (bfloat16, or float16 with a gradient scaler); on the CPU everything is float32.

While it trains, the main process says where it is: one `progress <job>: ...` line per job in the log
every `log_interval` steps and at each epoch's end, the same in `progress.json` beside the state file
(`dyn status` reads it), and each member's live files (`Loop.live`: log rows, snapshots, best weights,
TensorBoard) at each epoch's end. `DYN_LIVE=0` in the environment turns the progress lines, the sidecar
and the live files off (the run directory is then written only at the end), for `make bench`'s `live`
section.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from tqdm import tqdm

from ..errors import NonFiniteLoss
from .batches import Batches
from .distributed import World, all_reduce_sum
from .evaluation import evaluate_all
from .precision import Precision, backward_and_step
from .rng import RngStream
from .state import History, kept_entry, load_state, progress_path, save_state
from .watch import Progress, above_the_bar, live_enabled

log = logging.getLogger("dyn")


@dataclass
class Member:
    """One model the loop trains: a student of a cohort, or the one model of a plain run."""

    name: str                        # the run id (or model key): log lines, the state file, errors
    task: nn.Module                  # a timm task: task(images, labels[, teacher outputs]) -> {"loss", ...}
    optimizer: torch.optim.Optimizer
    scheduler: object
    rng: RngStream                   # its own initialisation, dropout and drop path draws
    epochs: int                      # its own epoch count: a cohort's members may stop at different epochs
    fingerprint: str = ""            # its configuration: a state entry of another one is not resumed
    scaler: torch.amp.GradScaler | None = None
    history: History = field(default_factory=History)
    done: int = 0                    # finished epochs
    stopped: str | None = None       # why it stopped early (a non-finite loss)
    kept: dict | None = None         # a stopped member's last good state entry
    # The modules whose weights to keep from the best validation top-1 epoch, by name (e.g. "student",
    # "projector"), or None to keep none; `best`: {"epoch", "top1", "weights": {name: state dict}}.
    keep_best: Callable[[nn.Module], dict[str, nn.Module]] | None = None
    best: dict | None = None


@dataclass
class Loop:
    """What stays the same from epoch to epoch of one training job.

    `teacher`: the shared forward of a cohort, (images, sample indices) -> what each task takes as
    its third argument, run once per batch for every member; None for tasks without one.
    """

    members: list[Member]
    train: Batches
    val: Batches
    world: World = World()
    precision: Precision = field(default_factory=Precision)
    teacher: Callable | None = None
    log_interval: int = 50
    progress: bool | None = None     # a progress bar; None: when stderr is a terminal (main process)
    state_path: Path | None = None
    snapshot: Callable[[nn.Module], dict] | None = None
    snapshot_every: int = 0
    # Per member name, what writes its files while it trains (main process): start(member) once before
    # the first epoch (a resumed member's files from its history), write(member, snapshot, improved) at
    # each epoch's end after the state is saved, close() at the end.
    live: dict | None = None
    name: str | None = None          # the job in progress lines; None: the state's folder, or the one member
    noun: str = "model"              # what the members are, in progress lines
    watch_seconds: float = 0.0       # measured: the time spent on progress lines, progress.json and live files

    @contextlib.contextmanager
    def watching(self):
        """Count the time of a progress report or a live write in `watch_seconds`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.watch_seconds += time.perf_counter() - started


def fit(loop: Loop) -> list[Member]:
    """Train every member for its epochs, each resuming from the state file where it holds an entry of
    its configuration; members at different epochs train side by side on the same epoch's batches (epoch
    e's batches are the same for every member), each stopping after its own last epoch.

    A snapshot of each eval model is taken before its first epoch, every `snapshot_every` epochs and
    after the last. A member whose loss is not finite stops (`member.stopped` says where, its last
    good state stays in the file); the others go on. The caller decides what a stop means.
    """
    if loop.progress is None:
        loop.progress = sys.stderr.isatty() and loop.world.is_main
    if loop.state_path is not None and loop.state_path.is_file():
        load_state(loop.state_path, loop.members)
        for member in loop.members:
            if member.done:
                log.info("%s: resumed from %s after epoch %d of %d", member.name, loop.state_path, member.done,
                         member.epochs)
    for member in loop.members:
        if loop.snapshot is not None and loop.world.is_main and member.done == 0 and not member.history.snapshots:
            member.history.snapshots.append((0, loop.snapshot(member.task.get_eval_model())))
    live = loop.live if loop.world.is_main and loop.live else {}
    reporter = None
    if loop.world.is_main and live_enabled():
        name = loop.name or (loop.state_path.parent.name if loop.state_path is not None
                             else loop.members[0].name if len(loop.members) == 1 else "job")
        reporter = Progress(loop, name, progress_path(loop.state_path) if loop.state_path is not None else None)
    fit_started = time.perf_counter()
    try:
        with above_the_bar(loop.progress):
            for member in loop.members:  # a resumed member's files from its state (Snakemake deleted the outputs)
                if member.name in live:
                    with loop.watching():
                        live[member.name].start(member)
            last = max(m.epochs for m in loop.members)
            for epoch in range(min(m.done for m in loop.members), last):
                active = [m for m in loop.members if m.done <= epoch < m.epochs and m.stopped is None]
                if not active:  # all stopped, finished, or resumed past this epoch
                    continue
                started = time.perf_counter()
                losses, images = train_one_epoch(loop, active, epoch, reporter)
                trained = time.perf_counter()
                end_of_epoch(loop, active, epoch, losses, images, trained - started)
                if reporter is not None:
                    reporter.end_seconds = time.perf_counter() - trained
                    with loop.watching():
                        reporter.report(epoch, len(loop.train), images, trained - started, len(active), ended=True)
    finally:
        with loop.watching():
            for writer in live.values():
                writer.close()
    if reporter is not None or live:
        log.info("%s: watching it (progress lines, progress.json, live run files, TensorBoard) took %.3f s of the "
                 "%.3f s it trained", reporter.name if reporter is not None else "the job", loop.watch_seconds,
                 time.perf_counter() - fit_started)
    return loop.members


def _train_step(loop: Loop, member: Member, images, labels, teacher, update: int) -> dict[str, torch.Tensor]:
    """One optimiser step of one member, drawing from its own random stream."""
    with member.rng.active():
        with loop.precision.autocast():
            out = member.task(images, labels) if teacher is None else member.task(images, labels, teacher)
        member.optimizer.zero_grad(set_to_none=True)
        backward_and_step(out["loss"], member.optimizer, member.scaler)
    if member.scheduler is not None:
        member.scheduler.step_update(num_updates=update)
    member.task.update_ema(step=update)
    return out


def train_one_epoch(loop: Loop, active: list[Member], epoch: int,
                    reporter: Progress | None = None) -> tuple[dict[str, dict[str, float]], float]:
    """One pass over the training batches, every active member stepping on each batch; returns per member
    the mean of each loss part over every process's images, and how many images that was. Loss parts are
    summed on the device: the host reads them only every `log_interval` steps (progress line and bar,
    non-finite check) and at the end."""
    device = loop.world.device
    for member in active:
        member.task.train()
    sums: dict[str, dict[str, torch.Tensor]] = {m.name: {} for m in active}
    first_bad = {m.name: torch.full((), -1, dtype=torch.int64, device=device) for m in active}
    n_images = torch.zeros((), dtype=torch.float64, device=device)
    host_images = 0  # this process's images, counted on the host: the progress line reads no device value
    started = time.perf_counter()
    steps_per_epoch = len(loop.train)
    bar = tqdm(loop.train.epoch(epoch), total=steps_per_epoch,
               desc=f"epoch {epoch + 1}/{max(m.epochs for m in active)}",
               unit="batch", disable=not loop.progress, leave=False)
    for step, (images, labels, index) in enumerate(bar):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        teacher = None
        if loop.teacher is not None:
            with loop.precision.autocast():
                teacher = loop.teacher(images, index)  # once for the whole cohort
        for member in [m for m in active if m.stopped is None]:
            out = _train_step(loop, member, images, labels, teacher, epoch * steps_per_epoch + step + 1)
            for name, value in out.items():
                if name != "output":
                    value = value.detach().double() * labels.shape[0]
                    sums[member.name][name] = sums[member.name][name] + value if name in sums[member.name] else value
            bad = first_bad[member.name]
            first_bad[member.name] = torch.where((bad < 0) & ~torch.isfinite(out["loss"].detach()),
                                                 torch.full_like(bad, step + 1), bad)
        n_images += labels.shape[0]
        host_images += labels.shape[0]
        if (step + 1) % loop.log_interval == 0:
            _stop_non_finite(loop, active, first_bad, epoch)  # a host sync: the time below is the steps' own
            if reporter is not None and step + 1 < steps_per_epoch:  # the epoch's end reports after evaluation
                with loop.watching():
                    reporter.report(epoch, step + 1, host_images * loop.world.size, time.perf_counter() - started,
                                    sum(1 for m in active if m.stopped is None))
            if loop.progress and active[0].stopped is None:
                seen = float(n_images)
                bar.set_postfix({"loss": f"{float(sums[active[0].name]['loss']) / seen:.4g}",
                                 "img/s": f"{seen / (time.perf_counter() - started):.0f}"})
    _stop_non_finite(loop, active, first_bad, epoch)
    return _mean_losses(loop, [m for m in active if m.stopped is None], sums, n_images)


def _mean_losses(loop: Loop, members: list[Member], sums, n_images) -> tuple[dict[str, dict[str, float]], float]:
    """Each member's loss parts averaged over all processes' images, and their count, in one all-reduce."""
    keys = [(m.name, k) for m in members for k in sorted(sums[m.name])]
    *totals, images = all_reduce_sum(torch.stack([sums[name][k] for name, k in keys] + [n_images]),
                                     loop.world).tolist()
    losses: dict[str, dict[str, float]] = {m.name: {} for m in members}
    for (name, key), total in zip(keys, totals):
        losses[name][key] = total / images
    return losses, images


def end_of_epoch(loop: Loop, active: list[Member], epoch: int, losses: dict[str, dict[str, float]], images: float,
                 seconds: float) -> None:
    """Evaluate every member still training in one pass over the validation split, log each one's row,
    keep the weights of a new best top-1, take the snapshots that are due, save the state of all members,
    then write each member's live files (after the state: a resumed job rewrites them from it)."""
    world, done = loop.world, epoch + 1
    going = [m for m in active if m.stopped is None]
    models = [m.task.get_eval_model() for m in going] + [m.task.get_eval_model(ema=True) for m in going
                                                         if m.task.has_ema()]
    scores = iter(evaluate_all(models, loop.val, world.device, world, loop.precision))
    rows = {m.name: {"epoch": done, **losses[m.name], **next(scores)} for m in going}
    for member in [m for m in going if m.task.has_ema()]:
        rows[member.name].update({f"ema_{k}": v for k, v in next(scores).items()})
    snapped, improved = set(), set()
    for member in going:
        row = rows[member.name]
        row.update(lr=member.optimizer.param_groups[0]["lr"], seconds=seconds,
                   images_per_s=images / seconds)
        member.history.rows.append(row)
        member.done = done
        if world.is_main:
            log.info("%s: epoch %d/%d %s", member.name, done, member.epochs,
                     " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
        if world.is_main and member.keep_best is not None and (member.best is None
                                                               or row["top1"] > member.best["top1"]):
            member.best = {"epoch": done, "top1": row["top1"], "weights": _weights(member)}
            improved.add(member.name)
        due = done == member.epochs or (loop.snapshot_every and done % loop.snapshot_every == 0)
        if loop.snapshot is not None and world.is_main and due:
            member.history.snapshots.append((done, loop.snapshot(member.task.get_eval_model())))
            snapped.add(member.name)
    live = loop.live if world.is_main and loop.live else {}
    if loop.state_path is not None and world.is_main:
        save_state(loop.state_path, loop.members)
    for member in [m for m in going if m.name in live]:
        with loop.watching():
            live[member.name].write(member, member.name in snapped, member.name in improved)


def _weights(member: Member) -> dict[str, dict[str, torch.Tensor]]:
    """A copy on the CPU of the weights `member.keep_best` names (the model as it is now)."""
    return {name: {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
            for name, module in member.keep_best(member.task).items()}


def _stop_non_finite(loop: Loop, active: list[Member], first_bad: dict, epoch: int) -> None:
    """Stop each member whose loss was not finite at some step on any process (one host sync for all):
    it keeps its last good state, the others go on."""
    going = [m for m in active if m.stopped is None]
    if not going:
        return
    flagged = torch.stack([first_bad[m.name] for m in going])
    flagged = torch.where(flagged < 0, torch.full_like(flagged, 2**62), flagged)
    if loop.world.distributed:
        import torch.distributed as dist

        dist.all_reduce(flagged, op=dist.ReduceOp.MIN)
    for member, step in zip(going, flagged.tolist()):
        if step == 2**62:
            continue
        member.stopped = f"non-finite loss in epoch {epoch + 1} at step {step}"
        member.kept = kept_entry(loop.state_path, member.name) if loop.world.is_main else None
        kept = (f"; its last good state (after epoch {member.kept['epoch']}) is kept in {loop.state_path}"
                if member.kept is not None else "")
        log.error("%s: stopped: %s%s", member.name, member.stopped, kept)


def raise_if_stopped(members: list[Member]) -> None:
    """NonFiniteLoss naming every member that stopped early."""
    stopped = [m for m in members if m.stopped is not None]
    if stopped:
        raise NonFiniteLoss("; ".join(f"{m.name}: {m.stopped}" for m in stopped))
