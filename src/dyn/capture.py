"""Run a model over fixed images and stream its per-layer activations into a NetCDF file.

Reading needs no torch (metric jobs start faster); capturing imports it when called.

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

from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from . import __version__
from .atomic import atomic_path

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

DTYPES = {"float32": np.float32, "float16": np.float16}
# NetCDF has no half-precision type: float16 captures store the IEEE half bit patterns as uint16
# (attribute `dyn_encoding`), and `iter_layer_blocks` / `decode` view them back as float16.
FLOAT16_BITS = "float16 bit patterns stored as uint16: view the values as float16"
_STORAGE = {"float32": ("f4", np.float32), "float16": ("u2", np.uint16)}


class CaptureWriter:
    """Streams blocks of samples, layer by layer, into a capture file laid out per the contract.

    Use as a context manager: the file appears at `path` only when the block exits cleanly.
    """

    def __init__(self, path: str | os.PathLike, layer_shapes: list[tuple[int, int, int]], n_samples: int,
                 attrs: dict, dtype: str = "float32", samples_per_chunk: int = 16, compression_level: int = 1):
        if dtype not in DTYPES:
            raise ValueError(f"unknown capture dtype '{dtype}': valid are {', '.join(DTYPES)}")
        self.path, self.layer_shapes, self.n_samples = Path(path), [tuple(s) for s in layer_shapes], n_samples
        self.attrs, self.dtype, self.chunk, self.level = attrs, dtype, samples_per_chunk, compression_level

    def __enter__(self) -> "CaptureWriter":
        import netCDF4

        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._root = netCDF4.Dataset(tmp, "w", format="NETCDF4")
        self._variable = _create_layout(self._root, self.layer_shapes, self.n_samples, self.dtype, self.chunk,
                                        self.level, self.attrs)
        return self

    def write(self, layer: int, start: int, block: np.ndarray) -> None:
        """Samples start.. of one layer: a (samples, C, H, W) array of that layer's own shape."""
        self._variable[layer, start:start + block.shape[0]] = _padded(block, self._variable.shape[2:], self.dtype)

    def __exit__(self, *exc) -> None:
        self._root.close()
        self._atomic.__exit__(*exc)


def capture(model: "torch.nn.Module", images: "Dataset", path: str | os.PathLike, attrs: dict,
            dtype: str = "float32", samples_per_chunk: int = 16, compression_level: int = 1,
            device: "str | torch.device" = "cpu", progress: bool = False) -> Path:
    """Write the activations of every layer of `model` on `images` to `path` (atomically).

    The model computes batch i+1 while a background thread compresses and writes batch i: zlib
    and HDF5 run without the GIL, so on a GPU machine writing costs little beyond the forward.
    """
    import queue
    import threading

    import torch
    from torch.utils.data import DataLoader

    from .models import features, layer_kind

    model = model.eval().to(device)
    # Batches of exactly one chunk, so each write fills whole chunks (no read-modify-write).
    loader = DataLoader(images, batch_size=samples_per_chunk, shuffle=False)
    work: queue.Queue = queue.Queue(maxsize=2)
    failure: list[BaseException] = []

    def write_all(writer: CaptureWriter) -> None:
        while (item := work.get()) is not None:
            if not failure:
                try:
                    start, maps = item
                    for layer, fmap in enumerate(maps):
                        writer.write(layer, start, fmap)
                except BaseException as error:  # reported by the main thread
                    failure.append(error)

    writer = thread = None
    start = 0
    try:
        for batch, _ in tqdm(loader, desc="capture", unit="batch", disable=not progress):
            with torch.inference_mode():
                maps = [m.float().cpu().numpy() for m in features(model, batch.to(device))]
            if writer is None:  # the layer shapes are known after the first batch
                writer = CaptureWriter(path, [m.shape[1:] for m in maps], len(images),
                                       {**attrs, "layer_kind": layer_kind(model)}, dtype, samples_per_chunk,
                                       compression_level).__enter__()
                thread = threading.Thread(target=write_all, args=(writer,), daemon=True)
                thread.start()
            if failure:
                raise failure[0]
            work.put((start, maps))
            start += batch.shape[0]
        if thread is not None:
            work.put(None)
            thread.join()
        if failure:
            raise failure[0]
    except BaseException as error:
        if thread is not None and thread.is_alive():
            failure.append(error)  # the writer skips what is left
            work.put(None)
            thread.join()
        if writer is not None:
            writer.__exit__(type(error), error, error.__traceback__)
        raise
    writer.__exit__(None, None, None)
    return Path(path)


def _padded(block: np.ndarray, shape: tuple, dtype: str) -> np.ndarray:
    """A (B, C, H, W) block in the file's storage type, NaN-padded to the file's (channel, y, x) size."""
    b, c, h, w = block.shape
    values = block.astype(DTYPES[dtype], copy=False)
    if (c, h, w) != tuple(shape):
        full = np.full((b, *shape), np.nan, dtype=DTYPES[dtype])
        full[:, :c, :h, :w] = values
        values = full
    return values.view(_STORAGE[dtype][1])


def _create_layout(root, layer_shapes, n_samples, dtype, samples_per_chunk, level, attrs):
    shapes = np.array(layer_shapes, dtype=np.int32)
    n_layers = len(layer_shapes)
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
                      desc: str = "layers", prefetch: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (layer, activations of a block of samples) with each layer's padding cut off.

    Memory is bounded by one block: (samples_per_chunk, C, H, W) (three with `prefetch`, which
    reads ahead in a background thread: the NetCDF library decompresses without holding the GIL).
    The default block is the file's own chunk, so each read decompresses each chunk once.
    """
    blocks = _layer_blocks(path, samples_per_chunk, progress, desc)
    return _read_ahead(blocks, depth=2) if prefetch else blocks


def _read_ahead(iterator: Iterator, depth: int) -> Iterator:
    """Items of `iterator` produced by a background thread, at most `depth` ahead of the consumer."""
    import queue
    import threading

    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in iterator:
                if stop.is_set():
                    return
                items.put(item)
            items.put(done)
        except BaseException as error:  # re-raised in the consumer
            items.put(error)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(0.01)


def _layer_blocks(path, samples_per_chunk, progress, desc) -> Iterator[tuple[int, np.ndarray]]:
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
