"""Models by timm name, the tiny embedded architectures, checkpoint I/O and per-layer features.

The embedded architectures are built from timm's own classes (Cait, VisionTransformer,
ResNet) at a size that trains on scikit-learn's 8x8 digits in seconds, and are registered
with timm so `timm.create_model("cait_digits")` makes them like any hub model.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Sequence

import timm
import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.cait import Cait
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer

from .errors import UserError
from .factories import build_factory, factory_from_checkpoint, is_factory
from .hooks import attach, hooked_features, layer_names
from .files import first_line

# Pixel statistics of scikit-learn's digits scaled to [0, 1] (mean 4.88/16, std 6.02/16).
DIGITS_MEAN = (0.305,)
DIGITS_STD = (0.376,)


def _digits_cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (1, 8, 8),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": DIGITS_MEAN,
        "std": DIGITS_STD,
        "license": "bsd-3-clause",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "cait_digits.untrained": _digits_cfg(first_conv="patch_embed.proj", classifier="head"),
    "deit_digits.untrained": _digits_cfg(first_conv="patch_embed.proj", classifier="head"),
    "resnet_digits.untrained": _digits_cfg(first_conv="conv1", classifier="fc"),
})


class DigitsResNet(ResNet):
    """timm's ResNet with a 3x3 stride-1 stem and no max-pool, so 8x8 inputs keep a spatial map."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        stem_width = self.bn1.num_features
        self.conv1 = nn.Conv2d(self.conv1.in_channels, stem_width, 3, stride=1, padding=1, bias=False)
        self.maxpool = nn.Identity()
        for info, reduction in zip(self.feature_info, (1, 1, 2, 4, 8)):
            info["reduction"] = reduction


def _digits_kwargs(kwargs: dict) -> dict:
    kwargs.setdefault("num_classes", 10)
    kwargs.setdefault("in_chans", 1)
    return kwargs


@register_model
def cait_digits(pretrained: bool = False, **kwargs) -> Cait:
    """CaiT-style teacher: 12 self-attention blocks + 2 class-attention blocks, width 64, 4x4 patches grid."""
    args = dict(img_size=8, patch_size=2, embed_dim=64, depth=12, num_heads=4, init_values=1e-4,
                depth_token_only=2)
    return build_model_with_cfg(Cait, "cait_digits", pretrained, feature_cfg=dict(feature_cls="getter"),
                                **dict(args, **_digits_kwargs(kwargs)))


