"""The training loop: epochs of a timm task, evaluation, per-epoch log, evolution snapshots, resume state.

Used both to train a model on its own (`dyn fetch` with weights: train, a ClassificationTask)
and to distil a student (`dyn distill`, a LayerDistillationTask).
"""
from __future__ import annotations

import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm import tqdm

from . import metrics
from .atomic import atomic_path
from .models import features

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
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                 in_memory: bool = False, num_workers: int = 0, drop_last: bool = False):
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.num_workers, self.drop_last = num_workers, drop_last
        self.tensors = None
        if in_memory:
            from .data import stack

            self.tensors = stack(dataset)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.dataset))
        generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        return torch.randperm(len(self.dataset), generator=generator)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self.tensors is not None:
            images, labels = self.tensors
            order = self._order(epoch)
            for b in range(len(self)):
                index = order[b * self.batch_size:(b + 1) * self.batch_size]
                yield images[index], labels[index], index
            return
        generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        sampler = RandomSampler(self.dataset, generator=generator) if self.shuffle else None
        loader = DataLoader(_Indexed(self.dataset), batch_size=self.batch_size, sampler=sampler,
                            num_workers=self.num_workers, drop_last=self.drop_last,
                            persistent_workers=False, pin_memory=torch.cuda.is_available())
        yield from loader


# -- evaluation and snapshots ----------------------------------------------------------------------
def evaluate(model: nn.Module, batches: Batches, device: torch.device) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) and mean cross-entropy of `model` over a split."""
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    with torch.inference_mode():
        for images, labels, _ in batches.epoch(0):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits = model(images).float()
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").double()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top == labels[:, None]
            correct1 += int(hits[:, 0].sum())
            correct5 += int(hits.any(dim=1).sum())
            total += labels.shape[0]
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "val_loss": float(loss_sum) / total}


def layer_profile(model: nn.Module, images: torch.Tensor, bins: int = metrics.DEFAULT_BINS,
                  batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per-layer entropy and magnitude of `model` on fixed images (all layers), as in the analysis."""
    was_training = model.training
    model.eval()
    sums: dict[str, list] = {}
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            maps = features(model, images[start:start + batch_size].to(device))
            for layer, fmap in enumerate(maps):
                entropy = metrics.entropy_sum(metrics.channel_vectors(fmap), bins)
                magnitude = metrics.magnitude_sum(fmap)
                for name, (total, n) in (("entropy", entropy), ("magnitude", magnitude)):
                    slot = sums.setdefault(name, [[0.0, 0] for _ in maps])[layer]
                    slot[0] += total
                    slot[1] += n
    model.train(was_training)
    return {name: np.array([t / n for t, n in per_layer]) for name, per_layer in sums.items()}


