"""Random streams of their own: each student of a cohort and the data pipeline draw from one each.

Dropout, drop path, weight initialisation and the augmentations draw from the process's global
generators (torch, Python's `random`, numpy). A student trained in a cohort must draw exactly what it
draws trained alone, so each consumer keeps its own copy of those states and swaps it in around its
work (`with stream.active(): ...`). A swap costs microseconds against a training step.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def _global_state(cuda: torch.device | None = None) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": random.getstate(),
    }
    if cuda is not None:
        state["cuda"] = torch.cuda.get_rng_state(cuda)
    return state


def _set_global_state(state: dict, cuda: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if cuda is not None and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], cuda)


def _seeded_state(seed: int, cuda: torch.device | None) -> dict:
    outer = _global_state(cuda)
    try:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        # As torch.manual_seed does, but only the generators this stream owns: the CPU's and its GPU's.
        torch.default_generator.manual_seed(seed)
        if cuda is not None:
            torch.cuda.default_generators[cuda.index if cuda.index is not None else 0].manual_seed(seed)
        return _global_state(cuda)
    finally:
        _set_global_state(outer, cuda)


class RngStream:
    """The torch (CPU, and the GPU's where `device` is one), Python and numpy random states of one consumer."""

    def __init__(self, seed: int, device: torch.device | str = "cpu"):
        device = torch.device(device)
        self._cuda = device if device.type == "cuda" else None
        if self._cuda is not None:
            torch.cuda.init()  # its generators exist only once CUDA is up
        self._state = _seeded_state(seed, self._cuda)

    @contextlib.contextmanager
    def active(self):
        """Draw from this stream inside the block; the global generators are as before after it."""
        outer = _global_state(self._cuda)
        _set_global_state(self._state, self._cuda)
        try:
            yield self
        finally:
            self._state = _global_state(self._cuda)
            _set_global_state(outer, self._cuda)

    def state(self) -> dict:
        """The stream's state, for a resume file (tensors and plain values only)."""
        return dict(self._state)

    def load(self, state: dict) -> None:
        self._state = dict(state)


def data_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of the data pipeline's stream for one epoch of one process: a function of the run's
    seed alone, so every student of a cohort sees the batches it would see alone, and a resumed run
    the batches of an unbroken one."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63
