"""Distillation on aligned intermediate maps, built on timm's LogitDistillationTask.

timm's task brings the teacher wrapper (eval mode, input re-normalisation), the complementary
(1 - alpha) CE + alpha KD weighting, DDP and compile hooks. This adds what the paper needs:
losses on the (B, C, H, W) maps of aligned blocks (SpectralKD, ProjectorKD), and one teacher
forward shared by a cohort of students (SharedTeacher), with a cache of its outputs for
deterministic inputs.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import torch
import torch.nn as nn
from timm.task import DistillationTeacher, LogitDistillationTask

from . import losses
from ..models import features, layer_channels
from .methods import method as method_of


class AlignedStudent(nn.Module):
    """The trainable module: the student, plus ProjectorKD's projector, returning logits and aligned maps."""

    def __init__(self, student: nn.Module, layers: Sequence[int], projector: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.layers = list(layers)
        self.projector = projector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not self.layers:
            return self.student(x), []
        logits, maps = features(self.student, x, self.layers, with_logits=True)
        if self.projector is not None:
            maps = self.projector(maps)
        return logits, maps

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.student, "no_weight_decay", lambda: set())()
        return {f"student.{name}" for name in inner}


class LayerDistillationTask(LogitDistillationTask):
    """L = (1 - alpha) CE + alpha T^2 KL(teacher || student) + beta * L_feat(aligned maps), where the
    method (training/methods.py) gives L_feat, a transform of the teacher's maps before it, a projector of
    the student's, and `options` (a run spec's `options`; a missing one takes its default). A `pca` task needs
    its translators (`set_translators`, once, before training)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: Sequence[tuple[int, int]], method: str, *,
                 alpha: float, temperature: float, beta: float, label_smoothing: float,
                 device: torch.device | None = None, options: dict | None = None):
        spec = method_of(method)  # what the method needs
        options = dict(options or {})
        if set(options) - set(spec.options):
            raise ValueError(f"method '{method}' takes the options {sorted(spec.options)}, got {sorted(options)}")
        options = {name: options.get(name, option.default) for name, option in spec.options.items()}
        if not spec.aligned:
            pairs = []
        elif not pairs:
            raise ValueError(f"method '{method}' needs at least one aligned layer pair")
        # A cohort's tasks share one DistillationTeacher (SharedTeacher runs it); a bare model is wrapped.
        if not isinstance(teacher, DistillationTeacher):
            teacher = DistillationTeacher(teacher, device=device)
        super().__init__(student, teacher, criterion_kwargs=dict(smoothing=label_smoothing),
                         task_loss_weight=1.0 - alpha, temperature=temperature, device=device, verbose=False)
        self.method, self.definition = method, spec
        self.beta = beta
        self.options = options
        self.translators: dict[int, losses.ChannelPCA] = {}  # `pca`: per aligned teacher layer
        self.translator_images: int | None = None  # `pca`: the number of images they were estimated on
        self.pairs = list(pairs)
        self.teacher_layers = [t for _, t in self.pairs]
        student_layers = [s for s, _ in self.pairs]
        projector = None
        if spec.projector is not None:  # drawn from the caller's random stream, after the student
            projector = losses.ChannelProjector(layer_channels(student, student_layers),
                                                layer_channels(teacher.model, self.teacher_layers),
                                                trainable=spec.projector == "trained").to(self.device)
        self.trainable_module = AlignedStudent(student, student_layers, projector)

    # -- the loss --------------------------------------------------------------------------------
    def forward(self, input: torch.Tensor, target: torch.Tensor, teacher: "TeacherOutputs") -> dict[str, torch.Tensor]:
        """The loss parts on one batch, given the teacher's outputs for it (from the cohort's SharedTeacher)."""
        logits, maps = self.trainable_module(input)
        teacher_logits, teacher_maps = teacher.logits, [teacher.maps[t] for t in self.teacher_layers]
        task_loss = self.criterion(logits, target)
        kd_loss = losses.soft_kd_loss(logits, teacher_logits, self.temperature)
        total = self.task_loss_weight * task_loss + self.distill_loss_weight * kd_loss
        result = {"output": logits, "task_loss": task_loss, "kd_loss": kd_loss}
        if self.pairs:
            if self.definition.teacher_transform is not None:  # an encoding translator
                teacher_maps = self.definition.teacher_transform(self, teacher_maps)
            feature_loss = self.definition.feature_loss(self, maps, teacher_maps)
            total = total + self.beta * feature_loss
            result["feat_loss"] = feature_loss
        result["loss"] = total
        return result

    def set_translators(self, translators: dict[int, losses.ChannelPCA], images: int | None = None) -> None:
        """`pca`: the teacher's principal directions of each aligned teacher layer (SharedTeacher.estimate_pca),
        kept on the task's device in float32; `images`: how many images they were estimated on."""
        missing = sorted(set(self.teacher_layers) - set(translators))
        if missing:
            raise ValueError(f"no principal directions for teacher layer(s) {missing}")
        self.translators = {layer: losses.ChannelPCA(translators[layer].mean.to(self.device, torch.float32),
                                                     translators[layer].components.to(self.device, torch.float32),
                                                     translators[layer].explained)
                            for layer in self.teacher_layers}
        self.translator_images = images

    def translator(self, layer: int) -> losses.ChannelPCA:
        if layer not in self.translators:
            raise RuntimeError("method 'pca' needs the teacher's principal directions: call set_translators "
                               "(SharedTeacher.estimate_pca) before training")
        return self.translators[layer]

    def compile(self, backend: str = "inductor", mode: str | None = None, **kwargs) -> nn.Module:
        """torch.compile the student's training and eval forwards (SharedTeacher.compile does the teacher)."""
        student = self.trainable_module.student
        self.eval_model = torch.compile(student, backend=backend, mode=mode, **kwargs)
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **kwargs)
        return self.eval_model

    # -- what evaluation and checkpoints see -----------------------------------------------------
    def get_eval_model(self, module: nn.Module | None = None, ema: bool = False) -> nn.Module | None:
        """The bare student (or its EMA copy), without DDP, EMA or compile wrappers and the projector."""
        if not ema and module is None and hasattr(self, "eval_model"):
            return self.eval_model
        aligned = _aligned(super().get_eval_model(module=module, ema=ema))
        return aligned.student if aligned is not None else None

    def projector(self) -> nn.Module | None:
        return _aligned(self.trainable_module).projector


