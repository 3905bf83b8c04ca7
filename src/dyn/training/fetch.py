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

from .. import __version__
from ..data import build_dataset, num_classes
from ..errors import UserError
from ..models import classes_of, create_model, save_weights
from ..atomic import write_json
from ..files import weights_kind
from .batches import split_batches
from .distributed import World, init
from .evaluation import evaluate
from .loop import Loop, Member, fit, raise_if_stopped
from .precision import Precision
from .recipe import Recipe, make_optimizer, make_scheduler
from .rng import RngStream
from .state import clear_state, fingerprint_of

log = logging.getLogger("dyn")


def train_from_scratch(arch: str, n_classes: int, dataset_cfg: dict, recipe: Recipe, epochs: int, seed: int,
                       world: World, state_path: Path | None = None) -> torch.nn.Module:
    """Train a model on the configured dataset with plain cross-entropy (timm's ClassificationTask)."""
    from timm.task import ClassificationTask

    stream = RngStream(seed, world.device)
    with stream.active():
        model = create_model(arch, num_classes=n_classes, drop_path_rate=recipe.drop_path or None)
    train, val = split_batches(dataset_cfg, model, recipe, seed)
    task = ClassificationTask(model, criterion_kwargs=dict(smoothing=recipe.label_smoothing),
                              device=world.device, verbose=False).to(world.device)
    optimizer = make_optimizer(model, recipe)
    precision = Precision.of(world.device, recipe.amp, recipe.amp_dtype)
    member = Member(arch, task, optimizer, make_scheduler(optimizer, recipe, epochs, len(train)), stream, epochs,
                    fingerprint_of(arch, dataset_cfg, recipe.result_dict(), epochs, seed), precision.new_scaler())
    fit(Loop([member], train, val, world, precision, log_interval=recipe.log_interval, state_path=state_path))
    raise_if_stopped([member])
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
        model = create_model(arch, hub=True)  # the pretrained classifier, whatever the dataset
        source = f"timm hub: {arch}"
    else:
        path = Path(weights)
        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as scratch:
            if kind == "url":
                path = Path(scratch) / Path(weights.split("?")[0]).name
                log.info("downloading %s", weights)
                torch.hub.download_url_to_file(weights, str(path), progress=False)
            model = create_model(arch, checkpoint=path)  # the checkpoint's classifier decides the classes
        source = weights
    classes = classes_of(model)
    info = {"model": name, "arch": arch, "source": source, "weights": weights, "num_classes": classes,
            "dataset": dataset_cfg.get("name"), "dyn_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if evaluate_model and classes != n_classes:
        info["evaluation"] = (f"skipped: the model has {classes} classes, the dataset's validation "
                              f"split {n_classes}")
        log.info("%s: validation accuracy %s", name, info["evaluation"])
    elif evaluate_model:
        _, val = split_batches(dataset_cfg, model, recipe, seed)
        scores = evaluate(model.to(world.device), val, world.device,
                          precision=Precision.of(world.device, recipe.amp, recipe.amp_dtype))
        info.update(val_top1=scores["top1"], val_top5=scores["top5"])
        log.info("%s: val top1 %.2f top5 %.2f", name, scores["top1"], scores["top5"])
    info["sha256"] = save_weights(model, out)  # then the JSON: together they mean a finished fetch
    write_json(out.with_suffix(".json"), info)
    clear_state(state_path)
    return info

