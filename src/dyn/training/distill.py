"""Distillation: a cohort of students (or one) from scratch against a teacher checkpoint -> each run
directory's files.

Outputs per run (docs/architecture.md, "File contracts"): summary.json (written last: a summary means the run is
complete), log.csv (one row per epoch), student.safetensors, evolution.nc (dims (epoch, layer)), for
ProjectorKD projector.safetensors and for the `pca` translator pca.safetensors. Besides them (not declared
outputs) student_best.safetensors (+ projector_best.safetensors), the weights of the best validation top-1
epoch, and with `train.tensorboard` the folder tensorboard/. log.csv, evolution.nc and the best weights are
written while the run trains (`RunFiles`), the rest at its end. The resumable state of the whole cohort
lives in `state_path`, outside them.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from timm.task import DistillationTeacher

from .. import __version__
from ..data import build_dataset, num_classes
from ..errors import UserError
from ..models import classes_of, create_model, depth_of, existing_checkpoint, load_checkpoint, save_weights, sha256_of
from ..grid import layers
from ..atomic import write_json
from ..grid.runs import RunSpec
from . import distributed, finished, translators
from .methods import METHODS
from .batches import split_batches
from .evolution import Snapshots, layer_profile, write_evolution
from .loop import Loop, Member, fit, raise_if_stopped
from .precision import Precision
from .recipe import Recipe, make_optimizer, make_scheduler
from .rng import RngStream
from .state import clear_state, fingerprint_of
from .task import LayerDistillationTask, SharedTeacher
from .watch import RunFiles, best_modules, live_enabled, write_best, write_log_csv

log = logging.getLogger("dyn")


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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
    teacher_layers: tuple[str, ...] = ()  # module-name globs; none: timm's forward_intermediates
    student_layers: tuple[str, ...] = ()

    def fingerprint(self, world_size: int) -> str:
        # The spec holds its own method's options only: changing another method's does not retrain (or
        # un-resume) a run; layer globs only where there are some.
        globs = (self.teacher_layers, self.student_layers) if self.teacher_layers or self.student_layers else ()
        return fingerprint_of(self.spec.to_dict(), self.pairs, self.teacher_arch, self.teacher_sha256,
                              self.student_arch, self.dataset_cfg, self.recipe.result_dict(),
                              dataclasses.asdict(self.snapshots), *globs, world_size)


def aligned_pairs(spec: RunSpec, student_arch: str, teacher_arch: str, teacher_phases: str | Path | None = None,
                  student_layers: Sequence[str] = (), teacher_layers: Sequence[str] = ()) -> list[tuple[int, int]]:
    """The spec's (student, teacher) block pairs, checked against both models' depths; `auto` specs
    read the teacher's bottleneck from its phases.csv."""
    if not METHODS[spec.method].aligned:
        return []
    bottleneck = None
    if layers.is_auto(spec.layers):
        from ..analysis.phases import read_bottleneck

        if teacher_phases is None:
            raise UserError(f"layer spec '{spec.layers}' needs the teacher's phases.csv (--teacher-phases)")
        bottleneck = read_bottleneck(teacher_phases)
    return layers.parse(spec.layers, depth_of(student_arch, student_layers), depth_of(teacher_arch, teacher_layers),
                        bottleneck)


