"""One distillation run: teacher checkpoint + student from scratch -> the run directory's files.

Outputs (README, "What comes out"): summary.json (written last: a summary means the run is complete),
log.csv (one row per epoch), student.safetensors, evolution.nc (dims (epoch, layer)), and for
ProjectorKD projector.safetensors. The resumable state lives in `state_path`, outside them.
"""
from __future__ import annotations

import csv
import datetime
import io
import logging
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..data import build_dataset, build_transform, fixed_subset, num_classes, stack
from ..errors import UserError
from ..models import create_model, depth_of, load_checkpoint, save_weights, sha256_of
from ..workflow import layers
from ..workflow.atomic import write_json, write_text
from ..workflow.runs import RunSpec
from . import distributed
from .batches import split_batches
from .evolution import layer_profile, write_evolution
from .loop import fit
from .recipe import Recipe, make_optimizer, make_scheduler
from .state import clear_state, fingerprint_of, seed_everything
from .task import LayerDistillationTask

log = logging.getLogger("dyn")


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _write_log_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    keys = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


@dataclass(frozen=True)
class RunSetup:
    """What defines a run besides the weights it learns: fingerprinted for resume, recorded in summary.json."""

    spec: RunSpec
    pairs: list[tuple[int, int]]
    teacher_arch: str
    teacher_checkpoint: str
    teacher_sha256: str
    student_arch: str
    dataset_cfg: dict
    recipe: Recipe
    num_images: int
    bins: int
    evolution_every: int

    def fingerprint(self, world_size: int) -> str:
        return fingerprint_of(self.spec, self.teacher_arch, self.teacher_sha256, self.student_arch, self.dataset_cfg,
                              self.recipe.to_dict(), self.num_images, self.bins, self.evolution_every, world_size)


def aligned_pairs(spec: RunSpec, student_arch: str, teacher_arch: str) -> list[tuple[int, int]]:
    """The spec's (student, teacher) block pairs, checked against both models' depths."""
    if spec.method == "softkd":
        return []
    return layers.parse(spec.layers, depth_of(student_arch), depth_of(teacher_arch))


