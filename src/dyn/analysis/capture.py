"""Run a model over fixed images and stream its per-layer activations into a NetCDF file.

The file contract (docs/architecture.md, "File contracts"): variable `activation` with dims
(layer, sample, channel, y, x), chunked by (1 layer, a block of samples), with the standard zlib +
shuffle filters when compressed; coords `layer`, `sample` (index into the dataset split) and `label`
(its class); attrs model, arch, checkpoint_sha256, dataset, split, layer_kind, dyn_version, created,
and value_min / value_max (the range of every real value: the entropy's global range, kept so the
entropy needs one pass). Layers of different shapes (CNN stages) share the array: each is stored in
the leading (channels, height, width) corner, the rest is NaN, and the per-layer coords `channels`,
`height` and `width` say how much of the corner is real. Files are written and read through netCDF4,
one block of samples of one layer at a time, so memory stays one block. Reading needs no torch.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..errors import UserError
from ..files import first_line
from ..atomic import atomic_path

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

DTYPES = {"float32": np.float32, "float16": np.float16}
# NetCDF has no half-precision type. A float16 capture keeps each value rounded to half precision in a
# plain float32 variable (attribute `dyn_precision`), so that any NetCDF reader opens it as floats; the
# shuffle filter and zlib store its zeroed low mantissa bits in almost nothing (54% of float32's
# size). Earlier float16 captures held the half bit patterns as uint16 (`dyn_encoding`): still read.
FLOAT16_PRECISION = "float16: each value rounded to IEEE half precision (nearest even), stored as float32"
FLOAT16_BITS = "float16 bit patterns stored as uint16: view the values as float16"


class CaptureWriter:
    """Writes blocks of samples, layer by layer, into a capture file laid out per the contract.

    Use as a context manager: the file appears at `path` only when the block exits cleanly.
    """

    def __init__(self, path: str | os.PathLike, layer_shapes: list[tuple[int, int, int]], samples: Sequence[int],
                 attrs: dict, dtype: str = "float32", samples_per_chunk: int = 16, compression_level: int = 0):
        """`samples`: the dataset index of each sample, in the order they are written."""
        if dtype not in DTYPES:
            raise ValueError(f"unknown capture dtype '{dtype}': valid are {', '.join(DTYPES)}")
        self.path, self.layer_shapes, self.samples = Path(path), [tuple(s) for s in layer_shapes], list(samples)
        self.attrs, self.dtype, self.level = attrs, dtype, compression_level
        self.chunk = min(samples_per_chunk, len(self.samples))
        self.low, self.high = np.inf, -np.inf  # over every stored value: the entropy's global range

    def __enter__(self) -> "CaptureWriter":
        import netCDF4

        self._atomic = atomic_path(self.path)
        self._root = netCDF4.Dataset(self._atomic.__enter__(), "w", format="NETCDF4")
        self._variable = _create_layout(self._root, self.layer_shapes, self.samples, self.dtype, self.chunk,
                                        self.level, self.attrs)
        return self

    def write(self, layer: int, start: int, block: np.ndarray) -> None:
        """Samples start.. of one layer: a (samples, C, H, W) array of that layer's own shape, NaN-padded
        here to the widest layer's, so that every write covers whole chunks."""
        shape = (block.shape[0], *self._variable.shape[2:])
        stored = block.astype(DTYPES[self.dtype], copy=False)  # float16 captures: the range of the rounded values
        self.low, self.high = min(self.low, float(stored.min())), max(self.high, float(stored.max()))
        with self._failing_writes():
            self._variable[layer, start:start + block.shape[0]] = _padded(stored, shape)

    def write_labels(self, start: int, labels: Sequence[int]) -> None:
        """The class of samples start.. (coord `label`)."""
        with self._failing_writes():
            self._root["label"][start:start + len(labels)] = np.asarray(labels, dtype=np.int32)

    @contextlib.contextmanager
    def _failing_writes(self):
        """A write the file system refuses (a full disk, a file size limit) as one line."""
        try:
            yield
        except (OSError, RuntimeError) as error:  # the NetCDF library reports HDF5's write errors so
            raise UserError(f"cannot write {self.path}: {first_line(error)} "
                            "(is the disk full?); nothing was kept") from None

    def __exit__(self, *exc) -> None:
        try:
            with self._failing_writes():
                if exc[0] is None and np.isfinite([self.low, self.high]).all():  # `dyn metrics entropy` reads it
                    self._root.setncatts({"value_min": np.float32(self.low), "value_max": np.float32(self.high)})
                self._root.close()
        except BaseException as error:  # the last bytes did not reach the disk: keep no file
            self._atomic.__exit__(type(error), error, error.__traceback__)
            raise
        self._atomic.__exit__(*exc)