def distill(specs: Sequence[RunSpec], teacher_arch: str, teacher_checkpoint: str | Path, student_arch: str,
            dataset_cfg: dict, recipe: Recipe, out_dirs: Sequence[str | Path], *, snapshots: Snapshots,
            state_path: str | Path | None = None, device: str = "auto", teacher_phases: str | Path | None = None,
            finished_dir: str | Path | None = None, teacher_layers: Sequence[str] = (),
            student_layers: Sequence[str] = ()) -> list[dict] | None:
    """Train a cohort of students of one teacher, one architecture and one seed (one spec: a plain run),
    each for its own epochs; write each run's directory (`out_dirs`, in the order of `specs`); return their
    summaries (None off the main process).

    The cohort reads one data stream and runs the teacher once per batch for all students; each
    student draws its randomness from its own stream, so it ends exactly as it would alone. A student
    whose loss is not finite stops, the others finish and are written, then NonFiniteLoss names it.
    Under torchrun this is data-parallel: every process trains its shard, the main one writes files.
    `teacher_phases`: the teacher's phases.csv, for `auto` layer specs (each spec holds its method's
    options, such as `lowpass_keep`; training/methods.py); `finished_dir`: where
    finished runs are kept, and from where a run finished before under the same key is restored, not trained;
    `teacher_layers`, `student_layers`: module-name globs of the models' layers (forward hooks), if any.
    """
    started = time.perf_counter()
    state_path = Path(state_path) if state_path else None
    specs = _check_cohort(list(specs), len(out_dirs))
    out_dirs = [Path(out_dir) for out_dir in out_dirs]
    pairs = [aligned_pairs(spec, student_arch, teacher_arch, teacher_phases, student_layers, teacher_layers)
             for spec in specs]  # before any load
    world = distributed.init(device)
    try:
        teacher_sha256 = sha256_of(existing_checkpoint(teacher_checkpoint))
        setups = [RunSetup(spec, spec_pairs, teacher_arch, str(teacher_checkpoint), teacher_sha256, student_arch,
                           dataset_cfg, recipe, snapshots, tuple(teacher_layers), tuple(student_layers))
                  for spec, spec_pairs in zip(specs, pairs)]
        keys = [finished.reuse_key(setup.fingerprint(world.size), world.device.type) for setup in setups]
        kept = [finished_dir is not None and finished.is_kept(finished_dir, spec.run_id, key)
                for spec, key in zip(specs, keys)]
        summaries: dict[int, dict] = {}
        if world.is_main:
            for i in [i for i, is_kept in enumerate(kept) if is_kept]:
                finished.restore(finished_dir, specs[i].run_id, out_dirs[i])
                summaries[i] = json.loads((out_dirs[i] / "summary.json").read_text())
        to_train = [i for i, is_kept in enumerate(kept) if not is_kept]
        if to_train:
            written = _train_cohort([setups[i] for i in to_train], [out_dirs[i] for i in to_train],
                                    [keys[i] for i in to_train], world, state_path, finished_dir, started)
            summaries.update(zip(to_train, written or []))
        if world.is_main:
            clear_state(state_path)
        return [summaries[i] for i in range(len(specs))] if world.is_main else None
    finally:
        distributed.barrier(world)
        distributed.shutdown(world)


def _train_cohort(setups: list[RunSetup], out_dirs: list[Path], keys: list[str], world, state_path: Path | None,
                  finished_dir: str | Path | None, started: float) -> list[dict] | None:
    """Train the students of `setups` as one cohort, write their run directories and keep them in
    `finished_dir` under `keys`; their summaries on the main process. A stopped student raises
    NonFiniteLoss after the others are written and kept."""
    recipe, snapshots = setups[0].recipe, setups[0].snapshots
    precision = Precision.of(world.device, recipe.amp, recipe.amp_dtype)
    members, teacher, train, val, snapshot_images = _build_cohort(setups, world, precision)
    live = None
    if world.is_main and (recipe.tensorboard or live_enabled()):
        live = {member.name: RunFiles(out_dir, _evolution_attrs(setup), recipe.tensorboard, live_enabled())
                for member, setup, out_dir in zip(members, setups, out_dirs)}
    fit(Loop(members, train, val, world, precision, teacher=teacher,
             log_interval=recipe.log_interval, state_path=state_path,
             snapshot=lambda model: layer_profile(model, snapshot_images, snapshots.bins,
                                                  entropy_range=snapshots.entropy_range),
             snapshot_every=snapshots.every, live=live, noun="student"))
    written = None
    if world.is_main:
        names = [m.name for m in members]
        written = []
        for member, setup, out_dir, key in zip(members, setups, out_dirs, keys):
            if member.stopped is None:
                written.append(_write_run(out_dir, member, setup, world, time.perf_counter() - started, names,
                                          live_written=live is not None and live_enabled()))
                if finished_dir is not None:
                    finished.keep(finished_dir, setup.spec.run_id, key, out_dir)
    raise_if_stopped(members)  # after the finished students are written; their state stays for a rerun
    return written


