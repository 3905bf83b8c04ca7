"""The authors' published numbers, shipped with the package: per-epoch training logs and the students'
per-block entropy over training (github.com/thy960112/Distillation-Dynamics; SOURCE.md says exactly
where from and what each column means).

`paper_curve(...)` and `paper_entropy(...)` take a run's setup (method, aligned layers, beta, epochs,
teacher and student timm names) and return the authors' numbers for that setup, or None where the
authors published none. `setup_of(mapping)` reads that setup from a run's summary.json or the attributes
of its evolution.nc.
"""
from __future__ import annotations

import csv
import functools
import math
from importlib import resources
from typing import Mapping

import numpy as np

from ..errors import UserError
from ..grid import layers as layer_specs

TEACHER = "cait_s24_224"
STUDENT = "deit_tiny_patch16_224"
LOG_VALUES = ("train_lr", "train_loss", "test_acc1", "test_acc5")
# timm's default pretrained tag of each untagged name the authors' runs use: `cait_s24_224` and
# `cait_s24_224.fb_dist_in1k` are the same weights.
_DEFAULT_TAGS = {"cait_s24_224": "fb_dist_in1k", "deit_tiny_patch16_224": "fb_in1k"}


def _read(name: str) -> list[dict]:
    with resources.files(__name__).joinpath(name).open(newline="") as f:
        return list(csv.DictReader(f))


@functools.lru_cache(maxsize=None)
def log_rows() -> tuple[dict, ...]:
    """Every row of logs.csv, numbers parsed (epoch 0-based, accuracies in percent)."""
    rows = []
    for row in _read("logs.csv"):
        row = dict(row, beta=float(row["beta"]), epochs=int(row["epochs"]), epoch=int(row["epoch"]))
        row.update({key: float(row[key]) for key in LOG_VALUES})
        rows.append(row)
    return tuple(rows)


@functools.lru_cache(maxsize=None)
def entropy_rows() -> tuple[dict, ...]:
    """Every row of entropy.csv, numbers parsed (epoch None for the best checkpoint, block 1-based)."""
    return tuple(dict(row, beta=float(row["beta"]), epochs=int(row["epochs"]), block=int(row["block"]),
                      epoch=int(row["epoch"]) if row["epoch"] else None, entropy=float(row["entropy"]))
                 for row in _read("entropy.csv"))


def _layers_key(method: str, layers: str | None) -> str:
    """A layer spec in a form that compares equal for the same pairs' spec: its parts, sorted."""
    if method == "softkd":
        return "none"
    try:
        slug = layer_specs.slug(str(layers))
    except UserError:
        slug = str(layers)
    return "+".join(sorted(slug.split("+")))


def same_model(name: str | None, paper_name: str) -> bool:
    """Whether timm name `name` is the authors' `paper_name`: equal, or the same architecture with timm's
    default pretrained tag where the authors' name has none."""
    if not name:
        return False
    if name == paper_name:
        return True
    base, _, tag = str(name).partition(".")
    return "." not in paper_name and base == paper_name and tag == _DEFAULT_TAGS.get(paper_name)


def _matches(row: Mapping, method: str, layers: str | None, beta: float, epochs: int, teacher: str | None,
             student: str | None) -> bool:
    if row["method"] != method or row["epochs"] != int(epochs):
        return False
    if _layers_key(method, layers) != _layers_key(row["method"], row["layers"]):
        return False
    if method != "softkd" and not math.isclose(float(beta), row["beta"], abs_tol=1e-9):
        return False
    return same_model(teacher, row["teacher"]) and same_model(student, row["student"])


def setup_of(mapping: Mapping) -> dict:
    """The setup keys of a run summary (or evolution.nc attributes): method, layers, beta, epochs, teacher,
    student, with numbers as Python numbers."""
    return {"method": str(mapping.get("method")), "layers": str(mapping.get("layers", "none")),
            "beta": float(mapping.get("beta", 0.0)), "epochs": int(mapping.get("epochs", 0)),
            "teacher": mapping.get("teacher"), "student": mapping.get("student")}


def paper_log(method: str, layers: str | None = "none", beta: float = 0.0, epochs: int = 300,
              teacher: str | None = TEACHER, student: str | None = STUDENT) -> str | None:
    """The name of the authors' log of this setup (e.g. `SoftKD.txt`), or None."""
    for row in log_rows():
        if _matches(row, method, layers, beta, epochs, teacher, student):
            return row["log"]
    return None


def paper_curve(method: str, layers: str | None = "none", beta: float = 0.0, epochs: int = 300,
                teacher: str | None = TEACHER, student: str | None = STUDENT) -> list[dict] | None:
    """The authors' per-epoch log of this setup, one dict per epoch in order: `epoch` (0-based),
    `train_lr`, `train_loss`, `test_acc1`, `test_acc5` (percent), `log`; None where they published none."""
    name = paper_log(method, layers, beta, epochs, teacher, student)
    if name is None:
        return None
    rows = [{"epoch": r["epoch"], **{k: r[k] for k in LOG_VALUES}, "log": name} for r in log_rows() if r["log"] == name]
    return sorted(rows, key=lambda r: r["epoch"])


def paper_entropy(method: str, layers: str | None = "none", beta: float = 0.0, epochs: int = 300,
                  teacher: str | None = TEACHER, student: str | None = STUDENT,
                  best: bool = False) -> dict[int, np.ndarray] | None:
    """The authors' per-block entropy (bits) of the student of this setup: {epoch N: array over blocks
    (block 1 first)} for their checkpoints after N = 30, 60, ..., 300 epochs (with `best`, also the key
    "best" for their best-top-1 checkpoint); None where they published no table for this setup."""
    rows = [r for r in entropy_rows() if _matches(r, method, layers, beta, epochs, teacher, student)]
    if not rows:
        return None
    out: dict = {}
    for key in dict.fromkeys(r["epoch"] if r["epoch"] is not None else "best" for r in rows):
        if key == "best" and not best:
            continue
        points = sorted((r["block"], r["entropy"]) for r in rows
                        if (r["epoch"] if r["epoch"] is not None else "best") == key)
        out[key] = np.array([value for _, value in points])
    return out
