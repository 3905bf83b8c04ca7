"""The distillation grid's points and their run ids (pure Python: the Snakefile imports this)."""
from __future__ import annotations

from dataclasses import dataclass

from . import layers
from ..errors import UserError

METHODS = ("softkd", "spectral", "projector", "lowpass")  # lowpass: SpectralKD against a low-passed teacher


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid: (method, aligned layers, beta, epochs, seed)."""

    method: str
    layers: str = "none"
    beta: float = 0.0
    epochs: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"unknown method '{self.method}': valid methods are {', '.join(METHODS)}")
        layers.check_syntax(self.layers)
        if self.method != "softkd" and layers.slug(self.layers) == "none":
            raise UserError(f"method '{self.method}' needs aligned layers (e.g. First1+Last1), got '{self.layers}'")
        if self.epochs < 1:
            raise UserError(f"epochs must be at least 1, got {self.epochs}")

    @property
    def run_id(self) -> str:
        """`{method}_{layers}_b{beta}_e{epochs}_s{seed}`, e.g. spectral_First1+Last1_b0.2_e30_s0."""
        if self.method == "softkd":
            return f"softkd_none_b0_e{self.epochs}_s{self.seed}"
        return f"{self.method}_{layers.slug(self.layers)}_b{self.beta:g}_e{self.epochs}_s{self.seed}"
