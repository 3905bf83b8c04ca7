"""One distillation run: teacher checkpoint + student from scratch -> the run directory's files.

Outputs (README, "What comes out"): summary.json (written last: a summary means the run is complete),
log.csv (one row per epoch), student.safetensors, evolution.nc (dims (epoch, layer)), and for
ProjectorKD projector.safetensors. The resumable state lives in `state_path`, outside them.
"""
from __future__ import annotations

import csv
import dataclasses
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
from ..data import build_dataset, num_classes
from ..errors import UserError
from ..models import create_model, depth_of, existing_checkpoint, load_checkpoint, save_weights, sha256_of
from ..workflow import layers
from ..workflow.atomic import write_json, write_text
from ..workflow.runs import RunSpec
from . import distributed
from .batches import split_batches
from .evolution import Snapshots, layer_profile, write_evolution
from .loop import Precision, fit
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
    snapshots: Snapshots
    lowpass_keep: float = 0.25

    def fingerprint(self, world_size: int) -> str:
        return fingerprint_of(self.spec, self.pairs, self.teacher_arch, self.teacher_sha256, self.student_arch,
                              self.dataset_cfg, self.recipe.to_dict(), dataclasses.asdict(self.snapshots),
                              self.lowpass_keep, world_size)


def aligned_pairs(spec: RunSpec, student_arch: str, teacher_arch: str,
                  teacher_phases: str | Path | None = None) -> list[tuple[int, int]]:
    """The spec's (student, teacher) block pairs, checked against both models' depths; `auto` specs
    read the teacher's bottleneck from its phases.csv."""
    if spec.method == "softkd":
        return []
    bottleneck = None
    if layers.is_auto(spec.layers):
        from ..analysis.phases import read_bottleneck

        if teacher_phases is None:
            raise UserError(f"layer spec '{spec.layers}' needs the teacher's phases.csv (--teacher-phases)")
        bottleneck = read_bottleneck(teacher_phases)
    return layers.parse(spec.layers, depth_of(student_arch), depth_of(teacher_arch), bottleneck)


def distill(spec: RunSpec, teacher_arch: str, teacher_checkpoint: str | Path, student_arch: str,
            dataset_cfg: dict, recipe: Recipe, out_dir: str | Path, state_path: str | Path | None = None,
            snapshots: Snapshots = Snapshots(), device: str = "auto", teacher_phases: str | Path | None = None,
            lowpass_keep: float = 0.25) -> dict | None:
    """Train one student for `spec`; write the run directory; return the summary (None off the main process).

    Under torchrun this is data-parallel: every process trains its shard, the main one writes files.
    `teacher_phases`: the teacher's phases.csv, for `auto` layer specs; `lowpass_keep`: the share of
    channel frequencies the `lowpass` method keeps of the teacher's maps.
    """
    started = time.perf_counter()
    pairs = aligned_pairs(spec, student_arch, teacher_arch, teacher_phases)  # a bad spec fails before any load
    world = distributed.init(device)
    try:
        seed_everything(spec.seed)
        teacher_sha256 = sha256_of(existing_checkpoint(teacher_checkpoint))
        setup = RunSetup(spec, pairs, teacher_arch, str(teacher_checkpoint), teacher_sha256, student_arch, dataset_cfg,
                         recipe, snapshots, lowpass_keep)
        task, train, val, snapshot_images = _build_task(setup, world)
        optimizer = make_optimizer(task.trainable_module, recipe)
        scheduler = make_scheduler(optimizer, recipe, spec.epochs, len(train))
        state_path = Path(state_path) if state_path else None
        history = fit(task, optimizer, scheduler, train, val, spec.epochs, world,
                      snapshot=lambda model: layer_profile(model, snapshot_images, snapshots.bins),
                      snapshot_every=snapshots.every, state_path=state_path, fingerprint=setup.fingerprint(world.size),
                      precision=Precision.of(world.device, recipe.amp, recipe.amp_dtype),
                      log_interval=recipe.log_interval)
        if not world.is_main:
            return None
        summary = _write_run(Path(out_dir), task, history, setup, world, time.perf_counter() - started)
        clear_state(state_path)
        return summary
    finally:
        distributed.barrier(world)
        distributed.shutdown(world)