def capture(model: "torch.nn.Module", images: "Dataset", path: str | os.PathLike, attrs: dict,
            dtype: str = "float32", samples_per_chunk: int = 16, compression_level: int = 0,
            device: "str | torch.device" = "cpu", progress: bool = False) -> Path:
    """Write the activations of every layer of `model` on `images` to `path` (atomically)."""
    import torch
    from torch.utils.data import DataLoader

    from ..models import features, layer_kind

    model = model.eval().to(device)
    # Batches of exactly one chunk: each write fills whole chunks.
    loader = DataLoader(images, batch_size=samples_per_chunk, shuffle=False)
    with contextlib.ExitStack() as stack:  # the writer, once opened, sees how the block ends
        writer, start = None, 0
        for batch, labels in tqdm(loader, desc="capture", unit="batch", disable=not progress):
            with torch.inference_mode():
                maps = [m.float().cpu().numpy() for m in features(model, batch.to(device))]
            if writer is None:  # the layer shapes are known after the first batch
                samples = getattr(images, "indices", range(len(images)))  # a Subset's dataset indices
                writer = stack.enter_context(CaptureWriter(
                    path, [m.shape[1:] for m in maps], samples, {**attrs, "layer_kind": layer_kind(model)},
                    dtype, samples_per_chunk, compression_level))
            for layer, fmap in enumerate(maps):
                writer.write(layer, start, fmap)
            writer.write_labels(start, labels)
            start += batch.shape[0]
    return Path(path)


def capture_checkpoint(name: str, arch: str, checkpoint: str | os.PathLike, out: str | os.PathLike,
                       dataset_cfg: dict, num_images: int, dtype: str, samples_per_chunk: int,
                       compression_level: int, device: str, sample: str, sample_seed: int, progress: bool = False,
                       transform: str = "model", split: str = "val", layers: list[str] | None = None) -> Path:
    """`dyn capture`: a fetched checkpoint's activations on fixed images of the validation split (the
    analysis) or of the training split (what `auto` layer selection reads, so that the layers a student
    is evaluated with were not chosen on its validation images); `sample`: stratified over the classes,
    or the first `num_images`; `transform`: the model's own or the authors' `imagenet` protocol; `layers`:
    module-name globs (forward hooks; attr `layer_modules`), or timm's forward_intermediates."""
    from ..data import analysis_images, analysis_transform, build_dataset, dataset_name, describe_sample
    from ..models import load_checkpoint, sha256_of
    from ..devices import resolve_device
    from ..hooks import layer_names

    model = load_checkpoint(arch, checkpoint, layers=layers)
    dataset = build_dataset(dataset_cfg, split, analysis_transform(model, transform))
    images = analysis_images(dataset, num_images, sample, sample_seed)
    attrs = {"model": name, "arch": arch, "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_of(checkpoint),
             "dataset": dataset_name(dataset_cfg), "split": split,
             "sample_selection": describe_sample(sample, len(images), sample_seed, split), "transform": transform}
    if layers:  # which modules the layers are, in order
        attrs.update(layer_globs=", ".join(layers), layer_modules=", ".join(layer_names(model)))
    return capture(model, images, out, attrs, dtype=dtype, samples_per_chunk=samples_per_chunk,
                   compression_level=compression_level, device=resolve_device(device), progress=progress)


def _padded(block: np.ndarray, shape: tuple) -> np.ndarray:
    """A (B, C, H, W) block (of float16 captures: already rounded) as the file's float32, NaN-padded to `shape`."""
    values = block.astype(np.float32, copy=False)
    if values.shape != tuple(shape):
        b, c, h, w = values.shape
        full = np.full(shape, np.nan, dtype=np.float32)
        full[:b, :c, :h, :w] = values
        values = full
    return np.ascontiguousarray(values)


