"""Validation: top-1, top-5 and mean cross-entropy of several models in one pass over a split's batches."""
from __future__ import annotations

import torch
import torch.nn as nn

from .batches import Batches
from .distributed import World, all_reduce_sum
from .precision import Precision


def evaluate_all(models: list[nn.Module], batches: Batches, device: torch.device, world: World = World(),
                 precision: Precision = Precision()) -> list[dict[str, float]]:
    """Top-1 and top-5 accuracy (percent) and mean cross-entropy of each model over a split (all
    processes), in one pass over its batches."""
    for model in models:
        model.eval()
    sums = torch.zeros(len(models), 4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss, count
    with torch.inference_mode(), precision.autocast():
        for images, labels, _ in batches.epoch(0):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            for i, model in enumerate(models):
                logits = model(images).float()
                hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
                sums[i] += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(),
                                        nn.functional.cross_entropy(logits, labels, reduction="sum"),
                                        torch.tensor(labels.shape[0], device=device)]).double()
    return [{"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "val_loss": loss / n}
            for c1, c5, loss, n in all_reduce_sum(sums, world).tolist()]


def evaluate(model: nn.Module, batches: Batches, device: torch.device, world: World = World(),
             precision: Precision = Precision()) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) and mean cross-entropy of `model` over a split (all processes)."""
    return evaluate_all([model], batches, device, world, precision)[0]
