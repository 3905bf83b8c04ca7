"""Checkpoints for the analysis: trained here, from the timm hub, a local file or a URL.

Whatever the source, the result is `<out>.safetensors` (the model's state dict, loadable with
`timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=...))`) and a JSON
beside it with the source, the file's sha256 and the validation accuracy on the configured data.
"""
from __future__ import annotations

import datetime
import logging
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import __version__
from .atomic import atomic_path, write_json
from .config import weights_kind
from .data import build_dataset, num_classes
from .errors import UserError
from .distributed import World, init
from .models import create_model, sha256_of
from .recipe import Recipe, make_optimizer, make_scheduler
from .state import clear_state, fingerprint_of, seed_everything
from .train import evaluate, fit, split_batches

log = logging.getLogger("dyn")


def save_weights(model: torch.nn.Module, path: str | Path) -> str:
    """Save a state dict as safetensors atomically; returns its sha256."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={"format": "pt"})
    return sha256_of(path)


def train_from_scratch(arch: str, n_classes: int, dataset_cfg: dict, recipe: Recipe, epochs: int, seed: int,
                       world: World, state_path: Path | None = None) -> torch.nn.Module:
    """Train a model on the configured dataset with plain cross-entropy (timm's ClassificationTask)."""
    from timm.task import ClassificationTask

    seed_everything(seed)
    model = create_model(arch, num_classes=n_classes, drop_path_rate=recipe.drop_path or None)
    train, val = split_batches(dataset_cfg, model, recipe, seed)
    task = ClassificationTask(model, criterion_kwargs=dict(smoothing=recipe.label_smoothing),
                              device=world.device, verbose=False).to(world.device)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, epochs, len(train))
    fit(task, optimizer, scheduler, train, val, epochs, world, state_path=state_path,
        fingerprint=fingerprint_of(arch, dataset_cfg, recipe.to_dict(), epochs, seed), amp=recipe.amp,
        log_interval=recipe.log_interval)
    return model


def fetch(name: str, arch: str, weights: str, out: str | Path, dataset_cfg: dict, recipe: Recipe,
          epochs: int = 0, seed: int = 0, device: str = "auto", evaluate_model: bool = True,
          state_path: Path | None = None) -> dict:
    """Produce `out` (.safetensors) and its JSON for the model `name`; returns the JSON's content."""
    out = Path(out)
    world = init(device)
    kind = weights_kind(weights)
    n_classes = num_classes(build_dataset(dataset_cfg, "val"))
    if kind == "train":
        if epochs < 1:
            raise UserError(f"model '{name}' has weights: train but epochs is {epochs}; set models.{name}.epochs >= 1")
        model = train_from_scratch(arch, n_classes, dataset_cfg, recipe, epochs, seed, world, state_path)
        source = f"trained here: {epochs} epochs on {dataset_cfg.get('name')}, seed {seed}"
    elif kind == "hub":
        model = create_model(arch, num_classes=n_classes, hub=True)
        source = f"timm hub: {arch}"
    else:
        path = Path(weights)
        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as scratch:
            if kind == "url":
                path = Path(scratch) / Path(weights.split("?")[0]).name
                log.info("downloading %s", weights)
                torch.hub.download_url_to_file(weights, str(path), progress=False)
            model = create_model(arch, num_classes=n_classes, checkpoint=path)
        source = weights
    sha256 = save_weights(model, out)
    info = {"model": name, "arch": arch, "source": source, "weights": weights, "sha256": sha256,
            "num_classes": n_classes, "dataset": dataset_cfg.get("name"), "dyn_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if evaluate_model:
        _, val = split_batches(dataset_cfg, model, recipe, seed)
        scores = evaluate(model.to(world.device), val, world.device, amp=recipe.amp)
        info.update(val_top1=scores["top1"], val_top5=scores["top5"])
        log.info("%s: val top1 %.2f top5 %.2f", name, scores["top1"], scores["top5"])
    write_json(out.with_suffix(".json"), info)
    clear_state(state_path)
    return info


def load_checkpoint(arch: str, checkpoint: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A model from a fetched checkpoint; the class count comes from the JSON beside it."""
    import json

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"checkpoint file not found: {checkpoint}")
    meta = checkpoint.with_suffix(".json")
    n_classes = json.loads(meta.read_text())["num_classes"] if meta.is_file() else None
    return create_model(arch, num_classes=n_classes, checkpoint=checkpoint).to(device).eval()
