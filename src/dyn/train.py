"""The training loop: epochs of a timm task, evaluation, per-epoch log, evolution snapshots, resume state.

Used both to train a model on its own (`dyn fetch` with weights: train, a ClassificationTask)
and to distil a student (`dyn distill`, a LayerDistillationTask), in one process or data-parallel
under torchrun. On CUDA the forward passes run under bf16 autocast; on CPU everything is float32.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import metrics
from .distributed import World, all_reduce_sum
from .models import features
from .state import History, load_state, save_state

log = logging.getLogger("dyn")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the last good state is kept."""


# -- data ------------------------------------------------------------------------------------------
class _Indexed(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, label, index


class Batches:
    """(images, labels, sample indices) batches of a split, in an order fixed by (seed, epoch).

    Deterministic datasets (no random augmentation) are decoded once and kept as tensors;
    others go through a DataLoader with workers. Either way epoch e of seed s always visits
    the samples in the same order, so a resumed run sees the same batches as an unbroken one.
    Under data parallelism each process takes every world.size-th sample of that order (the
    training order padded to a multiple of the world size, as DistributedSampler does).
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                 in_memory: bool = False, num_workers: int = 0, drop_last: bool = False, world: World = World()):
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.num_workers, self.drop_last, self.world = num_workers, drop_last, world
        self.tensors = None
        if in_memory:
            from .data import stack

            self.tensors = stack(dataset)

    def indices(self, epoch: int) -> torch.Tensor:
        """This process's sample indices for `epoch`, in order."""
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            if self.world.size > 1:
                padded = math.ceil(n / self.world.size) * self.world.size
                order = torch.cat([order, order[:padded - n]])
        else:
            order = torch.arange(n)
        return order[self.world.rank::self.world.size]

    def __len__(self) -> int:
        n = len(self.dataset)
        size, rank = self.world.size, self.world.rank
        # As many samples as `indices` gives this process, without drawing a permutation.
        n = math.ceil(n / size) if self.shuffle else len(range(rank, n, size))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self.indices(epoch)
        if self.tensors is not None:
            images, labels = self.tensors
            for b in range(len(self)):
                index = order[b * self.batch_size:(b + 1) * self.batch_size]
                yield images[index], labels[index], index
            return
        loader = DataLoader(_Indexed(self.dataset), batch_size=self.batch_size, sampler=order.tolist(),
                            num_workers=self.num_workers, drop_last=self.drop_last,
                            persistent_workers=False, pin_memory=torch.cuda.is_available())
        yield from loader


# -- evaluation and snapshots ----------------------------------------------------------------------
def evaluate(model: nn.Module, batches: Batches, device: torch.device, world: World = World(),
             amp: bool = False) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) and mean cross-entropy of `model` over a split (all processes)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss, count
    with torch.inference_mode(), _autocast(device, amp):
        for images, labels, _ in batches.epoch(0):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits = model(images).float()
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
            sums += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(),
                                 nn.functional.cross_entropy(logits, labels, reduction="sum"),
                                 torch.tensor(labels.shape[0], device=device)]).double()
    correct1, correct5, loss, count = all_reduce_sum(sums, world).tolist()
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "val_loss": loss / count}


