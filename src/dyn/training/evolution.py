"""The student's entropy profile as training goes on: per-layer snapshots and the evolution.nc file."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..analysis import metrics
from ..data import analysis_images, analysis_transform, build_dataset, describe_sample, stack
from ..models import features
from ..atomic import atomic_path


@dataclass(frozen=True)
class Snapshots:
    """The student's per-layer profile: on which validation images (the analysis's own choice and
    transform, so students and analysed models see the same images), with how many entropy bins over
    which range, how often."""

    num_images: int
    bins: int
    every: int                 # epochs between snapshots; 0: only before the first and after the last
    sample: str                # stratified or first
    sample_seed: int
    entropy_range: str         # global: one range over all of the student's layers and images; vector: each vector's
    transform: str             # model: the student's own evaluation transform; imagenet: the authors'
    # No defaults: the workflow passes the config's (the schema's defaults), tests build them from the schema.

    def images(self, dataset_cfg: dict, model: nn.Module, recipe) -> torch.Tensor:
        """The snapshot images, through the analysis transform."""
        val = build_dataset(dataset_cfg, "val", analysis_transform(model, self.transform, recipe.to_dict()))
        return stack(analysis_images(val, self.num_images, self.sample, self.sample_seed))[0]

    def describe(self) -> str:
        return describe_sample(self.sample, self.num_images, self.sample_seed)


def layer_profile(model: nn.Module, images: torch.Tensor, bins: int = metrics.DEFAULT_BINS,
                  batch_size: int = 64, entropy_range: str = "global") -> dict[str, np.ndarray]:
    """Per-layer entropy and magnitude of `model` on fixed images (all layers), as in the analysis: with
    `global`, the entropy's bins span the min..max of all of the model's layers on these images."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    maps: list[list[np.ndarray]] = []  # per layer, its blocks: the global range needs all before any entropy
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            for layer, fmap in enumerate(features(model, images[start:start + batch_size].to(device))):
                if layer == len(maps):
                    maps.append([])
                maps[layer].append(metrics.channel_major(fmap))
    model.train(was_training)
    bounds = metrics.global_range(x for layer in maps for x in layer) if entropy_range == "global" else None
    means = metrics.LayerMeans()
    for layer, blocks in enumerate(maps):
        for x in blocks:
            means.add(layer, metrics.block_sums(x, ("entropy", "magnitude"), bins, value_range=bounds))
    return means.means()


def write_evolution(path: Path, snapshots: list[tuple[int, dict]], attrs: dict) -> None:
    """The student's per-layer entropy and magnitude at each snapshot epoch, dims (epoch, layer)."""
    import xarray as xr

    epochs = [e for e, _ in snapshots]
    data = {name: (("epoch", "layer"), np.stack([p[name] for _, p in snapshots]).astype(np.float64))
            for name in snapshots[0][1]}
    ds = xr.Dataset(data, coords={"epoch": epochs, "layer": np.arange(data["entropy"][1].shape[1])}, attrs=attrs)
    ds["entropy"].attrs.update(units="bits", long_name="mean Shannon entropy of the channel vector")
    ds["magnitude"].attrs.update(long_name="mean absolute activation")
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")
