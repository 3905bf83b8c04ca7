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
from typing import TYPE_CHECKING, Callable, Iterator

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

    Use as a context manager: the file appears at `path` only when the block exits cleanly. Each
    write covers whole chunks (`samples_per_chunk` samples from a multiple of it, or the last ones);
    `workers` threads shuffle and compress the chunks (chunks.py) while the caller goes on.
    """

    def __init__(self, path: str | os.PathLike, layer_shapes: list[tuple[int, int, int]], n_samples: int,
                 attrs: dict, dtype: str = "float32", samples_per_chunk: int = 16, compression_level: int = 1,
                 workers: int | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"unknown capture dtype '{dtype}': valid are {', '.join(DTYPES)}")
        self.path, self.layer_shapes, self.n_samples = Path(path), [tuple(s) for s in layer_shapes], n_samples
        self.attrs, self.dtype, self.level = attrs, dtype, compression_level
        self.chunk = min(samples_per_chunk, n_samples)
        self.workers = workers or min(8, os.cpu_count() or 1)

    def __enter__(self) -> "CaptureWriter":
        from concurrent.futures import ThreadPoolExecutor

        import h5py
        import netCDF4

        from .chunks import filter_ids

        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        root = netCDF4.Dataset(tmp, "w", format="NETCDF4")
        try:  # the layout, coords and attrs through the NetCDF library; the chunks through h5py
            _create_layout(root, self.layer_shapes, self.n_samples, self.dtype, self.chunk, self.level, self.attrs)
        finally:
            root.close()
        self._file = h5py.File(tmp, "r+")
        self._variable = self._file["activation"]
        self._filters = filter_ids(self._variable)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dyn-chunk")
        self._pending: list = []
        return self

    def write(self, layer: int, start: int, block: np.ndarray) -> None:
        """Samples start.. of one layer: a (samples, C, H, W) array of that layer's own shape."""
        n = block.shape[0]
        if start % self.chunk or (n != self.chunk and start + n != self.n_samples) or n > self.chunk:
            raise ValueError(f"capture writes cover whole chunks of {self.chunk} samples: got samples "
                             f"{start}..{start + n} of {self.n_samples}")
        values = _padded(block, (self.chunk, *self._variable.shape[2:]), self.dtype)
        unfinished = []
        for future in self._pending:
            if future.done():
                future.result()  # a chunk that failed fails the next write
            else:
                unfinished.append(future)
        self._pending = unfinished
        while len(self._pending) >= 2 * self.workers:  # bound the chunks held in memory
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._write_chunk, layer, start, values))

    def _write_chunk(self, layer: int, start: int, values: np.ndarray) -> None:
        from .chunks import encode

        data = encode(values, self._filters, self.level)
        self._variable.id.write_direct_chunk((layer, start, 0, 0, 0), data)

    def __exit__(self, *exc) -> None:
        try:
            self._pool.shutdown(wait=True)
            if exc[0] is None:
                for future in self._pending:
                    future.result()  # re-raise a failed chunk
        finally:
            self._file.close()
            self._atomic.__exit__(*exc)