def layer_profile(model: nn.Module, images: torch.Tensor, bins: int = metrics.DEFAULT_BINS,
                  batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per-layer entropy and magnitude of `model` on fixed images (all layers), as in the analysis."""
    was_training = model.training
    model.eval()
    means = metrics.LayerMeans()
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            for layer, fmap in enumerate(features(model, images[start:start + batch_size].to(device))):
                means.add(layer, metrics.block_sums(fmap, ("entropy", "magnitude"), bins))
    model.train(was_training)
    return means.means()


# -- the loop --------------------------------------------------------------------------------------
def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _first_bad_step(first_bad: torch.Tensor, world: World) -> int:
    """The earliest step (1-based) whose loss was not finite on any process, or -1. A host sync."""
    flagged = torch.where(first_bad < 0, torch.full_like(first_bad, 2**62), first_bad)
    if world.distributed:
        import torch.distributed as dist

        dist.all_reduce(flagged, op=dist.ReduceOp.MIN)
    step = int(flagged)
    return -1 if step == 2**62 else step


def fit(task, optimizer, scheduler, train: Batches, val: Batches, epochs: int, world: World = World(),
        snapshot: Callable[[nn.Module], dict] | None = None, snapshot_every: int = 0,
        state_path: Path | None = None, fingerprint: str = "", amp: bool = False, log_interval: int = 50,
        progress: bool | None = None) -> History:
    """Train `task` for `epochs`, resuming from `state_path` when it holds a finished epoch of this run.

    Each epoch: one pass over `train` (loss parts summed on the device; the host reads them only
    every `log_interval` steps and at the end of the epoch), evaluation on `val`, a log row, a
    snapshot of the eval model every `snapshot_every` epochs (and before the first and after the
    last), then the main process saves the state. A state saved under another `fingerprint` is
    ignored. A non-finite loss raises NonFiniteLoss naming the epoch and step; the state on disk
    is then still the last good one.
    """
    device = world.device
    if progress is None:
        progress = sys.stderr.isatty() and world.is_main
    history = History()
    start_epoch = 0
    if state_path is not None and Path(state_path).is_file():
        restored = load_state(Path(state_path), task, optimizer, scheduler, fingerprint)
        if restored is not None:
            start_epoch, history = restored
            log.info("resumed from %s after epoch %d of %d", state_path, start_epoch, epochs)
    if snapshot is not None and world.is_main and start_epoch == 0 and not history.snapshots:
        history.snapshots.append((0, snapshot(task.get_eval_model())))

    steps_per_epoch = len(train)
    for epoch in range(start_epoch, epochs):
        task.train()
        started = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        n_images = torch.zeros((), dtype=torch.float64, device=device)
        first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        bar = tqdm(train.epoch(epoch), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                   unit="batch", disable=not progress, leave=False)
        for step, (images, labels, index) in enumerate(bar):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with _autocast(device, amp):
                out = task(images, labels, index) if _takes_index(task) else task(images, labels)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            update = epoch * steps_per_epoch + step + 1
            if scheduler is not None:
                scheduler.step_update(num_updates=update)
            task.update_ema(step=update)
            batch = labels.shape[0]
            for name, value in out.items():
                if name != "output":
                    value = value.detach().double() * batch
                    sums[name] = sums[name] + value if name in sums else value
            n_images += batch
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(out["loss"].detach()),
                                    torch.full_like(first_bad, step + 1), first_bad)
            if (step + 1) % log_interval == 0:
                _stop_if_non_finite(first_bad, world, epoch, state_path)
                if progress:
                    seen = float(n_images)
                    bar.set_postfix({**{k: f"{float(v) / seen:.4g}" for k, v in sums.items()},
                                     "img/s": f"{seen / (time.perf_counter() - started):.0f}"})
        _stop_if_non_finite(first_bad, world, epoch, state_path)
        names = sorted(sums)
        totals = all_reduce_sum(torch.stack([sums[k] for k in names] + [n_images]), world).tolist()
        seconds = time.perf_counter() - started
        row = {"epoch": epoch + 1, **{k: v / totals[-1] for k, v in zip(names, totals)},
               **evaluate(task.get_eval_model(), val, device, world, amp)}
        if task.has_ema():
            row.update({f"ema_{k}": v for k, v in evaluate(task.get_eval_model(ema=True), val, device, world,
                                                          amp).items()})
        row.update(lr=optimizer.param_groups[0]["lr"], seconds=seconds, images_per_s=totals[-1] / seconds)
        history.rows.append(row)
        if world.is_main:
            log.info("epoch %d/%d %s", epoch + 1, epochs,
                     " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
        done = epoch + 1
        if snapshot is not None and world.is_main and (done == epochs or (snapshot_every and done % snapshot_every == 0)):
            history.snapshots.append((done, snapshot(task.get_eval_model())))
        if state_path is not None and world.is_main:
            save_state(Path(state_path), task, optimizer, scheduler, done, history, fingerprint)
    return history


def _stop_if_non_finite(first_bad: torch.Tensor, world: World, epoch: int, state_path) -> None:
    step = _first_bad_step(first_bad, world)
    if step >= 0:
        kept = f"; the last good state (after epoch {epoch}) is kept in {state_path}" if state_path else ""
        raise NonFiniteLoss(f"non-finite loss in epoch {epoch + 1} at step {step}{kept}")


def _takes_index(task) -> bool:
    return getattr(task, "teacher_cache", None) is not None


def split_batches(dataset_cfg: dict, model: nn.Module, recipe, seed: int,
                  world: World = World()) -> tuple[Batches, Batches]:
    """Training and validation batches of the configured dataset, with `model`'s timm transforms."""
    from .data import build_dataset, build_transform

    train_set = build_dataset(dataset_cfg, "train", build_transform(model, train=True, recipe=recipe.to_dict()))
    val_set = build_dataset(dataset_cfg, "val", build_transform(model, train=False, recipe=recipe.to_dict()))
    small = dataset_cfg.get("name", "digits") == "digits"
    train = Batches(train_set, recipe.batch_size, shuffle=True, seed=seed, in_memory=small and not recipe.augment,
                    num_workers=recipe.num_workers, drop_last=not small, world=world)
    val = Batches(val_set, recipe.eval_batch_size, shuffle=False, in_memory=small, num_workers=recipe.num_workers,
                  world=world)
    return train, val

