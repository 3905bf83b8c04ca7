"""The distillation grid's points and their run ids (pure Python: the Snakefile imports this)."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from . import layers
from ..errors import UserError
from ..training.methods import method as method_of  # no torch: a leaf module

FIELDS = ("method", "layers", "beta", "epochs", "seed", "options")


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid: (method, aligned layers, beta, epochs, seed) and the method's options.

    The defaults here are the library's, for a run spec given without a config (`dyn distill --runs`);
    a config's come from the schema (a test holds the two in step). Every field is checked here, where it
    enters from a config or the command line; `options` holds the method's options, each given or its
    default (training/methods.py), as sorted (name, value) pairs."""

    method: str
    layers: str = "none"
    beta: float = 0.0
    epochs: int = 1
    seed: int = 0
    options: tuple[tuple[str, float | int], ...] = ()

    def __post_init__(self):
        known = method_of(self.method)
        layers.check_syntax(self.layers)
        if known.aligned and layers.slug(self.layers) == "none":
            raise UserError(f"method '{self.method}' needs aligned layers (e.g. First1+Last1), got '{self.layers}'")
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not (
                math.isfinite(self.beta) and self.beta >= 0):
            raise UserError(f"beta must be a finite number >= 0, got {self.beta!r}")
        for name in ("epochs", "seed"):  # 30.0 is 30 (YAML and JSON may write it so), 30.5 is refused
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
                raise UserError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.epochs < 1:
            raise UserError(f"epochs must be at least 1, got {self.epochs}")
        given = dict(self.options)
        unknown = sorted(set(given) - set(known.options))
        if unknown:
            raise UserError(f"method '{self.method}' has no option {', '.join(unknown)}; its options are "
                            f"{', '.join(known.options) or 'none'}")
        object.__setattr__(self, "beta", float(self.beta))
        object.__setattr__(self, "options", tuple(sorted(
            (name, option.check(name, given.get(name, option.default))) for name, option in known.options.items())))

    @property
    def run_id(self) -> str:
        """`{method}_{layers}_b{beta}_e{epochs}_s{seed}`, e.g. spectral_First1+Last1_b0.2_e30_s0."""
        if self.method == "softkd":
            return f"softkd_none_b0_e{self.epochs}_s{self.seed}"
        return f"{self.method}_{layers.slug(self.layers)}_b{self.beta:g}_e{self.epochs}_s{self.seed}"

    def option(self, name: str) -> float | int:
        return dict(self.options)[name]

    def to_dict(self) -> dict:
        """Every field, `options` as a dict: what the workflow passes to `dyn distill --runs`."""
        return {"method": self.method, "layers": self.layers, "beta": self.beta, "epochs": self.epochs,
                "seed": self.seed, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, fields: dict) -> "RunSpec":
        """The spec of `to_dict`; `method` and `epochs` are needed, the rest defaults as above."""
        if not isinstance(fields, dict) or "method" not in fields or "epochs" not in fields:
            raise UserError(f"a run spec needs 'method' and 'epochs', got {json.dumps(fields)}")
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise UserError(f"a run spec has no field {', '.join(unknown)}; its fields are {', '.join(FIELDS)}")
        options = fields.get("options", {})
        if not isinstance(options, dict):
            raise UserError(f"a run spec's options are a JSON object, got {json.dumps(options)}")
        return cls(**{**fields, "options": tuple(options.items())})


def runs_from_json(text: str) -> list[RunSpec]:
    """The students of a cohort from `dyn distill --runs`: a JSON list of run specs (`RunSpec.to_dict`)."""
    example = ('[{"method": "softkd", "epochs": 30}, {"method": "spectral", "layers": "First1", "beta": 0.2, '
               '"epochs": 30}]')
    try:
        runs = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--runs is not valid JSON ({error.msg}): give a list like {example}") from None
    if not isinstance(runs, list) or not runs or not all(isinstance(run, dict) for run in runs):
        raise UserError(f"--runs must be a non-empty JSON list of objects, like {example}")
    specs = []
    for run in runs:
        try:
            specs.append(RunSpec.from_dict(run))
        except (UserError, TypeError) as error:
            raise UserError(f"--runs entry {json.dumps(run)}: {error}") from None
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