def capture(model: "torch.nn.Module", images: "Dataset", path: str | os.PathLike, attrs: dict,
            dtype: str = "float32", samples_per_chunk: int = 16, compression_level: int = 1,
            device: "str | torch.device" = "cpu", progress: bool = False) -> Path:
    """Write the activations of every layer of `model` on `images` to `path` (atomically).

    The model computes batch i+1 while a background thread hands batch i to a CaptureWriter, whose
    threads shuffle and deflate its chunks without the GIL (chunks.py).
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
    """A (B, C, H, W) block in the file's storage type, NaN-padded to a whole (samples, channel, y, x) chunk."""
    values = block.astype(DTYPES[dtype], copy=False)
    if values.shape != tuple(shape):
        b, c, h, w = values.shape
        full = np.full(shape, np.nan, dtype=DTYPES[dtype])
        full[:b, :c, :h, :w] = values
        values = full
    return np.ascontiguousarray(values).view(_STORAGE[dtype][1])


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

    The default block is the file's own chunk: whole chunks are read and decoded by a few threads
    (ChunkReader), a few chunks ahead of the consumer, so memory is bounded by a few blocks of
    (samples_per_chunk, C, H, W). Another block size, or a filter pipeline other than shuffle and
    deflate, reads through the NetCDF library. `prefetch` adds a read-ahead thread on top.
    """
    reader = ChunkReader.open(path, samples_per_chunk)
    if reader is not None:
        blocks = reader.blocks(progress=progress, desc=desc)
    else:
        blocks = _library_blocks(path, samples_per_chunk, progress, desc)
    return _read_ahead(blocks, depth=2) if prefetch else blocks


class ChunkReader:
    """The whole chunks of a capture file's `activation`, each loaded on its own (`load`), in any thread.

    A load is a pread of the chunk's bytes plus their decoding (chunks.py): both run without the GIL,
    so several threads can each load and process a chunk. The chunks' places in the file are looked
    up once through h5py; after that the file is read with plain preads. Close it (or use it as a
    context manager) once every load has returned.
    """

    def __init__(self, path, ids, shapes, chunk_shape, dtype, fill, view, chunks):
        self.ids, self.shapes, self.chunk_shape = ids, shapes, chunk_shape
        self.dtype, self.fill, self.view = dtype, fill, view
        self.chunks = chunks  # [(layer, samples in the chunk, h5py StoreInfo)] in file order
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "ChunkReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def open(cls, path: str | os.PathLike, samples_per_chunk: int | None = None) -> "ChunkReader | None":
        """A reader, or None where the file is not laid out in whole chunks we can decode."""
        import h5py

        from .chunks import filter_ids

        with h5py.File(path, "r") as root:
            variable = root["activation"]
            ids, chunk_shape = filter_ids(variable), variable.chunks
            if (ids is None or chunk_shape is None or chunk_shape[0] != 1 or variable.dtype.byteorder == ">"
                    or tuple(chunk_shape[2:]) != variable.shape[2:] or samples_per_chunk not in (None, chunk_shape[1])):
                return None
            encoding = variable.attrs.get("dyn_encoding")
            encoding = encoding.decode() if isinstance(encoding, bytes) else encoding
            shapes = np.stack([root[name][:] for name in ("channels", "height", "width")], axis=1).astype(int)
            n_layers, n_samples = variable.shape[:2]
            step = chunk_shape[1]
            chunks = [(layer, min(step, n_samples - start), variable.id.get_chunk_info_by_coord((layer, start, 0, 0, 0)))
                      for layer in range(n_layers) for start in range(0, n_samples, step)]
            return cls(path, ids, shapes, tuple(chunk_shape[1:]), variable.dtype, variable.fillvalue,
                       np.float16 if encoding == FLOAT16_BITS else None, chunks)

    def load(self, index: int, scratch=None) -> np.ndarray:
        """Chunk `index` of `chunks` as a (samples, C, H, W) array of its layer's own shape.

        With a chunks.Scratch, the file's bytes and the decoded values go into its buffers, and the
        array returned lives there until that scratch's next use: for a caller that is done with
        each block before it loads the next, in the same thread.
        """
        from .chunks import decode

        layer, n, info = self.chunks[index]
        if info.byte_offset is None:  # never written: HDF5 would give the fill value
            values = np.full(self.chunk_shape, self.fill, dtype=self.dtype)
        else:
            values = decode(self._read(info, scratch), self.ids, info.filter_mask, self.chunk_shape, self.dtype, scratch)
        c, h, w = self.shapes[layer]
        values = values[:n]
        if values.shape[1:] != (c, h, w):  # a CNN stage smaller than the widest layer
            values = np.ascontiguousarray(values[:, :c, :h, :w])
        return values.view(self.view) if self.view else values

    def _read(self, info, scratch) -> bytes | np.ndarray:
        """A chunk's bytes as stored, into scratch's buffer where given."""
        if scratch is None:
            data = os.pread(self.fd, info.size, info.byte_offset)
            got = len(data)
        else:
            data = scratch.get("stored", info.size)
            got = os.preadv(self.fd, [data], info.byte_offset)
        if got != info.size:
            raise OSError(f"{self.path}: a chunk ends past the end of the file (truncated?)")
        return data

    def loaders(self, progress: bool = False, desc: str = "layers") -> Iterator[tuple[int, Callable[[], np.ndarray]]]:
        """(layer, a function loading that chunk), in file order."""
        import functools

        for index, (layer, _, _) in enumerate(tqdm(self.chunks, desc=desc, unit="chunk", disable=not progress)):
            yield layer, functools.partial(self.load, index)

    def blocks(self, workers: int | None = None, progress: bool = False,
               desc: str = "layers") -> Iterator[tuple[int, np.ndarray]]:
        """(layer, block) in file order, loaded by `workers` threads a few chunks ahead."""
        from concurrent.futures import ThreadPoolExecutor

        workers = workers or min(4, os.cpu_count() or 1)
        with self, ThreadPoolExecutor(workers, thread_name_prefix="dyn-decode") as pool:
            yield from in_order(pool, self.loaders(progress, desc), ahead=workers)


def in_order(pool, tasks: Iterator[tuple[int, Callable]], ahead: int) -> Iterator[tuple[int, object]]:
    """(key, task()) for each (key, task) of `tasks`, run on `pool`, in order, with at most
    `ahead` + 1 tasks submitted and unread: memory stays bounded while the pool's threads are busy."""
    from collections import deque

    pending: deque = deque()
    for key, task in tasks:
        pending.append((key, pool.submit(task)))
        if len(pending) > ahead:
            done_key, future = pending.popleft()
            yield done_key, future.result()
    while pending:
        done_key, future = pending.popleft()
        yield done_key, future.result()


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


def _library_blocks(path, samples_per_chunk, progress, desc) -> Iterator[tuple[int, np.ndarray]]:
    """Any other layout or block size: slices read through xarray and the NetCDF library."""
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
