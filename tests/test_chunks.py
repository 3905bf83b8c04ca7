"""Capture chunks written and read by our own threads (chunks.py) against the NetCDF library's filters."""
import shutil
import subprocess
import zlib

import netCDF4
import numpy as np
import pytest
import xarray as xr

from dyn import chunks
from dyn.capture import ChunkReader, CaptureWriter, iter_layer_blocks, _library_blocks
from dyn.chunks import SEGMENT, Scratch, decompress, decompress_into, fast_deflate, shuffle, unshuffle

SHAPES = [(6, 3, 3), (4, 2, 3), (6, 1, 1)]  # CNN-like: layers of different shapes, NaN-padded


def loop_shuffle(values: np.ndarray) -> bytes:
    raw = values.tobytes()
    size = values.dtype.itemsize
    return bytes(raw[i * size + k] for k in range(size) for i in range(values.size))


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.float64, np.uint8])
def test_shuffle_matches_byte_loop(dtype):
    values = (np.random.default_rng(0).standard_normal(37) * 1000).astype(dtype)
    shuffled = shuffle(values).tobytes()
    assert shuffled == loop_shuffle(values)
    assert unshuffle(shuffled, dtype).tobytes() == values.tobytes()
    out = np.full_like(values, 7)
    assert unshuffle(shuffled, dtype, out) is out and out.tobytes() == values.tobytes()


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, SEGMENT - 1, SEGMENT + 1, 3 * SEGMENT + 12345])
def test_fast_deflate_is_a_zlib_stream(size):
    rng = np.random.default_rng(size)
    # Random bytes (stored), then zeros (deflated), so one stream holds both kinds of block.
    data = np.concatenate([rng.integers(0, 256, size // 2, dtype=np.uint8), np.zeros(size - size // 2, np.uint8)])
    packed = fast_deflate(data)
    assert zlib.decompress(packed) == data.tobytes()
    assert decompress(packed, size) == data.tobytes()
    # Stored random bytes cost 5 bytes per 64 KiB block; zeros shrink to almost nothing.
    assert len(packed) <= size // 2 + 5 * (size // 65535 + 2 * (size // SEGMENT) + 2) + 0.01 * size + 64


@pytest.fixture(params=["ctypes", "python api"])
def inflater(request, monkeypatch):
    """decompress_into through libdeflate's C API, and through the deflate package's Python API (its fallback)."""
    assert chunks._libdeflate() is not None  # the installed deflate package exports the C API
    if request.param == "python api":
        monkeypatch.setattr(chunks._libdeflate, "lib", None)
    return request.param


def test_decompress_into_fills_the_buffer_it_is_given(inflater):
    data = np.random.default_rng(4).integers(0, 4, 300_000, dtype=np.uint8)  # deflates well
    out = np.empty(data.size, np.uint8)
    assert decompress_into(zlib.compress(data.tobytes(), 6), out) is out
    np.testing.assert_array_equal(out, data)
    out[:] = 0
    decompress_into(np.frombuffer(fast_deflate(data), np.uint8), out)  # from an array, as a pread into scratch gives
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("wrong", ["corrupt", "too short", "too long"])
def test_decompress_into_rejects_a_stream_that_does_not_fill_the_buffer_exactly(inflater, wrong):
    import deflate

    data = np.arange(1000, dtype=np.uint16).tobytes()
    packed = zlib.compress(data)
    size = {"corrupt": len(data), "too short": len(data) + 1, "too long": len(data) - 1}[wrong]
    if wrong == "corrupt":
        packed = packed[:10] + bytes(b ^ 0xFF for b in packed[10:20]) + packed[20:]
    with pytest.raises(deflate.DeflateError):
        decompress_into(packed, np.empty(size, np.uint8))


def test_decompress_into_from_threads():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    streams = [rng.integers(0, 3, 50_000 + i, dtype=np.uint8) for i in range(16)]
    packed = [zlib.compress(s.tobytes()) for s in streams]

    def inflate(i):  # each thread has its own libdeflate decompressor
        return decompress_into(packed[i], np.empty(streams[i].size, np.uint8))

    with ThreadPoolExecutor(4) as pool:
        for got, want in zip(pool.map(inflate, range(16)), streams):
            np.testing.assert_array_equal(got, want)


def test_scratch_reuses_its_memory():
    scratch = Scratch()
    first = scratch.get("values", 1000)
    assert scratch.get("values", 500).ctypes.data == first.ctypes.data and scratch.get("values", 500).size == 500
    assert scratch.get("other", 10).ctypes.data != first.ctypes.data
    assert scratch.get("values", 2000).size == 2000  # grown


def random_layers(rng, n, dtype=np.float32):
    return [rng.standard_normal((n, *shape)).astype(dtype) for shape in SHAPES]


def write(path, layers, n, chunk, level, dtype="float32"):
    with CaptureWriter(path, SHAPES, n, {"model": "test"}, dtype=dtype, samples_per_chunk=chunk,
                       compression_level=level, workers=3) as writer:
        for layer, values in enumerate(layers):
            for start in range(0, n, chunk):
                writer.write(layer, start, values[start:start + chunk])
    return path


@pytest.mark.parametrize("level", [0, 1, 6])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_chunks_we_write_read_back_through_the_netcdf_library(tmp_path, level, dtype):
    rng = np.random.default_rng(level)
    n, chunk = 7, 3  # the last chunk is partial
    layers = random_layers(rng, n, np.dtype(dtype))
    path = write(tmp_path / "a.nc", layers, n, chunk, level, dtype)
    with netCDF4.Dataset(path) as root:
        variable = root["activation"]
        variable.set_auto_maskandscale(False)
        assert variable.filters()["zlib"] == (level > 0) and variable.filters()["shuffle"] == (level > 0)
        stored = variable[:]
    for layer, values in enumerate(layers):
        c, h, w = SHAPES[layer]
        got = stored[layer, :, :c, :h, :w]
        if dtype == "float16":
            got = got.view(np.float16)
        np.testing.assert_array_equal(got, values)
        if dtype == "float32":  # the padding is NaN, as the contract says
            assert np.isnan(stored[layer, :, c:]).all() and np.isnan(stored[layer, :, :, h:]).all()


def library_file(path, values, chunks, **filters):
    """A capture-like file written by the NetCDF library alone (its own filters)."""
    with netCDF4.Dataset(path, "w") as root:
        for name, size in zip(("layer", "sample", "channel", "y", "x"), values.shape):
            root.createDimension(name, size)
        for name, index in (("channels", 2), ("height", 3), ("width", 4)):
            root.createVariable(name, "i4", ("layer",))[:] = values.shape[index]
        variable = root.createVariable("activation", "f4", ("layer", "sample", "channel", "y", "x"),
                                       chunksizes=chunks, **filters)
        variable[:] = values
    return path


@pytest.mark.parametrize("filters", [dict(zlib=True, complevel=4, shuffle=True), dict(zlib=True, shuffle=False),
                                     dict(), dict(zlib=True, shuffle=True, fletcher32=True)])
def test_we_read_chunks_the_library_wrote(tmp_path, filters):
    values = np.random.default_rng(1).standard_normal((3, 5, 6, 2, 3)).astype(np.float32)
    path = library_file(tmp_path / "lib.nc", values, (1, 2, 6, 2, 3), **filters)
    blocks = list(iter_layer_blocks(path))
    assert [(layer, block.shape[0]) for layer, block in blocks] == [(layer, n) for layer in range(3) for n in (2, 2, 1)]
    for layer in range(3):
        np.testing.assert_array_equal(np.concatenate([b for l, b in blocks if l == layer]), values[layer])


def test_direct_and_library_readers_agree(tmp_path):
    rng = np.random.default_rng(2)
    path = write(tmp_path / "b.nc", random_layers(rng, 10), 10, 4, 1)
    direct = list(iter_layer_blocks(path))
    library = list(_library_blocks(path, None, False, ""))
    assert [layer for layer, _ in direct] == [layer for layer, _ in library]
    for (_, a), (_, b) in zip(direct, library):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("level", [0, 1])
def test_loads_into_scratch_equal_fresh_loads(tmp_path, level):
    rng = np.random.default_rng(6)
    path = write(tmp_path / "s.nc", random_layers(rng, 7), 7, 3, level)
    scratch = Scratch()
    with ChunkReader.open(path) as reader:
        for index in range(len(reader.chunks)):
            fresh = reader.load(index)
            reused = reader.load(index, scratch=scratch)
            assert reused.shape == fresh.shape
            np.testing.assert_array_equal(reused, fresh)


def test_a_truncated_file_is_reported(tmp_path):
    rng = np.random.default_rng(7)
    path = write(tmp_path / "t.nc", random_layers(rng, 7), 7, 3, 1)
    reader = ChunkReader.open(path)
    last = max(range(len(reader.chunks)), key=lambda i: reader.chunks[i][2].byte_offset)
    with open(path, "r+b") as f:
        f.truncate(reader.chunks[last][2].byte_offset + 10)
    with reader, pytest.raises(OSError, match="truncated"):
        reader.load(last, scratch=Scratch())
    with pytest.raises(OSError, match="truncated"):
        ChunkReader.open(path).load(last)


def test_writes_must_cover_whole_chunks(tmp_path):
    with pytest.raises(ValueError, match="whole chunks of 4 samples"):
        with CaptureWriter(tmp_path / "c.nc", SHAPES, 10, {}, samples_per_chunk=4) as writer:
            writer.write(0, 2, np.zeros((4, *SHAPES[0]), np.float32))
    assert not (tmp_path / "c.nc").exists()


@pytest.mark.skipif(shutil.which("ncdump") is None, reason="ncdump (Debian netcdf-bin) not installed; CI installs it")
def test_ncdump_reads_the_values_we_wrote(tmp_path):
    rng = np.random.default_rng(3)
    layers = random_layers(rng, 5)
    path = write(tmp_path / "d.nc", layers, 5, 2, 1)
    dump = subprocess.run(["ncdump", "-p", "9", "-v", "activation", str(path)], capture_output=True, text=True,
                          check=True).stdout
    text = dump.split("activation =", 1)[1].rsplit(";", 1)[0].replace("\n", " ")
    numbers = np.array([np.nan if v.strip() in ("_", "NaN", "NaNf") else float(v) for v in text.split(",")])
    with xr.open_dataset(path) as ds:
        expected = ds["activation"].values.reshape(-1)
    np.testing.assert_allclose(numbers, expected, rtol=1e-7, equal_nan=True)