def _check_cohort(specs: list[RunSpec], n_out_dirs: int) -> list[RunSpec]:
    """A cohort is distinct runs of one seed (their batches are the same epoch by epoch; each stops after
    its own epochs), each with its output directory."""
    if not specs or len(specs) != n_out_dirs:
        raise ValueError(f"{len(specs)} runs but {n_out_dirs} output directories")
    if len({spec.seed for spec in specs}) > 1 or len({spec.run_id for spec in specs}) < len(specs):
        raise UserError("the runs of a cohort must be distinct and share one seed, got "
                        + ", ".join(spec.run_id for spec in specs))
    return specs


def _build_cohort(setups: list[RunSetup], world, precision: Precision):
    """The students (each a member of the loop, built in its own random stream), the teacher they share,
    the training and validation batches and the snapshot images."""
    recipe, dataset_cfg, first = setups[0].recipe, setups[0].dataset_cfg, setups[0]
    teacher = DistillationTeacher(load_checkpoint(first.teacher_arch, first.teacher_checkpoint,
                                                  layers=first.teacher_layers), device=world.device)
    n_classes = num_classes(build_dataset(dataset_cfg, "val"))
    if classes_of(teacher.model) != n_classes:
        raise UserError(f"teacher {first.teacher_arch} has {classes_of(teacher.model)} classes but the dataset has "
                        f"{n_classes}")
    tasks, streams = [], []
    for setup in setups:
        stream = RngStream(setup.spec.seed, world.device)
        with stream.active():  # initialisation (student, projector) from the student's own stream
            student = create_model(setup.student_arch, num_classes=n_classes, layers=setup.student_layers,
                                   drop_path_rate=recipe.drop_path or None)
            tasks.append(LayerDistillationTask(student, teacher, setup.pairs, setup.spec.method, alpha=recipe.alpha,
                                               temperature=recipe.temperature, beta=setup.spec.beta,
                                               label_smoothing=recipe.label_smoothing, device=world.device,
                                               options=dict(setup.spec.options)).to(world.device))
        streams.append(stream)
        if world.is_main:
            log.info("run %s: %s <- %s, pairs (student, teacher) %s, %d process(es) on %s", setup.spec.run_id,
                     setup.student_arch, setup.teacher_arch, setup.pairs, world.size, world.device)
    student = tasks[0].trainable_module.student  # one architecture: one transform, one set of snapshot images
    train, val = split_batches(dataset_cfg, student, recipe, first.spec.seed, world)
    snapshot_images = first.snapshots.images(dataset_cfg, student, recipe)
    shared = SharedTeacher(tasks)
    translators.estimate_translators(setups, tasks, shared, student, world)
    if recipe.teacher_cache and train.tensors is not None:
        # Inputs are deterministic: the teacher's outputs for a sample never change, compute them once.
        shared.build_cache(train.tensors[0], recipe.eval_batch_size, world.device)
    if recipe.compile:
        shared.compile()
    members = []
    for setup, task, stream in zip(setups, tasks, streams):
        _prepare(task, recipe, world)
        optimizer = make_optimizer(task.trainable_module, recipe)
        members.append(Member(setup.spec.run_id, task, optimizer,
                              make_scheduler(optimizer, recipe, setup.spec.epochs, len(train)), stream,
                              setup.spec.epochs, setup.fingerprint(world.size), precision.new_scaler(),
                              keep_best=best_modules))
    if world.is_main and len(members) > 1:
        log.info("cohort of %d students: one data stream, one teacher forward per batch (teacher layers %s)",
                 len(members), shared.layers)
    return members, shared, train, val, snapshot_images


def _prepare(task: LayerDistillationTask, recipe: Recipe, world) -> None:
    """EMA, compile and DDP wrappers of one student, as the recipe asks."""
    if recipe.ema:
        task.setup_ema(decay=recipe.ema_decay)
    if recipe.compile:
        task.compile()
    if world.distributed:
        task.prepare_distributed(device_ids=[world.device.index] if world.device.type == "cuda" else None)


