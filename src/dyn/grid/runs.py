"""The distillation grid's points and their run ids (pure Python: the Snakefile imports this)."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from . import layers
from ..errors import UserError

# projector: ProjectorKD as the authors' code runs it (frozen random projection); projector_trained: its
# projection trained, as the paper describes it; lowpass: SpectralKD against a low-passed teacher; pca:
# SpectralKD against the teacher projected onto its top principal directions (order-free).
# The order is the report's: Table 1's rows sort by METHODS.index.
METHODS = ("softkd", "spectral", "projector", "projector_trained", "lowpass", "pca")


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


def cohort_from_json(text: str, epochs: int | None, seed: int) -> list[RunSpec]:
    """The students of a cohort from `dyn distill --runs`: a JSON list of {"method", "layers", "beta",
    "epochs"}; a run without its own `epochs` takes `epochs`."""
    example = '[{"method": "softkd"}, {"method": "spectral", "layers": "First1", "beta": 0.2}]'
    try:
        runs = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--runs is not valid JSON ({error.msg}): give a list like {example}") from None
    if not isinstance(runs, list) or not runs or not all(isinstance(run, dict) for run in runs):
        raise UserError(f"--runs must be a non-empty JSON list of objects, like {example}")
    specs = []
    for run in runs:
        unknown = sorted(set(run) - {"method", "layers", "beta", "epochs"})
        beta, run_epochs = run.get("beta", 0.0), run.get("epochs", epochs)
        if unknown or "method" not in run:
            raise UserError(f"--runs entry {json.dumps(run)}: needs 'method', may have 'layers', 'beta' and "
                            f"'epochs' (not {', '.join(unknown) or 'nothing else'})")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
            raise UserError(f"--runs entry {json.dumps(run)}: beta must be a number >= 0")
        if isinstance(run_epochs, bool) or not isinstance(run_epochs, int):
            raise UserError(f"--runs entry {json.dumps(run)}: needs its 'epochs' (an integer >= 1) or --epochs")
        specs.append(RunSpec(run["method"], run.get("layers", "none"), float(beta), run_epochs, seed))
    return specs


def cohorts(specs: list[RunSpec], together: bool = True, size: int = 16,
            across_epochs: bool = False) -> dict[str, list[RunSpec]]:
    """The distillation jobs of a grid: {cohort id: its runs}, in config order.

    With `together`, the runs that see the same batches are trained in one job: those of one epoch
    count and one seed (a config has one teacher, one student architecture, one dataset and one
    recipe), ids `cohort_e{epochs}_s{seed}`. With `across_epochs` too, all the runs of one seed, ids
    `cohort_s{seed}`: epoch e's batches are the same whatever the epoch count, each run stops after its
    own. A group larger than `size` is split into the fewest near-equal parts that fit, `..._1of2`,
    `..._2of2`. Without `together`, every run is a job of its own, its run id its cohort id.
    """
    if size < 1:
        raise UserError(f"distill.cohort_size must be at least 1, got {size}")
    if not together:
        return {spec.run_id: [spec] for spec in specs}
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        name = f"cohort_s{spec.seed}" if across_epochs else f"cohort_e{spec.epochs}_s{spec.seed}"
        groups.setdefault(name, []).append(spec)
    jobs: dict[str, list[RunSpec]] = {}
    for name, runs in groups.items():
        parts = math.ceil(len(runs) / size)
        bounds = [round(k * len(runs) / parts) for k in range(parts + 1)]
        for k in range(parts):
            suffix = f"_{k + 1}of{parts}" if parts > 1 else ""
            jobs[f"{name}{suffix}"] = runs[bounds[k]:bounds[k + 1]]
    return jobs


def rule_name(cohort_id: str) -> str:
    """The Snakemake rule of a cohort's job: `distill_` and the id with anything but letters, digits
    and '_' replaced by '_' (run ids hold '+' and '.')."""
    return "distill_" + re.sub(r"\W", "_", cohort_id)
