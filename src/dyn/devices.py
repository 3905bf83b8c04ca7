"""Which device a process computes on: one place for every stage (capture, fetch, distillation)."""
from __future__ import annotations

import torch

from .errors import UserError


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` is CUDA when present, else CPU; a bare `cuda` means the process's local GPU. A name that is
    not a device, or a GPU this machine does not have, ends in one line."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"'{name}' is not a device: valid are auto, cpu, cuda and cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device '{name}' is not supported: valid are auto, cpu, cuda and cuda:N")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda" and not (torch.cuda.is_available() and device.index < torch.cuda.device_count()):
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise UserError(f"device '{name}': no CUDA device {device.index} here ({found} visible); use cpu or auto")
    return device
