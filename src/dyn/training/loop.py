"""The training loop: one epoch of a timm task, then the end-of-epoch step (evaluation, log row,
evolution snapshot, resume state), as timm's train.py splits train_one_epoch from the rest.

Used both to train a model on its own (`dyn fetch` with weights: train, a ClassificationTask)
and to distil a student (`dyn distill`, a LayerDistillationTask), in one process or data-parallel
under torchrun. On CUDA the forward passes run under autocast (bfloat16, or float16 with a gradient
scaler); on the CPU everything is float32.
"""
from __future__ import annotations

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
from .state import History, load_state, save_state

log = logging.getLogger("dyn")


@dataclass
class Precision:
    """Autocast of the forward passes and, for float16, the gradient scaler that keeps its gradients
    from underflowing; both off (float32) unless enabled."""

    device_type: str = "cpu"
    dtype: torch.dtype = torch.bfloat16
    enabled: bool = False
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def of(cls, device: torch.device, amp: bool, dtype: str = "bfloat16") -> "Precision":
        """Autocast in `dtype` on CUDA when `amp`; float32 on the CPU."""
        enabled = amp and device.type == "cuda"
        scaler = torch.amp.GradScaler(device.type) if enabled and dtype == "float16" else None
        return cls(device.type, getattr(torch, dtype), enabled, scaler)

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)  # skipped where the scaled gradients overflowed
        self.scaler.update()


@dataclass
class Loop:
    """What stays the same from epoch to epoch of one training run."""

    task: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train: Batches
    val: Batches
    epochs: int
    world: World = World()
    precision: Precision = field(default_factory=Precision)
    log_interval: int = 50
    progress: bool = False
    state_path: Path | None = None
    fingerprint: str = ""
    snapshot: Callable[[nn.Module], dict] | None = None
    snapshot_every: int = 0


def fit(task, optimizer, scheduler, train: Batches, val: Batches, epochs: int, world: World = World(),
        snapshot: Callable[[nn.Module], dict] | None = None, snapshot_every: int = 0,
        state_path: Path | None = None, fingerprint: str = "", precision: Precision = Precision(),
        log_interval: int = 50, progress: bool | None = None) -> History:
    """Train `task` for `epochs`, resuming from `state_path` when it holds a finished epoch of this run.

    A snapshot of the eval model is taken before the first epoch, every `snapshot_every` epochs and
    after the last. A state saved under another `fingerprint` is ignored. A non-finite loss raises
    NonFiniteLoss naming the epoch and step; the state on disk is then still the last good one.
    """
    if progress is None:
        progress = sys.stderr.isatty() and world.is_main
    loop = Loop(task, optimizer, scheduler, train, val, epochs, world, precision, log_interval, progress,
                Path(state_path) if state_path else None, fingerprint, snapshot, snapshot_every)
    start_epoch, history = 0, History()
    if loop.state_path is not None and loop.state_path.is_file():
        restored = load_state(loop.state_path, task, optimizer, scheduler, fingerprint, precision.scaler)
        if restored is not None:
            start_epoch, history = restored
            log.info("resumed from %s after epoch %d of %d", state_path, start_epoch, epochs)
    if snapshot is not None and world.is_main and start_epoch == 0 and not history.snapshots:
        history.snapshots.append((0, snapshot(task.get_eval_model())))
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        losses, images = train_one_epoch(loop, epoch)
        end_of_epoch(loop, epoch, losses, images, time.perf_counter() - started, history)
    return history


