"""Mixed precision: autocast of the forward passes on CUDA, and the gradient scaler float16 needs."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Precision:
    """Autocast of the forward passes, and whether float16 needs a gradient scaler (one per trained
    model) to keep its gradients from underflowing; both off (float32) unless enabled."""

    device_type: str = "cpu"
    dtype: torch.dtype = torch.bfloat16
    enabled: bool = False
    scaled: bool = False

    @classmethod
    def of(cls, device: torch.device, amp: bool, dtype: str = "bfloat16") -> "Precision":
        """Autocast in `dtype` on CUDA when `amp`; float32 on the CPU."""
        enabled = amp and device.type == "cuda"
        return cls(device.type, getattr(torch, dtype), enabled, enabled and dtype == "float16")

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def new_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.scaled else None


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler | None) -> None:
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)  # skipped where the scaled gradients overflowed
    scaler.update()
