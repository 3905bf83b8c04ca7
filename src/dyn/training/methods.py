"""The distillation methods: name -> what the method needs. The task, the run spec, the CLI's choices and
the config schema's enum all follow METHODS (a test holds the schema to it).

Adding a method is one entry here, its loss or translator in losses.py, and their tests. Importing this
module imports no torch (the Snakefile reads it at every start): the loss parts import losses.py when
they are first called.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from ..errors import UserError


@dataclass(frozen=True)
class Option:
    """A method option: its library default, type and valid range (low, or (0, 1] with `low_open`)."""

    default: float | int
    kind: type = float
    low: float = 0.0
    high: float | None = None
    low_open: bool = False
    help: str = ""

    def check(self, name: str, value) -> float | int:
        """The value as `kind`, or UserError naming the option and what is valid."""
        valid = (isinstance(value, (int, float)) and not isinstance(value, bool)
                 and (self.kind is float or float(value).is_integer()) and math.isfinite(value)
                 and (value > self.low if self.low_open else value >= self.low)
                 and (self.high is None or value <= self.high))
        if not valid:
            bounds = (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]" if self.high is not None
                      else f"{'>' if self.low_open else '>='} {self.low:g}")
            raise UserError(f"{name} must be {'an integer' if self.kind is int else 'a number'} {bounds}, "
                            f"got {value!r}")
        return self.kind(value)


# The loss parts, (task, student maps, teacher maps) -> loss and (task, teacher maps) -> teacher maps; the
# task is a LayerDistillationTask (its options, projector and translators).
def _spectral(task, maps, teacher_maps):
    from .losses import spectral_loss

    return spectral_loss(maps, teacher_maps)


def _projector(task, maps, teacher_maps):  # `maps` are projected and normalised already
    from .losses import projector_loss

    return projector_loss(maps, teacher_maps, task.projector().teacher_norms)


def _lowpass(task, teacher_maps):
    from .losses import lowpass_channels

    return [lowpass_channels(m, task.options["lowpass_keep"]) for m in teacher_maps]


def _pca(task, teacher_maps):
    from .losses import pca_project

    return [pca_project(m, *task.translator(t)[:2]) for m, t in zip(teacher_maps, task.teacher_layers)]


@dataclass(frozen=True)
class Method:
    """What a method needs: aligned teacher layers or not, the feature loss on the aligned maps, a
    transform of the teacher's maps before it (an encoding translator), a projector of the student's maps
    (None, "frozen" or "trained"), a translator estimated once before training ("pca"), its options."""

    about: str
    aligned: bool = True
    feature_loss: Callable | None = _spectral
    teacher_transform: Callable | None = None
    projector: str | None = None
    estimate: str | None = None
    options: dict[str, Option] = field(default_factory=dict)


# The order is the report's: Table 1's rows sort by it.
METHODS: dict[str, Method] = {
    "softkd": Method("logits only: (1 - alpha) CE + alpha KD", aligned=False, feature_loss=None),
    "spectral": Method("SpectralKD: MSE of the aligned maps' 2-D FFTs"),
    "projector": Method("ProjectorKD as the authors' code runs it: a frozen random projection, BN, MSE",
                        feature_loss=_projector, projector="frozen"),
    "projector_trained": Method("ProjectorKD as the paper describes it: the projection trained",
                                feature_loss=_projector, projector="trained"),
    "lowpass": Method("SpectralKD against the teacher's maps low-passed along channels (the encoding translator)",
                      teacher_transform=_lowpass,
                      options={"lowpass_keep": Option(0.25, high=1, low_open=True,
                                                      help="share of the channel frequencies kept")}),
    "pca": Method("SpectralKD against the teacher's maps on their top principal directions (order-free)",
                  teacher_transform=_pca, estimate="pca",
                  options={"pca_keep": Option(0.25, high=1, low_open=True,
                                              help="share of each aligned teacher layer's principal directions"),
                           "pca_images": Option(256, kind=int, low=1,
                                                help="training images the directions are estimated on")}),
}

OPTIONS: dict[str, Option] = {name: option for method in METHODS.values() for name, option in method.options.items()}


def method(name: str) -> Method:
    """The method called `name`, or UserError listing the valid ones."""
    if name not in METHODS:
        raise UserError(f"unknown method '{name}': valid methods are {', '.join(METHODS)}")
    return METHODS[name]


def markdown_table() -> str:
    """The registry as config/README.md shows it (a test holds the two equal)."""
    def named(function):  # the loss parts by their names here, without the underscore
        return function.__name__.lstrip("_") if function else "-"

    lines = ["| method | aligned layers | L_feat | teacher's maps through | projector | options (default) "
             "| what it is |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in METHODS.items():
        options = "; ".join(f"`{key}` ({option.default:g}): {option.help}"
                            for key, option in entry.options.items()) or "-"
        lines.append(f"| `{name}` | {'yes' if entry.aligned else 'no'} | {named(entry.feature_loss)} | "
                     f"{named(entry.teacher_transform)} | {entry.projector or '-'} | {options} | {entry.about} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m dyn.training.methods: the table for config/README.md
    print(markdown_table(), end="")
