"""Models of a user's own code, named `package.module:function`: imported, called with `num_classes`,
loaded from a checkpoint by `load_state_dict`."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .errors import UserError
from .files import first_line


def is_factory(arch: str) -> bool:
    """Whether `arch` names a user's function, `package.module:function`, rather than a timm model."""
    return ":" in arch and not arch.startswith("hf-hub:")


def _function(arch: str):
    """The function `package.module:function` names, imported from the Python path; one line if it cannot be."""
    import importlib

    module_name, _, function = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or the module's own error at import
        raise UserError(f"cannot import {module_name} for model '{arch}': {first_line(error)} "
                        "(add its folder to the config's python_path)") from None
    if not callable(getattr(module, function, None)):
        raise UserError(f"model '{arch}': {module_name} has no function {function}")
    return getattr(module, function)


def build_factory(arch: str, pretrained: bool, num_classes: int | None) -> nn.Module:
    """The user's function called with `num_classes` (timm's default 1000 where none is given)."""
    if pretrained:
        raise UserError(f"model '{arch}' is a user's function: it has no hub weights (weights: a file or URL)")
    try:
        model = _function(arch)(num_classes=1000 if num_classes is None else num_classes)  # timm's default
    except UserError:
        raise
    except Exception as error:
        raise UserError(f"model '{arch}' failed to build: {type(error).__name__}: {first_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model '{arch}' returned {type(model).__name__}, not a torch.nn.Module")
    if not isinstance(getattr(model, "pretrained_cfg", None), dict):
        # timm's transforms and its DistillationTeacher read it: timm's defaults (224 px, ImageNet's mean
        # and std) where the model does not say its own input size and normalisation
        from timm.data import resolve_data_config

        model.pretrained_cfg = resolve_data_config(model=model)
    return model


def factory_from_checkpoint(arch: str, path: Path, state: dict, num_classes: int | None) -> nn.Module:
    """A user's model with the weights `state` read from `path`; without `num_classes`, the rows of the
    state dict's last 2-D weight (its classifier, which comes last in a module's state dict) decide the
    class count."""
    if num_classes is None:
        last = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
        num_classes = int(last[-1].shape[0]) if last else None
    model = build_factory(arch, False, num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise UserError(f"checkpoint {path} does not fit {arch}: {first_line(error)}") from None
    return model