def _build_task(setup: RunSetup, world) -> tuple[LayerDistillationTask, object, object, torch.Tensor]:
    """The teacher, a fresh student and the loss of `setup`, ready to train; with the training and
    validation batches and the snapshot images."""
    recipe, dataset_cfg = setup.recipe, setup.dataset_cfg
    teacher = load_checkpoint(setup.teacher_arch, setup.teacher_checkpoint)
    n_classes = num_classes(build_dataset(dataset_cfg, "val"))
    if teacher.num_classes != n_classes:
        raise UserError(f"teacher {setup.teacher_arch} has {teacher.num_classes} classes but the dataset has {n_classes}")
    student = create_model(setup.student_arch, num_classes=n_classes, drop_path_rate=recipe.drop_path or None)
    if world.is_main:
        log.info("run %s: %s <- %s, pairs (student, teacher) %s, %d process(es) on %s", setup.spec.run_id,
                 setup.student_arch, setup.teacher_arch, setup.pairs, world.size, world.device)
    task = LayerDistillationTask(student, teacher, setup.pairs, setup.spec.method, alpha=recipe.alpha,
                                 temperature=recipe.temperature, beta=setup.spec.beta,
                                 label_smoothing=recipe.label_smoothing, device=world.device,
                                 lowpass_keep=setup.lowpass_keep).to(world.device)
    train, val = split_batches(dataset_cfg, student, recipe, setup.spec.seed, world)
    snapshot_images = setup.snapshots.images(dataset_cfg, student, recipe)
    if recipe.teacher_cache and train.tensors is not None:
        # Inputs are deterministic: the teacher's outputs for a sample never change, compute them once.
        task.build_teacher_cache(train.tensors[0], recipe.eval_batch_size)
    if recipe.ema:
        task.setup_ema(decay=recipe.ema_decay)
    if recipe.compile:
        task.compile()
    if world.distributed:
        task.prepare_distributed(device_ids=[world.device.index] if world.device.type == "cuda" else None)
    return task, train, val, snapshot_images


def _write_run(out_dir: Path, task, history, setup: RunSetup, world, wall_seconds: float) -> dict:
    """The run directory's files; summary.json last, so that a summary means a complete run."""
    spec, recipe, snapshots = setup.spec, setup.recipe, setup.snapshots
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(task.get_eval_model(), out_dir / "student.safetensors")
    if task.has_ema():
        save_weights(task.get_eval_model(ema=True), out_dir / "student_ema.safetensors")
    if task.projector() is not None:
        save_weights(task.projector(), out_dir / "projector.safetensors")
    _write_log_csv(out_dir / "log.csv", history.rows)
    attrs = {"run": spec.run_id, "method": spec.method, "layers": spec.layers, "beta": spec.beta,
             "epochs": spec.epochs, "seed": spec.seed, "student": setup.student_arch, "teacher": setup.teacher_arch,
             "bins": snapshots.bins, "num_images": snapshots.num_images, "sample_selection": snapshots.describe(),
             "dataset": setup.dataset_cfg.get("name"), "dyn_version": __version__}
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
        "world_size": world.size, "batch_size_per_process": recipe.batch_per_process(world.size),
        "global_batch_size": recipe.global_batch, "lr": recipe.lr(),
        "lr_rule": f"lr_base {recipe.lr_base} x global batch {recipe.global_batch} / {recipe.lr_base_size}",
        "recipe": recipe.to_dict(), "dataset": setup.dataset_cfg, "teacher_checkpoint": setup.teacher_checkpoint,
        "teacher_sha256": setup.teacher_sha256, "snapshots": dataclasses.asdict(snapshots),
        **({"lowpass_keep": setup.lowpass_keep} if spec.method == "lowpass" else {}),
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
