"""Distillation losses: soft KD on logits, and the two feature losses on aligned (B, C, H, W) maps."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def soft_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of temperature-softened distributions, batch mean, times T^2."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature ** 2


def pool_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Adaptive average pooling over the channel axis of a (B, C, H, W) map down to `channels`."""
    if x.shape[1] == channels:
        return x
    b, c, h, w = x.shape
    pooled = F.adaptive_avg_pool1d(x.permute(0, 2, 3, 1).reshape(b * h * w, 1, c), channels)
    return pooled.reshape(b, h, w, channels).permute(0, 3, 1, 2)


def _match(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring two maps to the same shape: the wider is pooled over channels, the larger grid spatially."""
    channels = min(student.shape[1], teacher.shape[1])
    student, teacher = pool_channels(student, channels), pool_channels(teacher, channels)
    if student.shape[-2:] != teacher.shape[-2:]:
        teacher = F.adaptive_avg_pool2d(teacher, student.shape[-2:])
    return student, teacher


def _spectrum_2d(x: torch.Tensor) -> torch.Tensor:
    # The FFT runs in float32 whatever the autocast dtype: bf16 FFTs lose the high frequencies.
    return torch.view_as_real(torch.fft.rfft2(x.float(), dim=(-2, -1), norm="ortho"))


def spectral_loss(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """SpectralKD: MSE between stacked real/imaginary 2-D FFTs over (y, x), averaged over pairs.

    The teacher map is average-pooled over channels to the student's width when it is wider.
    """
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(f"spectral_loss needs equally many (>0) maps, got {len(student_maps)} and {len(teacher_maps)}")
    losses = []
    for student, teacher in zip(student_maps, teacher_maps):
        student, teacher = _match(student, teacher)
        losses.append(F.mse_loss(_spectrum_2d(student), _spectrum_2d(teacher)))
    return torch.stack(losses).mean()


def lowpass_channels(x: torch.Tensor, keep: float) -> torch.Tensor:
    """The encoding translator: a (B, C, H, W) map low-passed along its channels. The FFT of each
    position's channel vector keeps its DC term and the lowest `keep` share of its C/2 other
    frequencies (k <= keep * C/2; 0.25 keeps k <= C/8, the low-pass score's band), the rest is zeroed,
    and the inverse FFT gives back C channels: the teacher's compact part without its distributed code."""
    c = x.shape[1]
    spectrum = torch.fft.rfft(x.float(), dim=1)
    spectrum[:, math.ceil(keep * (c // 2)) + 1:] = 0
    return torch.fft.irfft(spectrum, n=c, dim=1)


class ChannelProjector(nn.Module):
    """ProjectorKD's learnable linear maps over channels, one per aligned pair: student width -> teacher width."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]):
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(s, t) for s, t in zip(student_channels, teacher_channels))

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [linear(x.movedim(1, -1)).movedim(-1, 1) for linear, x in zip(self.maps, maps)]


def projector_loss(projected_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """ProjectorKD: MSE between projected student maps and teacher maps, averaged over pairs."""
    if len(projected_maps) != len(teacher_maps) or not projected_maps:
        raise ValueError(f"projector_loss needs equally many (>0) maps, got {len(projected_maps)} and {len(teacher_maps)}")
    losses = []
    for student, teacher in zip(projected_maps, teacher_maps):
        if student.shape[-2:] != teacher.shape[-2:]:
            teacher = F.adaptive_avg_pool2d(teacher, student.shape[-2:])
        losses.append(F.mse_loss(student.float(), teacher.float()))
    return torch.stack(losses).mean()