def _create_layout(root, layer_shapes, samples, dtype, samples_per_chunk, level, attrs):
    shapes = np.array(layer_shapes, dtype=np.int32)
    n_layers = len(layer_shapes)
    c, h, w = (int(v) for v in shapes.max(axis=0))
    for name, size in (("layer", n_layers), ("sample", len(samples)), ("channel", c), ("y", h), ("x", w)):
        root.createDimension(name, size)
    for name, values, description in (("layer", np.arange(n_layers), "0-based block (ViT) or stage (CNN) index"),
                                      ("sample", samples, "index into the dataset split"),
                                      ("label", None, "class index of each sample"),
                                      ("channel", np.arange(c), "channel index"),
                                      ("y", np.arange(h), "row of the patch grid / feature map"),
                                      ("x", np.arange(w), "column of the patch grid / feature map")):
        var = root.createVariable(name, "i4", ("sample",) if name == "label" else (name,))
        if values is not None:  # labels are written as the samples are
            var[:] = np.asarray(values)
        var.long_name = description
    for index, name in enumerate(("channels", "height", "width")):
        var = root.createVariable(name, "i4", ("layer",))
        var[:] = shapes[:, index]
        var.long_name = f"number of valid {name[:-1] if name == 'channels' else name} entries of each layer"
    # Every element is written (padding included), so the fill value is only a label.
    level = max(level, 1) if dtype == "float16" else level  # float16: its size comes from the compression
    compression = dict(compression="zlib", complevel=level, shuffle=True) if level > 0 else {}
    variable = root.createVariable("activation", "f4", ("layer", "sample", "channel", "y", "x"),
                                   fill_value=np.float32(np.nan), chunksizes=(1, samples_per_chunk, c, h, w),
                                   **compression)
    variable.coordinates = "label channels height width"
    variable.long_name = "layer activations (ViT: patch tokens only, on the patch grid)"
    variable.set_auto_maskandscale(False)
    if dtype == "float16":
        variable.dyn_precision = FLOAT16_PRECISION
    root.setncatts({
        "dyn_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **{key: ("" if value is None else value) for key, value in attrs.items()},
    })
    return variable


def iter_layer_blocks(path: str | os.PathLike, samples_per_block: int | None = None, progress: bool = False,
                      desc: str = "layers") -> Iterator[tuple[int, np.ndarray]]:
    """Yield (layer, activations of a block of samples), each layer's padding cut off, through netCDF4.

    The default block is the file's own chunk of samples; memory stays one block of
    (samples, C, H, W) values, float32 (those of float16 captures rounded to half precision).
    """
    import netCDF4

    from ..files import unreadable

    try:
        root = netCDF4.Dataset(path)
    except (OSError, ValueError) as error:
        raise unreadable(path, "capture file", error) from None
    with root:
        if "activation" not in root.variables:
            raise UserError(f"{path} has no variable 'activation': not a capture file (dyn capture writes them)")
        try:
            yield from _blocks(root, samples_per_block, progress, desc)
        except (OSError, RuntimeError, IndexError, ValueError) as error:  # damaged past its header
            raise unreadable(path, "capture file", error) from None


def _blocks(root, samples_per_block, progress, desc) -> Iterator[tuple[int, np.ndarray]]:
    variable = root["activation"]
    variable.set_auto_maskandscale(False)
    chunking = variable.chunking()
    step = samples_per_block or (chunking[1] if chunking != "contiguous" else 16)
    shapes = np.stack([root[name][:] for name in ("channels", "height", "width")], axis=1).astype(int)
    float16 = getattr(variable, "dyn_encoding", None) == FLOAT16_BITS  # an older float16 capture: uint16
    n_layers, n_samples = variable.shape[:2]
    for layer in tqdm(range(n_layers), desc=desc, unit="layer", disable=not progress):
        c, h, w = shapes[layer]
        for start in range(0, n_samples, step):
            block = np.asarray(variable[layer, start:start + step, :c, :h, :w])
            yield layer, block.view(np.float16).astype(np.float32) if float16 else block
