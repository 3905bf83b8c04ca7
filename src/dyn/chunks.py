"""Whole HDF5 chunks of a capture file, encoded and decoded by us, in threads.

The capture's `activation` variable uses HDF5's standard shuffle + deflate filters, so any NetCDF
reader can read it. Left to the library, those filters run one chunk at a time under HDF5's global
lock, with zlib: about 50 MB/s to write, which made writing slower than the forward pass. Here the
same byte streams are made in Python threads instead (ISA-L's deflate to write, libdeflate to read:
both release the GIL and run several times faster than zlib). Whole chunks are written with HDF5's
direct chunk I/O (h5py's write_direct_chunk) and read with plain preads at the places HDF5 gives
(capture.ChunkReader).
"""
from __future__ import annotations

import ctypes
import struct
import threading
import zlib

import numpy as np

from .jit import kernel

DEFLATE, SHUFFLE = 1, 2  # HDF5 filter ids (H5Z_FILTER_DEFLATE, H5Z_FILTER_SHUFFLE)
SEGMENT = 1 << 18  # bytes deflated at a time, each only where a probe shows that pays (fast_deflate)
PROBE = 4096


def filter_ids(dataset) -> tuple[int, ...] | None:
    """The dataset's filter pipeline as HDF5 filter ids in write order, or None if we cannot run it."""
    plist = dataset.id.get_create_plist()
    ids = tuple(plist.get_filter(i)[0] for i in range(plist.get_nfilters()))
    return ids if ids in ((), (SHUFFLE,), (DEFLATE,), (SHUFFLE, DEFLATE)) else None


@kernel
def _split_planes_4(words, planes):
    for i in range(words.shape[0]):
        word = words[i]
        planes[0, i] = word & np.uint32(0xFF)
        planes[1, i] = (word >> np.uint32(8)) & np.uint32(0xFF)
        planes[2, i] = (word >> np.uint32(16)) & np.uint32(0xFF)
        planes[3, i] = word >> np.uint32(24)


@kernel
def _split_planes_2(words, planes):
    for i in range(words.shape[0]):
        planes[0, i] = words[i] & np.uint16(0xFF)
        planes[1, i] = words[i] >> np.uint16(8)


def shuffle(values: np.ndarray) -> np.ndarray:
    """HDF5's shuffle filter for a little-endian type: byte 0 of every element, then byte 1, ...
    (floats compress better so), as a (size, n) array of byte planes.

    One pass in numba for 2- and 4-byte types; numpy's strided copies, one plane at a time, else.
    """
    size = values.dtype.itemsize
    flat = np.ascontiguousarray(values).reshape(-1)
    planes = np.empty((size, flat.shape[0]), np.uint8)
    if size in (2, 4):
        (_split_planes_4 if size == 4 else _split_planes_2)(flat.view(f"<u{size}"), planes)
        return planes
    elements = flat.view(np.uint8).reshape(-1, size)
    for k in range(size):
        planes[k] = elements[:, k]
    return planes


@kernel
def _join_planes_4(planes, out):
    for i in range(out.shape[0]):
        out[i] = (np.uint32(planes[0, i]) | (np.uint32(planes[1, i]) << np.uint32(8))
                  | (np.uint32(planes[2, i]) << np.uint32(16)) | (np.uint32(planes[3, i]) << np.uint32(24)))


@kernel
def _join_planes_2(planes, out):
    for i in range(out.shape[0]):
        out[i] = np.uint16(planes[0, i]) | (np.uint16(planes[1, i]) << np.uint16(8))


def unshuffle(data: bytes | np.ndarray, dtype, out: np.ndarray | None = None) -> np.ndarray:
    """The inverse of `shuffle` for a little-endian `dtype`: a flat array of it (in `out` if given).

    Each element is put together from its byte planes in one pass (numba) for 2- and 4-byte types,
    the capture's float16 and float32; one strided numpy copy per plane for other sizes.
    """
    dtype = np.dtype(dtype)
    size = dtype.itemsize
    planes = np.frombuffer(data, np.uint8).reshape(size, -1)
    if out is None:
        out = np.empty(planes.shape[1], dtype)
    if size in (2, 4):
        (_join_planes_4 if size == 4 else _join_planes_2)(planes, out.view(f"<u{size}"))
    else:
        elements = out.view(np.uint8).reshape(-1, size)
        for k in range(size):
            elements[:, k] = planes[k]
    return out


def compress(data: bytes | np.ndarray, level: int) -> bytes:
    """A zlib stream, as HDF5's deflate filter writes it. Levels other than 1 use zlib itself, so a
    requested level means what zlib means. Level 1 (the default) has zlib 1's ratio at about ten
    times its speed, and reads back faster: see `fast_deflate`."""
    if level == 1:
        return fast_deflate(data)
    return zlib.compress(data, level)


def fast_deflate(data: bytes | np.ndarray) -> bytes:
    """A zlib stream of `data`: each SEGMENT deflated with ISA-L's level 1, or stored as is where
    probes of its first and last PROBE bytes both show deflate saving under 3 %.

    The low bytes of float mantissas are close to random: after the shuffle they make up most of a
    chunk, and deflate can't shrink them. Stored blocks cost next to nothing to write and to inflate
    (a copy), where Huffman-coding random bytes costs about as much as compressing them: libdeflate
    reads such a stream about twice as fast as one deflated whole, and its size is within 0.1 %.
    """
    from isal import isal_zlib

    import deflate

    view = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else data)
    parts = [b"\x78\x01"]  # zlib header: deflate, 32 KiB window, "fastest" level
    for start in range(0, len(view), SEGMENT):
        segment = view[start:start + SEGMENT]
        if any(len(isal_zlib.compress(probe, 1, -15)) < 0.97 * len(probe)
               for probe in (segment[:PROBE], segment[-PROBE:])):
            compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)  # raw deflate, ends byte-aligned
            parts += [compressor.compress(segment), compressor.flush(isal_zlib.Z_SYNC_FLUSH)]
        else:
            parts += _stored_blocks(segment)
    parts.append(b"\x01\x00\x00\xff\xff")  # an empty final stored block ends the deflate stream
    parts.append(struct.pack(">I", deflate.adler32(view)))
    return b"".join(parts)


