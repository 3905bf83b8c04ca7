"""The `pca` encoding translator's estimate: the teacher's principal directions of each aligned layer,
estimated once per cohort before training from a seeded subset of training images, and what a run
keeps of it (pca.safetensors, its summary fields)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Subset

from ..data import build_dataset, build_transform, stack
from .methods import METHODS
from .recipe import Recipe

if TYPE_CHECKING:
    from .distill import RunSetup
    from .task import LayerDistillationTask, SharedTeacher

log = logging.getLogger("dyn")


def pca_subset(dataset_cfg: dict, model: torch.nn.Module, recipe: Recipe, n: int, seed: int) -> Subset:
    """The images the `pca` translator is estimated on: `n` training images (all of them if fewer), drawn
    by `seed` and kept in dataset order, through `model`'s evaluation transform (no augmentation)."""
    train = build_dataset(dataset_cfg, "train", build_transform(model, train=False, recipe=recipe.to_dict()))
    chosen = np.sort(np.random.default_rng(seed).permutation(len(train))[:n])
    return Subset(train, [int(i) for i in chosen])


def estimate_translators(setups: list[RunSetup], tasks: list[LayerDistillationTask], shared: SharedTeacher,
                          student: torch.nn.Module, world) -> None:
    """Give each `pca` student its teacher layers' principal directions, estimated once per (layer, keep)
    for the whole cohort before training, from the cohort seed's subset of training images. Nothing here
    draws from a random stream: a student's estimate is the same alone and in any cohort."""
    wanted = [(setup.spec.option("pca_keep"), setup.spec.option("pca_images"), task)
              for setup, task in zip(setups, tasks) if METHODS[setup.spec.method].estimate == "pca"]
    if not wanted:
        return
    started = time.perf_counter()
    recipe, estimates, used = setups[0].recipe, {}, {}
    for n in sorted({images for _, images, _ in wanted}):
        subset = pca_subset(setups[0].dataset_cfg, student, recipe, n, setups[0].spec.seed)
        used[n] = len(subset)
        requests = {(layer, keep) for keep, images, task in wanted if images == n for layer in task.teacher_layers}
        found = shared.estimate_pca(stack(subset)[0], requests, recipe.eval_batch_size, world.device)
        estimates.update({(layer, keep, n): pca for (layer, keep), pca in found.items()})
    for keep, images, task in wanted:
        task.set_translators({layer: estimates[(layer, keep, images)] for layer in task.teacher_layers},
                             images=used[images])
    if world.is_main:
        log.info("pca: the teacher's principal directions from %s training image(s) in %.2f s: %s",
                 ", ".join(map(str, used.values())), time.perf_counter() - started,
                 "; ".join(f"layer {layer}, keep {keep:g}: {pca.components.shape[1]} of {pca.components.shape[0]} "
                           f"directions, {100 * pca.explained:.1f}% of the variance"
                           for (layer, keep, _), pca in sorted(estimates.items())))


def write_pca(path: Path, task: LayerDistillationTask) -> None:
    """A `pca` run's translators, as trained against: per aligned teacher layer t, `layer{t}.mean` (C,),
    `layer{t}.components` (C, k, orthonormal columns, largest variance first), `layer{t}.explained` (the
    share of the layer's channel variance they hold)."""
    from safetensors.torch import save_file

    from ..atomic import atomic_path

    tensors = {}
    for layer, pca in task.translators.items():
        tensors[f"layer{layer}.mean"] = pca.mean.detach().cpu().contiguous()
        tensors[f"layer{layer}.components"] = pca.components.detach().cpu().contiguous()
        tensors[f"layer{layer}.explained"] = torch.tensor(pca.explained, dtype=torch.float64)
    # One metadata entry, as save_weights writes: safetensors orders several at random, and the bytes
    # would differ run to run. The settings (pca_keep, pca_images, the seed) are in summary.json.
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})


def pca_summary(task: LayerDistillationTask) -> dict:
    """A `pca` run's summary fields besides its options; the per-layer lists follow `pairs`."""
    translators = [task.translators[layer] for layer in task.teacher_layers]
    return {"pca_images": task.translator_images,  # those used: all of them where fewer than asked
            "pca_components": [int(pca.components.shape[1]) for pca in translators],
            "pca_explained": [pca.explained for pca in translators]}