def distill(spec: RunSpec, teacher_arch: str, teacher_checkpoint: str | Path, student_arch: str,
            dataset_cfg: dict, recipe: Recipe, out_dir: str | Path, state_path: str | Path | None = None,
            num_images: int = 64, bins: int = 100, evolution_every: int = 0, device: str = "auto") -> dict | None:
    """Train one student for `spec`; write the run directory; return the summary (None off the main process).

    Under torchrun this is data-parallel: every process trains its shard, the main one writes files.
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    pairs = aligned_pairs(spec, student_arch, teacher_arch)  # a bad spec fails before anything is loaded
    world = distributed.init(device)
    try:
        seed_everything(spec.seed)
        teacher = load_checkpoint(teacher_arch, teacher_checkpoint)
        setup = RunSetup(spec, pairs, teacher_arch, str(teacher_checkpoint), sha256_of(teacher_checkpoint),
                         student_arch, dataset_cfg, recipe, num_images, bins, evolution_every)
        n_classes = num_classes(build_dataset(dataset_cfg, "val"))
        if teacher.num_classes != n_classes:
            raise UserError(f"teacher {teacher_arch} has {teacher.num_classes} classes but the dataset has {n_classes}")
        student = create_model(student_arch, num_classes=n_classes, drop_path_rate=recipe.drop_path or None)
        if world.is_main:
            log.info("run %s: %s <- %s, pairs (student, teacher) %s, %d process(es) on %s", spec.run_id,
                     student_arch, teacher_arch, pairs, world.size, world.device)

        task = LayerDistillationTask(student, teacher, pairs, spec.method, alpha=recipe.alpha,
                                     temperature=recipe.temperature, beta=spec.beta,
                                     label_smoothing=recipe.label_smoothing, device=world.device).to(world.device)
        train, val = split_batches(dataset_cfg, student, recipe, spec.seed, world)
        if recipe.teacher_cache and train.tensors is not None:
            # Inputs are deterministic: the teacher's outputs for a sample never change, compute them once.
            task.build_teacher_cache(train.tensors[0], recipe.eval_batch_size)
        snapshot_set = build_dataset(dataset_cfg, "val", build_transform(student, False, recipe.to_dict()))
        snapshot_images, _ = stack(fixed_subset(snapshot_set, num_images))
        if recipe.ema:
            task.setup_ema(decay=recipe.ema_decay)
        if recipe.compile:
            task.compile()
        if world.distributed:
            task.prepare_distributed(device_ids=[world.device.index] if world.device.type == "cuda" else None)
        optimizer = make_optimizer(task.trainable_module, recipe, world.size)
        scheduler = make_scheduler(optimizer, recipe, spec.epochs, len(train))
        state_path = Path(state_path) if state_path else None
        history = fit(task, optimizer, scheduler, train, val, spec.epochs, world,
                      snapshot=lambda model: layer_profile(model, snapshot_images, bins),
                      snapshot_every=evolution_every, state_path=state_path, fingerprint=setup.fingerprint(world.size),
                      amp=recipe.amp, log_interval=recipe.log_interval)
        if not world.is_main:
            return None
        summary = _write_run(out_dir, task, history, setup, world, time.perf_counter() - started)
        clear_state(state_path)
        return summary
    finally:
        distributed.barrier(world)
        distributed.shutdown(world)


def _write_run(out_dir: Path, task, history, setup: RunSetup, world, wall_seconds: float) -> dict:
    """The run directory's files; summary.json last, so that a summary means a complete run."""
    spec, recipe, bins, num_images = setup.spec, setup.recipe, setup.bins, setup.num_images
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(task.get_eval_model(), out_dir / "student.safetensors")
    if task.has_ema():
        save_weights(task.get_eval_model(ema=True), out_dir / "student_ema.safetensors")
    if task.projector() is not None:
        save_weights(task.projector(), out_dir / "projector.safetensors")
    _write_log_csv(out_dir / "log.csv", history.rows)
    attrs = {"run": spec.run_id, "method": spec.method, "layers": spec.layers, "beta": spec.beta,
             "epochs": spec.epochs, "seed": spec.seed, "student": setup.student_arch, "teacher": setup.teacher_arch,
             "bins": bins, "num_images": num_images, "dataset": setup.dataset_cfg.get("name"),
             "dyn_version": __version__}
    write_evolution(out_dir / "evolution.nc", history.snapshots, attrs)

    final = history.rows[-1]
    best = max(history.rows, key=lambda row: row["top1"])
    total_images = sum(row["images_per_s"] * row["seconds"] for row in history.rows)
    total_seconds = sum(row["seconds"] for row in history.rows)
    summary = {
        "run": spec.run_id, "method": spec.method, "layers": spec.layers, "pairs": setup.pairs, "beta": spec.beta,
        "epochs": spec.epochs, "seed": spec.seed, "teacher": setup.teacher_arch, "student": setup.student_arch,
        "top1": final["top1"], "top5": final["top5"], "best_top1": best["top1"], "best_top5": best["top5"],
        "best_epoch": best["epoch"], "wall_seconds": wall_seconds,
        "train_seconds": total_seconds,
        "images_per_second": total_images / total_seconds if total_seconds else None,
        "world_size": world.size, "batch_size_per_process": recipe.batch_size,
        "global_batch_size": recipe.batch_size * world.size, "lr": recipe.lr(world.size),
        "lr_rule": f"lr_base {recipe.lr_base} x global batch {recipe.batch_size * world.size} / {recipe.lr_base_size}",
        "recipe": recipe.to_dict(), "dataset": setup.dataset_cfg, "teacher_checkpoint": setup.teacher_checkpoint,
        "teacher_sha256": setup.teacher_sha256, "num_images": num_images, "bins": bins,
        "evolution_every": setup.evolution_every,
        "versions": {"dyn": __version__, "torch": torch.__version__, "timm": _timm_version(),
                     "python": platform.python_version(), "cuda": torch.version.cuda},
        "git_commit": _git_commit(), "device": str(world.device), "devices": _device_names(world),
        "host": platform.node(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if "ema_top1" in final:
        summary.update(ema_top1=final["ema_top1"], ema_top5=final["ema_top5"])
    write_json(out_dir / "summary.json", summary)
    return summary


def _device_names(world) -> list[str]:
    """One entry per process: torchrun --standalone gives local rank r the r-th visible GPU."""
    if world.device.type != "cuda":
        return ["cpu"] * world.size
    return [torch.cuda.get_device_name(i) for i in range(min(world.size, torch.cuda.device_count()))]


def _timm_version() -> str:
    import timm

    return timm.__version__