def train_one_epoch(loop: Loop, epoch: int) -> tuple[dict[str, float], float]:
    """One pass over the training batches; returns the mean of each loss part over every process's
    images, and how many images that was. Loss parts are summed on the device: the host reads them
    only every `log_interval` steps (progress bar, non-finite check) and at the end."""
    task, optimizer, device = loop.task, loop.optimizer, loop.world.device
    task.train()
    started = time.perf_counter()
    sums: dict[str, torch.Tensor] = {}
    n_images = torch.zeros((), dtype=torch.float64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    steps_per_epoch = len(loop.train)
    bar = tqdm(loop.train.epoch(epoch), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{loop.epochs}",
               unit="batch", disable=not loop.progress, leave=False)
    for step, (images, labels, index) in enumerate(bar):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with loop.precision.autocast():
            out = task(images, labels, index) if _takes_index(task) else task(images, labels)
        optimizer.zero_grad(set_to_none=True)
        loop.precision.backward_and_step(out["loss"], optimizer)
        update = epoch * steps_per_epoch + step + 1
        if loop.scheduler is not None:
            loop.scheduler.step_update(num_updates=update)
        task.update_ema(step=update)
        batch = labels.shape[0]
        for name, value in out.items():
            if name != "output":
                value = value.detach().double() * batch
                sums[name] = sums[name] + value if name in sums else value
        n_images += batch
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(out["loss"].detach()),
                                torch.full_like(first_bad, step + 1), first_bad)
        if (step + 1) % loop.log_interval == 0:
            _stop_if_non_finite(first_bad, loop, epoch)
            if loop.progress:
                seen = float(n_images)
                bar.set_postfix({**{k: f"{float(v) / seen:.4g}" for k, v in sums.items()},
                                 "img/s": f"{seen / (time.perf_counter() - started):.0f}"})
    _stop_if_non_finite(first_bad, loop, epoch)
    names = sorted(sums)
    totals = all_reduce_sum(torch.stack([sums[k] for k in names] + [n_images]), loop.world).tolist()
    return {k: v / totals[-1] for k, v in zip(names, totals)}, totals[-1]


def end_of_epoch(loop: Loop, epoch: int, losses: dict[str, float], images: float, seconds: float,
                 history: History) -> None:
    """Evaluate, log the epoch's row, take a snapshot when one is due, save the resume state."""
    task, world, done = loop.task, loop.world, epoch + 1
    row = {"epoch": done, **losses, **evaluate(task.get_eval_model(), loop.val, world.device, world, loop.precision)}
    if task.has_ema():
        ema = evaluate(task.get_eval_model(ema=True), loop.val, world.device, world, loop.precision)
        row.update({f"ema_{k}": v for k, v in ema.items()})
    row.update(lr=loop.optimizer.param_groups[0]["lr"], seconds=seconds, images_per_s=images / seconds)
    history.rows.append(row)
    if world.is_main:
        log.info("epoch %d/%d %s", done, loop.epochs, " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
    due = done == loop.epochs or (loop.snapshot_every and done % loop.snapshot_every == 0)
    if loop.snapshot is not None and world.is_main and due:
        history.snapshots.append((done, loop.snapshot(task.get_eval_model())))
    if loop.state_path is not None and world.is_main:
        save_state(loop.state_path, task, loop.optimizer, loop.scheduler, done, history, loop.fingerprint,
                   loop.precision.scaler)


def evaluate(model: nn.Module, batches: Batches, device: torch.device, world: World = World(),
             precision: Precision = Precision()) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) and mean cross-entropy of `model` over a split (all processes)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss, count
    with torch.inference_mode(), precision.autocast():
        for images, labels, _ in batches.epoch(0):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits = model(images).float()
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
            sums += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(),
                                 nn.functional.cross_entropy(logits, labels, reduction="sum"),
                                 torch.tensor(labels.shape[0], device=device)]).double()
    correct1, correct5, loss, count = all_reduce_sum(sums, world).tolist()
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "val_loss": loss / count}


def _stop_if_non_finite(first_bad: torch.Tensor, loop: Loop, epoch: int) -> None:
    """Raise NonFiniteLoss if a step's loss was not finite on any process (a host sync)."""
    flagged = torch.where(first_bad < 0, torch.full_like(first_bad, 2**62), first_bad)
    if loop.world.distributed:
        import torch.distributed as dist

        dist.all_reduce(flagged, op=dist.ReduceOp.MIN)
    step = int(flagged)
    if step != 2**62:
        kept = f"; the last good state (after epoch {epoch}) is kept in {loop.state_path}" if loop.state_path else ""
        raise NonFiniteLoss(f"non-finite loss in epoch {epoch + 1} at step {step}{kept}")


def _takes_index(task) -> bool:
    return getattr(task, "teacher_cache", None) is not None