@register_model
def deit_digits(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """DeiT-style student: 8 blocks, width 32 (half the teacher's width, two thirds its depth)."""
    args = dict(img_size=8, patch_size=2, embed_dim=32, depth=8, num_heads=2)
    return build_model_with_cfg(VisionTransformer, "deit_digits", pretrained,
                                feature_cfg=dict(feature_cls="getter"),
                                **dict(args, **_digits_kwargs(kwargs)))


@register_model
def resnet_digits(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-10-style CNN (one basic block per stage, widths 32..256), stride-1 stem for 8x8 inputs."""
    args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(32, 64, 128, 256))
    return build_model_with_cfg(DigitsResNet, "resnet_digits", pretrained, **dict(args, **_digits_kwargs(kwargs)))


def is_known(arch: str) -> bool:
    """Whether `arch` can be built: a timm model name (optionally with a .pretrained_tag), an `hf-hub:` id
    (resolved when the model is made), or a user's `module:function`."""
    return arch.startswith("hf-hub:") or is_factory(arch) or timm.is_model(arch.split(".")[0])


def check_model_name(arch: str) -> None:
    """Fail with one line if timm knows no model of this name."""
    if not is_known(arch):
        close = timm.list_models(f"*{arch.split('.')[0].split('_')[0]}*")[:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise UserError(f"unknown model '{arch}': not a timm model name, an hf-hub: id or a module:function{hint}")


def _build(arch: str, pretrained: bool, num_classes: int | None, **kwargs) -> nn.Module:
    """timm.create_model, or the user's factory called with `num_classes` (timm's other `kwargs`, such as
    drop_path_rate, are not passed to it); one line where it fails."""
    if is_factory(arch):
        return build_factory(arch, pretrained, num_classes)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        return timm.create_model(arch, pretrained=pretrained, **kwargs)
    except (OSError, ValueError) as error:
        if not arch.startswith("hf-hub:"):
            raise
        raise UserError(f"cannot make '{arch}': the Hugging Face hub cannot be reached or has no such model "
                        f"({type(error).__name__}); offline, give the weights as a local file") from None


def create_model(arch: str, num_classes: int | None = None, in_chans: int | None = None,
                 checkpoint: str | os.PathLike | None = None, hub: bool = False,
                 layers: Sequence[str] | None = None, **kwargs) -> nn.Module:
    """Create a timm model (a name or an `hf-hub:` id) or a user's `module:function` model; load a local
    checkpoint (safetensors or .pth) or the hub weights; with `layers` (module-name globs), its features
    come from forward hooks on the modules they select (`dyn.hooks`).

    With a checkpoint and no `num_classes`, the checkpoint's classifier decides the class count.
    """
    check_model_name(arch)
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if checkpoint is None:
        model = _build(arch, hub, num_classes, **kwargs)
    elif is_factory(arch):
        model = factory_from_checkpoint(arch, Path(checkpoint), read_checkpoint(checkpoint), num_classes)
    else:
        model = _timm_from_checkpoint(arch, existing_checkpoint(checkpoint), num_classes, kwargs)
    if layers:
        attach(model, layers)
    return model


def _timm_from_checkpoint(arch: str, path: Path, num_classes: int | None, kwargs: dict) -> nn.Module:
    state = read_checkpoint(path)  # a clear line for an unreadable file, before timm reads it
    if num_classes is None:
        num_classes = checkpoint_classes(arch, state)
    overlay = dict(file=str(path))
    if num_classes is not None:  # the checkpoint's head is what the model gets
        kwargs["num_classes"] = overlay["num_classes"] = num_classes
    kwargs["pretrained_cfg_overlay"] = overlay
    try:
        return timm.create_model(arch, pretrained=True, **kwargs)
    except RuntimeError as error:
        if "loading state_dict" not in str(error):
            raise
        raise UserError(_misfit(arch, path, state, kwargs)) from None


def classes_of(model: nn.Module) -> int | None:
    """The class count of a model: timm's `num_classes`, or the rows of its last Linear layer."""
    if isinstance(getattr(model, "num_classes", None), int):
        return model.num_classes
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def num_layers(model: nn.Module) -> int:
    """How many feature layers `features` can return: the hooked modules, or timm's blocks for ViTs,
    stem + stages for CNNs."""
    names = layer_names(model)
    if names is not None:
        return len(names)
    if not hasattr(model, "forward_intermediates"):
        raise UserError(f"{type(model).__name__} has no forward_intermediates: pick its layers by module name "
                        "(models.<key>.layers, e.g. ['blocks.*'] or ['layer[1-4]'])")
    return len(model.feature_info)


def depth_of(arch: str, layers: Sequence[str] | None = None) -> int:
    """`num_layers` of an architecture, read from a weightless copy built on the meta device."""
    with torch.device("meta"):
        return num_layers(create_model(arch, layers=layers))


def layer_channels(model: nn.Module, layers: Sequence[int]) -> list[int]:
    """The channel count of each of `layers`: timm's feature_info, or for layers picked by name the maps
    of one blank image of the model's input size (timm's data config), in eval mode without gradients
    (no batch-norm statistic moves, no random draw)."""
    if layer_names(model) is None:
        return [int(model.feature_info[i]["num_chs"]) for i in layers]
    from timm.data import resolve_data_config

    size = resolve_data_config(model=model)["input_size"]
    device = next(model.parameters()).device
    training = model.training
    try:
        with torch.no_grad():
            maps = features(model.eval(), torch.zeros(1, *size, device=device), layers)
    finally:
        model.train(training)
    return [int(m.shape[1]) for m in maps]


def layer_kind(model: nn.Module) -> str:
    """'block' for transformer blocks, 'stage' for CNN stages, 'module' for layers picked by name."""
    if layer_names(model) is not None:
        return "module"
    return "block" if hasattr(model, "blocks") and "blocks." in model.feature_info[-1]["module"] else "stage"


def features(model: nn.Module, x: torch.Tensor, layers: Sequence[int] | None = None,
             with_logits: bool = False):
    """Per-layer (B, C, H, W) maps of the given layers (all if None), patch tokens only for ViTs.

    With `with_logits`, returns (logits, maps) from one forward pass.
    """
    indices = list(range(num_layers(model))) if layers is None else [int(i) for i in layers]
    if layer_names(model) is not None:
        logits, maps = hooked_features(model, x, indices)
        return (logits, maps) if with_logits else maps
    if not with_logits:
        return model.forward_intermediates(x, indices=indices, output_fmt="NCHW", intermediates_only=True)
    final, maps = model.forward_intermediates(x, indices=indices, output_fmt="NCHW")
    return model.forward_head(final), maps


# -- checkpoints -----------------------------------------------------------------------------------
def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(model: nn.Module | dict[str, torch.Tensor], path: str | Path, digest: bool = True) -> str | None:
    """Save a model's state dict (or a state dict) as safetensors atomically, readable as the umask
    allows; returns its sha256 (None without `digest`)."""
    from safetensors.torch import save_file

    from .atomic import atomic_path

    weights = model.state_dict() if isinstance(model, nn.Module) else model
    state = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={"format": "pt"})
    return sha256_of(path) if digest else None


CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def existing_checkpoint(path: str | os.PathLike) -> Path:
    """`path`, or one line saying it is missing."""
    if not Path(path).is_file():
        raise UserError(f"checkpoint file not found: {path}")
    return Path(path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file, or one line saying why it cannot be read.

    `.safetensors` through safetensors; `.pth`, `.pt`, `.bin` through `torch.load(weights_only=True)`,
    which refuses a pickle that would build anything but tensors and plain containers (so a file
    cannot run code here). Wrapped state dicts (`state_dict`, `model`, their EMA versions) are
    unwrapped as timm does.
    """
    import pickle

    path = existing_checkpoint(path)
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise UserError(f"not a checkpoint file: {path}; valid are {', '.join(CHECKPOINT_SUFFIXES)} files")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as error:
        builds = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if builds:
            raise UserError(f"refused to load {path}: its pickle would call {builds.group(1)}, which could run code; "
                            "give a plain state dict or a .safetensors file") from None
        if "weights_only" in str(error) or "Weights only" in str(error):
            raise UserError(f"cannot read checkpoint {path}: torch.load(weights_only=True) refuses it (damaged, or a "
                            "pickle of objects other than tensors, which could run code); give a plain state dict "
                            "or a .safetensors file") from None
        raise UserError(f"cannot read checkpoint {path}: {first_line(error)}") from None
    except Exception as error:  # safetensors' own errors, EOF, bad bytes: the file is damaged
        raise UserError(f"cannot read checkpoint {path}: {first_line(error)} (empty, truncated or not a "
                        f"{path.suffix} file?)") from None
    if isinstance(state, dict):
        key = next((k for k in ("state_dict_ema", "model_ema", "state_dict", "model") if isinstance(state.get(k), dict)),
                   None)
        state = state[key] if key else state
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise UserError(f"{path} holds no state dict (a mapping of parameter names to tensors)")
    return state


def checkpoint_classes(arch: str, state: dict[str, torch.Tensor]) -> int | None:
    """The number of classes of a state dict's classifier for `arch`, or None if it has none."""
    from timm.models import get_pretrained_cfg

    classifier = getattr(get_pretrained_cfg(arch), "classifier", None) or "head"
    classifier = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    weight = state.get(f"{classifier}.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else None


def _misfit(arch: str, path: Path, state: dict, kwargs: dict) -> str:
    """One line on how a state dict differs from a fresh `arch`: missing, unexpected, mis-shaped keys."""
    kwargs = {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"}
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in timm.create_model(arch, **kwargs).state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    parts = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in
             ((missing, "missing"), (unexpected, "unexpected"), (shapes, "of another shape")) if keys]
    return f"checkpoint {path} does not fit {arch}: its parameters are {'; '.join(parts)}; a checkpoint of another model?"


def load_checkpoint(arch: str, checkpoint: str | Path, device: str | torch.device = "cpu",
                    layers: Sequence[str] | None = None) -> nn.Module:
    """A model from a fetched checkpoint, in eval mode; its classifier decides the class count."""
    return create_model(arch, checkpoint=existing_checkpoint(checkpoint), layers=layers).to(device).eval()
