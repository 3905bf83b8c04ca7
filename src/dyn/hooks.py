"""Layers picked by module name: globs over `named_modules()` and forward hooks that return their outputs
as the capture contract's (B, C, H, W) maps, for any torch model (with or without timm's
`forward_intermediates`).

Globs match dotted module names one component at a time: `*`, `?` and `[1-4]` within one component
(`blocks.*` is the blocks, not their children), `**` any number of components (`**.mlp`).
"""
from __future__ import annotations

import fnmatch
from typing import Sequence

import torch
import torch.nn as nn

from .errors import UserError


def _matches(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def matches(name: str, glob: str) -> bool:
    """Whether the dotted module name `name` matches `glob` (see the module's docstring)."""
    return _matches(name.split("."), glob.split("."))


def select(model: nn.Module, globs: Sequence[str], key: str = "layers") -> list[str]:
    """The names of `model`'s modules that match any of `globs`, in model order (`named_modules`);
    one line naming `key` for a glob that matches nothing."""
    names = [name for name, _ in model.named_modules() if name]
    for glob in globs:
        if not any(matches(name, glob) for name in names):
            top = ", ".join(name for name in names if "." not in name)
            raise UserError(f"{key}: '{glob}' matches no module of the model (its top-level modules: {top})")
    return [name for name in names if any(matches(name, glob) for glob in globs)]


def attach(model: nn.Module, globs: Sequence[str], key: str = "layers") -> nn.Module:
    """Mark `model` to give its features from forward hooks on the modules `globs` select."""
    model.dyn_layer_names = select(model, globs, key)
    return model


def layer_names(model: nn.Module) -> list[str] | None:
    """The module names `attach` chose, or None for a model that uses `forward_intermediates`."""
    return getattr(model, "dyn_layer_names", None)


def _grid(model: nn.Module) -> tuple[int, int] | None:
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    return (int(grid[0]), int(grid[1])) if grid is not None and len(grid) == 2 else None


def as_map(output, model: nn.Module) -> torch.Tensor:
    """A module's output as (B, C, H, W): maps as they are; tokens (B, N, C) on the model's patch grid
    after its class or register tokens (timm's `num_prefix_tokens`), or (B, C, N, 1) where there is no
    grid; vectors (B, C) as (B, C, 1, 1). Tuples and model outputs give their first tensor."""
    if not isinstance(output, torch.Tensor):
        output = next(value for value in (output.values() if isinstance(output, dict) else output)
                      if isinstance(value, torch.Tensor))
    if output.ndim == 4:
        return output
    if output.ndim == 2:
        return output[:, :, None, None]
    if output.ndim != 3:
        raise UserError(f"a hooked layer gave a {output.ndim}-D output of shape {tuple(output.shape)}; "
                        "layers must give (B, C, H, W) maps, (B, N, C) tokens or (B, C) vectors")
    grid, prefix = _grid(model), int(getattr(model, "num_prefix_tokens", 0) or 0)
    tokens = output.shape[1]
    if grid is not None and grid[0] * grid[1] in (tokens - prefix, tokens):
        patches = output[:, tokens - grid[0] * grid[1]:]  # the prefix tokens come first, as in timm
        return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], *grid)
    return output[:, prefix:].transpose(1, 2)[..., None]


def hooked_features(model: nn.Module, x: torch.Tensor, indices: Sequence[int]) -> tuple[torch.Tensor, list]:
    """(the model's output, the (B, C, H, W) maps of its hooked layers `indices`) from one forward pass."""
    names = layer_names(model)
    outputs: dict[int, torch.Tensor] = {}
    handles = []
    try:
        for index in indices:
            def keep(_module, _inputs, output, index=index):
                outputs[index] = as_map(output, model)
            handles.append(model.get_submodule(names[index]).register_forward_hook(keep))
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, [outputs[index] for index in indices]