def _aligned(module: nn.Module | None) -> AlignedStudent | None:
    """The AlignedStudent inside DDP (`.module`), EMA (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while module is not None and not isinstance(module, AlignedStudent):
        module = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
    return module


class TeacherOutputs(NamedTuple):
    """The teacher's logits for a batch, and its maps of the aligned layers by block index."""

    logits: torch.Tensor
    maps: dict[int, torch.Tensor]


class SharedTeacher:
    """The teacher's forward for a cohort: logits and the maps of the union of its students' aligned
    teacher layers, computed once per batch for all of them, or looked up in a cache built once."""

    def __init__(self, tasks: Sequence[LayerDistillationTask]):
        first = tasks[0]
        if any(task.teacher is not first.teacher for task in tasks):
            raise ValueError("the tasks of a cohort must share one teacher")
        self.teacher = first.teacher  # timm's DistillationTeacher: eval mode, input re-normalisation
        self.student_mean, self.student_std = first.student_mean, first.student_std
        self.layers = sorted({layer for task in tasks for layer in task.teacher_layers})
        self.cache: TeacherOutputs | None = None

    def forward(self, images: torch.Tensor) -> TeacherOutputs:
        """Logits and maps under inference mode, returned as ordinary tensors."""
        with torch.inference_mode():
            x = self.teacher.normalize_input(images, self.student_mean, self.student_std)
            # One code path with or without aligned layers (SoftKD alone: block 0's map, unused), so a
            # student's teacher logits come from the same operations alone and in any cohort.
            logits, maps = features(self.teacher.model, x, self.layers or [0], with_logits=True)
        # Inference tensors cannot be saved for backward; a clone outside the mode can.
        return TeacherOutputs(logits.clone(), {layer: m.clone() for layer, m in zip(self.layers, maps)})

    def __call__(self, images: torch.Tensor, index: torch.Tensor | None = None) -> TeacherOutputs:
        if self.cache is None or index is None:
            return self.forward(images)
        index = index.to(self.cache.logits.device)
        return TeacherOutputs(self.cache.logits[index], {layer: m[index] for layer, m in self.cache.maps.items()})

    def build_cache(self, images: torch.Tensor, batch_size: int, device: torch.device) -> TeacherOutputs:
        """Run the teacher once over all (deterministic) training images; batches then look them up."""
        parts = [self.forward(images[start:start + batch_size].to(device))
                 for start in range(0, images.shape[0], batch_size)]
        self.cache = TeacherOutputs(torch.cat([p.logits for p in parts]),
                                    {layer: torch.cat([p.maps[layer] for p in parts]) for layer in self.layers})
        return self.cache

    def estimate_pca(self, images: torch.Tensor, requests: Iterable[tuple[int, float]], batch_size: int,
                     device: torch.device) -> dict[tuple[int, float], losses.ChannelPCA]:
        """The `pca` translators of a cohort: for each requested (teacher layer, keep), the layer's channel
        mean and top principal directions over every image and position of `images`, through the teacher
        as `forward` runs it (inference mode, the student's normalisation re-normalised to the teacher's),
        in float32 outside autocast, covariance in float64. One teacher pass for all the layers, one
        covariance per layer, one eigendecomposition per (layer, keep)."""
        requests = sorted(set(requests))
        layers = sorted({layer for layer, _ in requests})
        moments = {layer: losses.ChannelMoments() for layer in layers}
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            for start in range(0, images.shape[0], batch_size):
                x = self.teacher.normalize_input(images[start:start + batch_size].to(device), self.student_mean,
                                                 self.student_std)
                _, maps = features(self.teacher.model, x, layers, with_logits=True)
                for layer, fmap in zip(layers, maps):
                    moments[layer].add(fmap)
        return {(layer, keep): losses.channel_pca(moments[layer], keep) for layer, keep in requests}

    def compile(self, backend: str = "inductor", mode: str | None = None, **kwargs) -> None:
        self.teacher.model = torch.compile(self.teacher.model, backend=backend, mode=mode, **kwargs)