def _stored_blocks(segment: memoryview) -> list:
    """Non-final stored deflate blocks (at most 65,535 bytes each) holding `segment` as is."""
    parts = []
    for start in range(0, len(segment), 65535):
        piece = segment[start:start + 65535]
        parts += [struct.pack("<BHH", 0, len(piece), len(piece) ^ 0xFFFF), piece]
    return parts


def decompress(data: bytes, size: int) -> bytes:
    """Inflate a zlib stream of known decompressed `size` with libdeflate (about 2-3x zlib's speed)."""
    import deflate

    return deflate.zlib_decompress(data, size)


class Scratch:
    """Buffers that one thread reuses from chunk to chunk (ChunkReader.load, decode).

    A fresh multi-megabyte array for every chunk costs a page fault per 4 KiB, since glibc gives
    large blocks back to the kernel when they are freed: measured on a CaiT-S24 capture, those
    faults took more CPU time than inflating the chunks.
    """

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, nbytes: int) -> np.ndarray:
        """A uint8 array of `nbytes`, the same memory as the last `get` of `name` where it fits."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < nbytes:
            buffer = self._buffers[name] = np.empty(nbytes, np.uint8)
        return buffer[:nbytes]


class _Decompressor:
    """One libdeflate decompressor (they are not thread-safe: one per thread), freed with this object."""

    def __init__(self, lib):
        self.lib, self.pointer = lib, lib.libdeflate_alloc_decompressor()
        if not self.pointer:
            raise MemoryError("libdeflate could not allocate a decompressor")

    def __del__(self):
        self.lib.libdeflate_free_decompressor(self.pointer)


_LIBDEFLATE_RESULTS = {1: "bad data", 2: "shorter than expected", 3: "longer than expected"}
_thread_state = threading.local()


def _libdeflate():
    """libdeflate's C API through ctypes, or None where it is not reachable.

    The `deflate` package builds libdeflate into its extension module with the C API exported; its
    Python API has no way to inflate into a given buffer, which this needs. ctypes calls release the GIL.
    """
    lib = getattr(_libdeflate, "lib", False)
    if lib is False:
        from deflate import _deflate

        try:
            lib = ctypes.CDLL(_deflate.__file__)
            lib.libdeflate_alloc_decompressor.restype = ctypes.c_void_p
            lib.libdeflate_free_decompressor.argtypes = [ctypes.c_void_p]
            lib.libdeflate_zlib_decompress.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                                       ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        except (OSError, AttributeError):  # another build of the package: fall back to its Python API
            lib = None
        _libdeflate.lib = lib
    return lib


def decompress_into(data: bytes | np.ndarray, out: np.ndarray) -> np.ndarray:
    """Inflate a zlib stream into `out` (C-contiguous uint8), which it must fill exactly."""
    import deflate

    lib = _libdeflate()
    if lib is None:
        inflated = decompress(data, out.nbytes)
        result = 2 if len(inflated) < out.nbytes else 0
        out[:len(inflated)] = np.frombuffer(inflated, np.uint8)
    else:
        decompressor = getattr(_thread_state, "decompressor", None)
        if decompressor is None:
            decompressor = _thread_state.decompressor = _Decompressor(lib)
        source = np.frombuffer(data, np.uint8)
        result = lib.libdeflate_zlib_decompress(decompressor.pointer, source.ctypes.data, source.nbytes,
                                                out.ctypes.data, out.nbytes, None)
    if result:
        raise deflate.DeflateError(f"cannot inflate a chunk: {_LIBDEFLATE_RESULTS.get(result, result)}")
    return out


def encode(values: np.ndarray, ids: tuple[int, ...], level: int) -> bytes | np.ndarray:
    """One whole chunk (the chunk's full shape) through the filter pipeline `ids`, as a buffer."""
    data = shuffle(values) if SHUFFLE in ids else np.ascontiguousarray(values)
    return compress(data, level) if DEFLATE in ids else data.reshape(-1)


def decode(data: bytes | np.ndarray, ids: tuple[int, ...], filter_mask: int, shape: tuple[int, ...], dtype,
           scratch: Scratch | None = None) -> np.ndarray:
    """One chunk as stored in the file (read_direct_chunk, or a pread) back to an array of `shape`.

    Bit i of `filter_mask` set means the library skipped filter i for this chunk (HDF5 may store a
    chunk unfiltered when an optional filter fails), so that filter is not undone either. With
    `scratch`, the result may live in its buffers (or in `data`): valid until its next use.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    applied = [f for i, f in enumerate(ids) if not filter_mask & (1 << i)]
    if DEFLATE in applied:
        data = decompress_into(data, scratch.get("inflated", nbytes) if scratch else np.empty(nbytes, np.uint8))
    if SHUFFLE in applied:
        values = unshuffle(data, dtype, scratch.get("values", nbytes).view(dtype) if scratch else None)
    else:
        values = np.frombuffer(data, dtype)
    return values.reshape(shape)
