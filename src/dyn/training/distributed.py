"""Data-parallel training across processes started by torchrun (NCCL on GPUs, gloo on CPUs).

A run started without torchrun is a world of one: every helper here is then a no-op, so the
training code has one path for one process and for many.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` is CUDA when present, else CPU; a bare `cuda` means the process's local GPU. A name that is
    not a device, or a GPU this machine does not have, ends in one line."""
    from ..errors import UserError

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


def init(device_name: str = "auto") -> World:
    """The process group from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK), if there is one.

    Each process takes the GPU of its local rank among those visible; on CPU the backend is gloo.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank if size > 1 else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=size)
    return World(rank, size, local_rank, device)


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
