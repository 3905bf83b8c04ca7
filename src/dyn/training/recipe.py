"""The training recipe: every knob a config key, with timm's optimiser and scheduler factories."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from ..errors import UserError


@dataclass(frozen=True)
class Recipe:
    """Defaults are the DeiT recipe of the paper's code; the embedded config scales them to the digits.
    config/README.md holds each value against the paper's code."""

    global_batch: int = 512          # images per step over all processes; each takes global_batch / processes
    lr_base: float = 5e-4            # lr = lr_base * global_batch / lr_base_size
    lr_base_size: int = 512
    repeated_aug: int = 1            # >1: each image this many times per epoch, differently augmented (timm RepeatAugSampler)
    opt: str = "adamw"
    weight_decay: float = 0.05
    sched: str = "cosine"
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    augment: bool = True             # timm's training transform; False: the eval transform (deterministic)
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    random_erasing: float = 0.25
    drop_path: float = 0.0
    alpha: float = 0.9               # weight of the soft KD term; (1 - alpha) weighs cross-entropy
    temperature: float = 1.0
    teacher_cache: bool = True       # reuse teacher outputs across epochs when inputs are deterministic
    num_workers: int = 4
    eval_batch_size: int = 256
    crop_pct: float | None = 0.875   # validation: resize to 224 / 0.875 = 256, centre crop 224 (None: the model's)
    interpolation: str = "bicubic"
    amp: bool = True                 # autocast on CUDA (CPU always runs float32)
    amp_dtype: str = "bfloat16"      # or float16, with a gradient scaler
    compile: bool = False            # torch.compile student and teacher
    ema: bool = False                # keep an EMA of the student, evaluated and saved beside it
    ema_decay: float = 0.99996
    log_interval: int = 50           # steps between host reads of the loss (progress line and bar, non-finite check)
    tensorboard: bool = True         # each run's scalars and entropy profiles in <run dir>/tensorboard/

    # Keys that change what a job shows, not what it trains: out of the resume and reuse fingerprints,
    # so switching them neither restarts a run nor trains a finished one again.
    NOT_IN_RESULT = ("tensorboard",)

    @classmethod
    def from_dict(cls, values: dict | None) -> "Recipe":
        """A recipe from config keys; one line for an unknown key or a value of the wrong type."""
        values = dict(values or {})
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"unknown train key(s) {', '.join(unknown)}: valid keys are {', '.join(sorted(known))}")
        for key, value in values.items():
            kinds = [kind.strip() for kind in known[key].split("|")]  # the annotations, e.g. "float | None"
            if not any(_is(value, kind) for kind in kinds):
                raise UserError(f"train.{key} must be {' or '.join(_NAMES[kind] for kind in kinds)}, got {value!r}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def result_dict(self) -> dict:
        """The keys that can change a run's result (`to_dict` without NOT_IN_RESULT): what fingerprints hold."""
        return {k: v for k, v in self.to_dict().items() if k not in self.NOT_IN_RESULT}

    def lr(self) -> float:
        """The peak learning rate, scaled from the global batch."""
        return self.lr_base * self.global_batch / self.lr_base_size

    def batch_per_process(self, world_size: int) -> int:
        """Each process's share of the global batch; a clear error where it does not divide."""
        if self.global_batch % world_size:
            raise UserError(f"train.global_batch {self.global_batch} does not divide among {world_size} processes: "
                            f"use a multiple of {world_size}")
        return self.global_batch // world_size


_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "None": "null"}


def _is(value, kind: str) -> bool:
    if kind == "None":
        return value is None
    if isinstance(value, bool):
        return kind == "bool"
    return {"int": isinstance(value, int), "float": isinstance(value, (int, float)), "str": isinstance(value, str),
            "bool": False}[kind]


def make_optimizer(module: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """timm's optimiser factory (no weight decay on biases, norms and embeddings), fused Adam(W)."""
    from timm.optim import create_optimizer_v2

    # torch's fused Adam(W) kernels (CUDA, and CPU since torch 2.4): one kernel for all parameters.
    extra = {"fused": True} if recipe.opt.lower() in ("adamw", "adam") else {}
    return create_optimizer_v2(module, opt=recipe.opt, lr=recipe.lr(), weight_decay=recipe.weight_decay,
                               **extra)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, epochs: int, steps_per_epoch: int):
    """timm's scheduler factory, stepped per update (`step_update`) so warm-up is smooth on short runs."""
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(
        optimizer, sched=recipe.sched, num_epochs=epochs, warmup_epochs=min(recipe.warmup_epochs, max(epochs - 1, 0)),
        warmup_lr=recipe.warmup_lr, min_lr=recipe.min_lr, step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    return scheduler
