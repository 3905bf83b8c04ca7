"""Distillation losses: soft KD on logits, the two feature losses on aligned (B, C, H, W) maps, and the
two encoding translators of a teacher map (a channel low-pass; its top principal directions)."""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

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


def pca_components(keep: float, channels: int) -> int:
    """How many principal directions the `pca` translator keeps of a C-channel layer: max(1, ceil(keep C))
    (rounded first, so that 0.3 x 10 is 3, not 4)."""
    return max(1, math.ceil(round(keep * channels, 9)))


class ChannelMoments:
    """Running channel mean and covariance of (B, C, H, W) maps over every image and position, in float64.

    Sums are taken about a shift (the first batch's mean), so a large mean costs no precision."""

    def __init__(self):
        self.count = 0
        self.shift = self.sum = self.outer = None

    def add(self, x: torch.Tensor) -> None:
        vectors = x.detach().movedim(1, -1).reshape(-1, x.shape[1]).double()  # (positions, C)
        if self.shift is None:
            self.shift = vectors.mean(dim=0)
            self.sum = torch.zeros_like(self.shift)
            self.outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=vectors.device)
        centred = vectors - self.shift
        self.count += centred.shape[0]
        self.sum += centred.sum(dim=0)
        self.outer += centred.T @ centred

    def mean(self) -> torch.Tensor:
        return self.shift + self.sum / self.count

    def covariance(self) -> torch.Tensor:
        """The unbiased covariance (n - 1), as np.cov."""
        centre = self.sum / self.count
        return (self.outer - self.count * torch.outer(centre, centre)) / max(self.count - 1, 1)


class ChannelPCA(NamedTuple):
    """The `pca` translator of one layer: its channel mean (C,), its top principal directions as the
    orthonormal columns of `components` (C, k), and the share of the channel variance they explain."""

    mean: torch.Tensor
    components: torch.Tensor
    explained: float


def channel_pca(moments: ChannelMoments, keep: float) -> ChannelPCA:
    """The top max(1, ceil(keep C)) eigenvectors of the channel covariance (float64, on the CPU: the same
    LAPACK on every device), largest first."""
    covariance = moments.covariance().cpu()
    values, vectors = torch.linalg.eigh(covariance)  # ascending
    k = pca_components(keep, covariance.shape[0])
    values, vectors = values.flip(0), vectors.flip(1)
    total = float(values.clamp(min=0).sum())
    explained = float(values[:k].clamp(min=0).sum()) / total if total > 0 else 1.0
    return ChannelPCA(moments.mean().cpu(), vectors[:, :k].contiguous(), explained)


def pca_project(x: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """The order-free encoding translator: each position's channel vector of a (B, C, H, W) map projected
    onto the layer's top principal directions, m + V V^T (x - m), C channels again (float32). Permuting
    the channels of the maps the estimate came from permutes the result the same way."""
    mean, components = mean.to(x.device, torch.float32), components.to(x.device, torch.float32)
    centred = x.float().movedim(1, -1) - mean
    return ((centred @ components) @ components.T + mean).movedim(-1, 1)


class ChannelProjector(nn.Module):
    """ProjectorKD's modules, one set per aligned pair: a Linear(C_s, C_t) applied at every position of
    the student map, a BatchNorm2d(C_t) on the projected student map and one on the teacher map (batch
    statistics while training, as every BatchNorm2d does).

    `trainable=False` is the authors' code: it creates these modules inside the loss at the first forward,
    after the optimiser was built, so nothing here is ever trained: a frozen random projection (PyTorch's
    default Linear init) and both BatchNorm affines frozen at identity. `trainable=True` is the paper's
    text, "a learnable projector": the projection and the student-side affine are trained; the
    teacher-side BatchNorm stays a fixed standardisation (a trainable affine on the target would let both
    BatchNorm weights shrink to 0 and the loss with them). Frozen parameters still pass gradients on to
    the student's maps."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], trainable: bool = False):
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(s, t) for s, t in zip(student_channels, teacher_channels))
        self.student_norms = nn.ModuleList(nn.BatchNorm2d(t) for t in teacher_channels)
        self.teacher_norms = nn.ModuleList(nn.BatchNorm2d(t) for t in teacher_channels)
        self.teacher_norms.requires_grad_(False)
        if not trainable:
            self.requires_grad_(False)

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The student's maps projected to the teacher's widths and batch-normalised (float32: the
        statistics of a bfloat16 map are coarse)."""
        return [norm(linear(x.movedim(1, -1)).movedim(-1, 1).float())
                for linear, norm, x in zip(self.maps, self.student_norms, maps)]


def projector_loss(projected_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor],
                   teacher_norms: Sequence[nn.Module]) -> torch.Tensor:
    """ProjectorKD: MSE between the projected, normalised student maps (ChannelProjector's output) and the
    teacher maps, each average-pooled to the student's grid where they differ and then normalised by its
    pair's `teacher_norms` module; averaged over pairs. No FFT, as in the authors' code.

    The teacher side is applied here, not in the projector's forward: the trainable part runs inside the
    student's (DDP-wrapped) forward, the teacher's maps reach only the loss."""
    if not len(projected_maps) == len(teacher_maps) == len(teacher_norms) or not projected_maps:
        raise ValueError(f"projector_loss needs equally many (>0) maps and norms, got {len(projected_maps)}, "
                         f"{len(teacher_maps)} and {len(teacher_norms)}")
    losses = []
    for student, teacher, norm in zip(projected_maps, teacher_maps, teacher_norms):
        teacher = teacher.float()
        if student.shape[-2:] != teacher.shape[-2:]:
            teacher = F.adaptive_avg_pool2d(teacher, student.shape[-2:])
        losses.append(F.mse_loss(student.float(), norm(teacher)))
    return torch.stack(losses).mean()