def _write_run(out_dir: Path, member: Member, setup: RunSetup, world, wall_seconds: float, cohort: list[str],
               live_written: bool = False) -> dict:
    """The run directory's files; summary.json last, so that a summary means a complete run. `live_written`:
    log.csv, evolution.nc and the best weights are already there as the history has them (`RunFiles`)."""
    spec, task, history = setup.spec, member.task, member.history
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(task.get_eval_model(), out_dir / "student.safetensors")
    if task.has_ema():
        save_weights(task.get_eval_model(ema=True), out_dir / "student_ema.safetensors")
    if task.projector() is not None:
        save_weights(task.projector(), out_dir / "projector.safetensors")
    if METHODS[spec.method].estimate == "pca":
        translators.write_pca(out_dir / "pca.safetensors", task)
    if not live_written:
        write_best(out_dir, member.best)
        write_log_csv(out_dir / "log.csv", history.rows)
        write_evolution(out_dir / "evolution.nc", history.snapshots, _evolution_attrs(setup))
    summary = _summary(setup, history, world, wall_seconds, cohort, task)
    write_json(out_dir / "summary.json", summary)
    return summary


def _evolution_attrs(setup: RunSetup) -> dict:
    spec, snapshots = setup.spec, setup.snapshots
    return {"run": spec.run_id, "method": spec.method, "layers": spec.layers, "beta": spec.beta,
            "epochs": spec.epochs, "seed": spec.seed, "student": setup.student_arch, "teacher": setup.teacher_arch,
            "bins": snapshots.bins, "entropy_range": snapshots.entropy_range, "transform": snapshots.transform,
            "num_images": snapshots.num_images, "sample_selection": snapshots.describe(),
            "dataset": setup.dataset_cfg.get("name"), "dyn_version": __version__}


def _summary(setup: RunSetup, history, world, wall_seconds: float, cohort: list[str],
             task: LayerDistillationTask | None = None) -> dict:
    spec, recipe = setup.spec, setup.recipe
    final = history.rows[-1]
    best = max(history.rows, key=lambda row: row["top1"])
    total_images = sum(row["images_per_s"] * row["seconds"] for row in history.rows)
    total_seconds = sum(row["seconds"] for row in history.rows)
    summary = {
        "run": spec.run_id, "method": spec.method, "layers": spec.layers, "pairs": setup.pairs, "beta": spec.beta,
        "epochs": spec.epochs, "seed": spec.seed, "teacher": setup.teacher_arch, "student": setup.student_arch,
        "top1": final["top1"], "top5": final["top5"], "best_top1": best["top1"], "best_top5": best["top5"],
        "best_epoch": best["epoch"],
        # Times are the job's: a cohort's students share its wall time, each trained on every image.
        "wall_seconds": wall_seconds, "train_seconds": total_seconds,
        "images_per_second": total_images / total_seconds if total_seconds else None,
        "cohort": cohort, "world_size": world.size, "batch_size_per_process": recipe.batch_per_process(world.size),
        "global_batch_size": recipe.global_batch, "lr": recipe.lr(),
        "lr_rule": f"lr_base {recipe.lr_base} x global batch {recipe.global_batch} / {recipe.lr_base_size}",
        "recipe": recipe.to_dict(), "dataset": setup.dataset_cfg, "teacher_checkpoint": setup.teacher_checkpoint,
        "teacher_sha256": setup.teacher_sha256, "snapshots": dataclasses.asdict(setup.snapshots),
        **dict(spec.options),  # the method's options (lowpass_keep; pca_keep, pca_images)
        **(translators.pca_summary(task) if METHODS[spec.method].estimate == "pca" else {}),
        "versions": {"dyn": __version__, "torch": torch.__version__, "timm": _timm_version(),
                     "python": platform.python_version(), "cuda": torch.version.cuda},
        "git_commit": _git_commit(), "device": str(world.device), "devices": _device_names(world),
        "host": platform.node(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if "ema_top1" in final:
        summary.update(ema_top1=final["ema_top1"], ema_top5=final["ema_top5"])
    return summary


def _device_names(world) -> list[str]:
    """One entry per process: torchrun --standalone gives local rank r the r-th visible GPU."""
    if world.device.type != "cuda":
        return ["cpu"] * world.size
    return [torch.cuda.get_device_name(i) for i in range(min(world.size, torch.cuda.device_count()))]


def _timm_version() -> str:
    import timm

    return timm.__version__