# -- the loop --------------------------------------------------------------------------------------
@dataclass
class History:
    rows: list[dict] = field(default_factory=list)          # one per finished epoch
    snapshots: list[tuple[int, dict]] = field(default_factory=list)  # (epoch, layer_profile)


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_state(path: Path, task, optimizer, scheduler, epoch: int, history: History, fingerprint: str = "") -> None:
    """Everything needed to continue after `epoch`, written atomically."""
    from timm.utils import unwrap_model

    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "trainable": unwrap_model(task.get_trainable_module()).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "rng": _rng_state(),
        "rows": history.rows,
        "snapshots": [(e, {k: torch.from_numpy(v) for k, v in p.items()}) for e, p in history.snapshots],
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, task, optimizer, scheduler, fingerprint: str = "") -> tuple[int, History] | None:
    """Restore a state file; returns the number of finished epochs and the history so far.

    Returns None (and restores nothing) if the state belongs to another configuration.
    """
    from timm.utils import unwrap_model

    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint", "") != fingerprint:
        log.warning("ignoring %s: it was saved by a run with another configuration", path)
        return None
    unwrap_model(task.get_trainable_module()).load_state_dict(state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"]:
        scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    history = History(list(state["rows"]),
                      [(e, {k: v.numpy() for k, v in p.items()}) for e, p in state["snapshots"]])
    return int(state["epoch"]), history


def fit(task, optimizer, scheduler, train: Batches, val: Batches, epochs: int, device: torch.device,
        snapshot: Callable[[nn.Module], dict] | None = None, snapshot_every: int = 0,
        state_path: Path | None = None, fingerprint: str = "", progress: bool | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> History:
    """Train `task` for `epochs`, resuming from `state_path` when it holds a finished epoch.

    Each epoch: one pass over `train` (loss parts summed on the device, read once per epoch),
    evaluation on `val`, a log row, a snapshot of the eval model every `snapshot_every` epochs
    (and before the first and after the last), then the state is saved. A state saved under
    another `fingerprint` (another configuration) is ignored, not resumed.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    history = History()
    start_epoch = 0
    if state_path is not None and Path(state_path).is_file():
        restored = load_state(Path(state_path), task, optimizer, scheduler, fingerprint)
        if restored is not None:
            start_epoch, history = restored
            log.info("resumed from %s after epoch %d of %d", state_path, start_epoch, epochs)
    if snapshot is not None and start_epoch == 0 and not history.snapshots:
        history.snapshots.append((0, snapshot(task.get_eval_model())))

    steps_per_epoch = len(train)
    for epoch in range(start_epoch, epochs):
        task.train()
        started = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        n_images = 0
        bar = tqdm(train.epoch(epoch), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                   unit="batch", disable=not progress, leave=False)
        for step, (images, labels, index) in enumerate(bar):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            out = task(images, labels, index) if _takes_index(task) else task(images, labels)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step_update(num_updates=epoch * steps_per_epoch + step + 1)
            for name, value in out.items():
                if name == "output":
                    continue
                value = value.detach().float() * labels.shape[0]
                sums[name] = sums[name] + value if name in sums else value
            n_images += labels.shape[0]
        seconds = time.perf_counter() - started
        parts = {name: float(value) / n_images for name, value in sums.items()}  # one host sync per epoch
        if not all(math.isfinite(v) for v in parts.values()):
            raise NonFiniteLoss(f"non-finite loss in epoch {epoch + 1}: "
                                + ", ".join(f"{k}={v}" for k, v in parts.items())
                                + (f"; last good state kept in {state_path}" if state_path else ""))
        row = {"epoch": epoch + 1, **parts, **evaluate(task.get_eval_model(), val, device),
               "lr": optimizer.param_groups[0]["lr"], "seconds": seconds, "images_per_s": n_images / seconds}
        history.rows.append(row)
        log.info("epoch %d/%d " + " ".join(f"{k}=%.4g" for k in row if k != "epoch"), epoch + 1, epochs,
                 *[row[k] for k in row if k != "epoch"])
        done = epoch + 1
        if snapshot is not None and (done == epochs or (snapshot_every and done % snapshot_every == 0)):
            history.snapshots.append((done, snapshot(task.get_eval_model())))
        if on_epoch is not None:
            on_epoch(row)
        if state_path is not None:
            save_state(Path(state_path), task, optimizer, scheduler, done, history, fingerprint)
    return history


def fingerprint_of(*parts) -> str:
    """A short stable digest of a run's configuration, to tell its state file from another run's."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def clear_state(state_path: Path | None) -> None:
    """Remove a finished run's state: a later forced rerun then starts from scratch, as asked."""
    if state_path is not None:
        Path(state_path).unlink(missing_ok=True)


def _takes_index(task) -> bool:
    return getattr(task, "teacher_cache", None) is not None


def split_batches(dataset_cfg: dict, model: nn.Module, recipe, seed: int) -> tuple[Batches, Batches]:
    """Training and validation batches of the configured dataset, with `model`'s timm transforms."""
    from .data import build_dataset, build_transform

    train_set = build_dataset(dataset_cfg, "train", build_transform(model, train=True, recipe=recipe.to_dict()))
    val_set = build_dataset(dataset_cfg, "val", build_transform(model, train=False))
    small = dataset_cfg.get("name", "digits") == "digits"
    train = Batches(train_set, recipe.batch_size, shuffle=True, seed=seed, in_memory=small and not recipe.augment,
                    num_workers=recipe.num_workers, drop_last=not small)
    val = Batches(val_set, recipe.eval_batch_size, shuffle=False, in_memory=small, num_workers=recipe.num_workers)
    return train, val


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
