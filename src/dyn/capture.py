"""Run a model over fixed images and stream its per-layer activations into a NetCDF file.

Contract (ARCHITECTURE.md): variable `activation` with dims (layer, sample, channel, y, x),
zlib-compressed, chunked by (1 layer, a block of samples); coords `layer` and `sample`;
attrs model, checkpoint_sha256, dataset, split, layer_kind, dyn_version, created.
Layers of different shapes (CNN stages) share the array: each is stored in the leading
(channels, height, width) corner, the rest is NaN, and the per-layer coords `channels`,
`height` and `width` say how much of the corner is real.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import __version__
from .atomic import atomic_path
from .models import features, layer_kind, num_layers

DTYPES = {"float32": np.float32, "float16": np.float16}
# NetCDF has no half-precision type: float16 captures store the IEEE half bit patterns as uint16
# (attribute `dyn_encoding`), and `iter_layer_blocks` / `read_activation` view them back as float16.
FLOAT16_BITS = "float16 bit patterns stored as uint16: view the values as float16"
_STORAGE = {"float32": ("f4", np.float32), "float16": ("u2", np.uint16)}


def capture(model: torch.nn.Module, images: Dataset, path: str | os.PathLike, attrs: dict,
            dtype: str = "float32", samples_per_chunk: int = 16, compression_level: int = 1,
            device: str | torch.device = "cpu", progress: bool = False) -> Path:
    """Write the activations of every layer of `model` on `images` to `path` (atomically)."""
    import netCDF4

    if dtype not in DTYPES:
        raise ValueError(f"unknown capture dtype '{dtype}': valid are {', '.join(DTYPES)}")
    model = model.eval().to(device)
    n_layers, n_samples = num_layers(model), len(images)
    # Batches of exactly one chunk, so each write fills whole chunks (no read-modify-write).
    loader = DataLoader(images, batch_size=samples_per_chunk, shuffle=False)
    path = Path(path)
    with atomic_path(path) as tmp:
        root = netCDF4.Dataset(tmp, "w", format="NETCDF4")
        try:
            start = 0
            variable = None
            for batch, _ in tqdm(loader, desc="capture", unit="batch", disable=not progress):
                with torch.inference_mode():
                    maps = features(model, batch.to(device))
                if variable is None:
                    variable = _create_layout(root, maps, n_layers, n_samples, dtype, samples_per_chunk,
                                              compression_level, {**attrs, "layer_kind": layer_kind(model)})
                stop = start + batch.shape[0]
                for layer, fmap in enumerate(maps):
                    variable[layer, start:stop] = _padded(fmap, variable.shape[2:], dtype)
                start = stop
        finally:
            root.close()
    return path


def _padded(fmap: torch.Tensor, shape: tuple, dtype: str) -> np.ndarray:
    """A (B, C, H, W) map in the file's storage type, NaN-padded to the file's (channel, y, x) size."""
    b, c, h, w = fmap.shape
    values = fmap.float().cpu().numpy().astype(DTYPES[dtype])
    if (c, h, w) != tuple(shape):
        full = np.full((b, *shape), np.nan, dtype=DTYPES[dtype])
        full[:, :c, :h, :w] = values
        values = full
    return values.view(_STORAGE[dtype][1])


def _create_layout(root, maps, n_layers, n_samples, dtype, samples_per_chunk, level, attrs):
    shapes = np.array([m.shape[1:] for m in maps], dtype=np.int32)
    c, h, w = (int(v) for v in shapes.max(axis=0))
    root.createDimension("layer", n_layers)
    root.createDimension("sample", n_samples)
    root.createDimension("channel", c)
    root.createDimension("y", h)
    root.createDimension("x", w)
    for name, values, description in (
            ("layer", np.arange(n_layers), "0-based block (ViT) or stage (CNN) index"),
            ("sample", np.arange(n_samples), "index into the dataset split"),
            ("channel", np.arange(c), "channel index"),
            ("y", np.arange(h), "row of the patch grid / feature map"),
            ("x", np.arange(w), "column of the patch grid / feature map")):
        var = root.createVariable(name, "i4", (name,))
        var[:] = values
        var.long_name = description
    for index, name in enumerate(("channels", "height", "width")):
        var = root.createVariable(name, "i4", ("layer",))
        var[:] = shapes[:, index]
        var.long_name = f"number of valid {name[:-1] if name == 'channels' else name} entries of each layer"
    # Every element is written (padding included), so a fill value is only a label: NaN for float32,
    # none for the uint16 of float16 captures, which xarray would otherwise decode to float32.
    fill = np.float32(np.nan) if dtype == "float32" else False
    variable = root.createVariable(
        "activation", _STORAGE[dtype][0], ("layer", "sample", "channel", "y", "x"),
        zlib=True, complevel=level, shuffle=True, fill_value=fill,
        chunksizes=(1, min(samples_per_chunk, n_samples), c, h, w))
    variable.coordinates = "channels height width"
    variable.long_name = "layer activations (ViT: patch tokens only, on the patch grid)"
    variable.set_auto_maskandscale(False)
    if dtype == "float16":
        variable.dyn_encoding = FLOAT16_BITS
    root.setncatts({
        "dyn_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **{key: ("" if value is None else value) for key, value in attrs.items()},
    })
    return variable


def iter_layer_blocks(path: str | os.PathLike, samples_per_chunk: int | None = None, progress: bool = False,
                      desc: str = "layers") -> Iterator[tuple[int, np.ndarray]]:
    """Yield (layer, activations of a block of samples) with each layer's padding cut off.

    Memory is bounded by one block: (samples_per_chunk, C, H, W). The default block is the
    file's own chunk, so each read decompresses each chunk once.
    """
    import xarray as xr

    with xr.open_dataset(path, cache=False, mask_and_scale=False) as ds:
        activation = ds["activation"]
        if samples_per_chunk is None:
            chunks = activation.encoding.get("chunksizes") or (1, activation.sizes["sample"])
            samples_per_chunk = int(chunks[1])
        n_samples = activation.sizes["sample"]
        channels, height, width = (ds[name].values.astype(int) for name in ("channels", "height", "width"))
        for layer in tqdm(range(activation.sizes["layer"]), desc=desc, unit="layer", disable=not progress):
            c, h, w = channels[layer], height[layer], width[layer]
            for start in range(0, n_samples, samples_per_chunk):
                yield layer, decode(activation[layer, start:start + samples_per_chunk, :c, :h, :w])


def decode(activation) -> np.ndarray:
    """The float values of an `activation` slice read with xarray (float16 captures are stored as bits)."""
    values = activation.values
    if activation.attrs.get("dyn_encoding") == FLOAT16_BITS:
        return values.view(np.float16)
    return values
