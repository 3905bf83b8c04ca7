"""Whole HDF5 chunks of a capture file, encoded and decoded by us, in threads.

The capture's `activation` variable uses HDF5's standard shuffle + deflate filters, so any NetCDF
reader can read it. Left to the library, those filters run one chunk at a time under HDF5's global
lock, with zlib: about 50 MB/s to write, which made writing slower than the forward pass. Here the
same byte streams are made in Python threads instead (ISA-L's deflate to write, libdeflate to read:
both release the GIL and run several times faster than zlib) and whole chunks move through HDF5's
direct chunk I/O (h5py's write_direct_chunk / read_direct_chunk).
"""
from __future__ import annotations

import zlib

import numpy as np

DEFLATE, SHUFFLE = 1, 2  # HDF5 filter ids (H5Z_FILTER_DEFLATE, H5Z_FILTER_SHUFFLE)


def filter_ids(dataset) -> tuple[int, ...] | None:
    """The dataset's filter pipeline as HDF5 filter ids in write order, or None if we cannot run it."""
    plist = dataset.id.get_create_plist()
    ids = tuple(plist.get_filter(i)[0] for i in range(plist.get_nfilters()))
    return ids if ids in ((), (SHUFFLE,), (DEFLATE,), (SHUFFLE, DEFLATE)) else None


def shuffle(values: np.ndarray) -> np.ndarray:
    """HDF5's shuffle filter: byte 0 of every element, then byte 1, ... (floats compress better so).

    One plane at a time: several times faster than numpy's transposing copy of the (n, size) bytes.
    """
    size = values.dtype.itemsize
    elements = np.ascontiguousarray(values).reshape(-1).view(np.uint8).reshape(-1, size)
    planes = np.empty((size, elements.shape[0]), np.uint8)
    for k in range(size):
        planes[k] = elements[:, k]
    return planes


def unshuffle(data: bytes | np.ndarray, dtype) -> np.ndarray:
    """The inverse of `shuffle` for a little-endian `dtype`: a flat array of it.

    Builds each element from its byte planes with shifts and ors on whole planes (about 5x the
    speed of numpy's transposing copy), most significant byte first.
    """
    dtype = np.dtype(dtype)
    size = dtype.itemsize
    planes = np.frombuffer(data, np.uint8).reshape(size, -1)
    if size == 1:
        return planes[0].copy().view(dtype)
    out = planes[size - 1].astype(f"<u{size}")
    for k in range(size - 2, -1, -1):
        out <<= 8
        out |= planes[k]
    return out.view(dtype)


def compress(data: bytes | np.ndarray, level: int) -> bytes:
    """A zlib stream, as HDF5's deflate filter writes it. Level 1 uses ISA-L (zlib 1's ratio, about
    ten times its speed); other levels use zlib itself, so a requested level means what zlib means."""
    if level == 1:
        from isal import isal_zlib

        return isal_zlib.compress(data, 1)
    return zlib.compress(data, level)


def decompress(data: bytes, size: int) -> bytes:
    """Inflate a zlib stream of known decompressed `size` with libdeflate (about 2-3x zlib's speed)."""
    import deflate

    return deflate.zlib_decompress(data, size)


def encode(values: np.ndarray, ids: tuple[int, ...], level: int) -> bytes | np.ndarray:
    """One whole chunk (the chunk's full shape) through the filter pipeline `ids`, as a buffer."""
    data = shuffle(values) if SHUFFLE in ids else np.ascontiguousarray(values)
    return compress(data, level) if DEFLATE in ids else data.reshape(-1)


def decode(data: bytes, ids: tuple[int, ...], filter_mask: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """One chunk read with read_direct_chunk back to an array of `shape`.

    Bit i of `filter_mask` set means the library skipped filter i for this chunk (HDF5 may store a
    chunk unfiltered when an optional filter fails), so that filter is not undone either.
    """
    dtype = np.dtype(dtype)
    applied = [f for i, f in enumerate(ids) if not filter_mask & (1 << i)]
    if DEFLATE in applied:
        data = decompress(data, int(np.prod(shape)) * dtype.itemsize)
    values = unshuffle(data, dtype) if SHUFFLE in applied else np.frombuffer(data, dtype)
    return values.reshape(shape)
