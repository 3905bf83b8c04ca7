import shutil
import subprocess

import numpy as np
import pytest
import reference
import timm
import torch
import xarray as xr

from dyn.analysis import metric_files, metrics
from dyn.analysis.capture import capture, iter_layer_blocks
from dyn.data import analysis_images, build_dataset, build_transform, labels_of, stack
from dyn.data import DigitsDataset
from dyn.models import features


def _capture(tmp_path, arch, n=10, dtype="float32", chunk=4, level=0, sample="first"):
    torch.manual_seed(0)
    model = timm.create_model(arch).eval()
    images = analysis_images(build_dataset({"name": "digits"}, "val", build_transform(model, train=False)), n, sample)
    path = capture(model, images, tmp_path / f"{arch}.nc", {"model": arch, "checkpoint_sha256": "abc",
                                                             "dataset": "digits", "split": "val"},
                   dtype=dtype, samples_per_chunk=chunk, compression_level=level)
    return model, stack(images)[0], path


@pytest.mark.parametrize("arch, level", [("deit_digits", 0), ("cait_digits", 0), ("resnet_digits", 0),
                                         ("resnet_digits", 4)])
def test_round_trip_matches_features(tmp_path, arch, level):
    model, x, path = _capture(tmp_path, arch, level=level)
    with torch.inference_mode():
        expected = [m.numpy() for m in features(model, x)]
    with xr.open_dataset(path) as ds:
        act = ds["activation"]
        assert act.dims == ("layer", "sample", "channel", "y", "x")
        assert act.dtype == np.float32
        assert list(ds["layer"].values) == list(range(len(expected)))
        assert list(ds["sample"].values) == list(range(10))
        assert list(ds["label"].values) == list(labels_of(DigitsDataset("val"))[:10])
        for key in ("model", "checkpoint_sha256", "dataset", "split", "layer_kind", "dyn_version", "created"):
            assert key in ds.attrs
        assert ds.attrs["layer_kind"] == ("stage" if arch.startswith("resnet") else "block")
        assert act.encoding["chunksizes"] == (1, 4) + act.shape[2:]
        # the standard filters when compressed, none at level 0
        assert act.encoding["zlib"] == act.encoding["shuffle"] == (level > 0)
        assert act.encoding["complevel"] == level
        for layer, fmap in enumerate(expected):
            _, c, h, w = fmap.shape
            assert (ds["channels"][layer], ds["height"][layer], ds["width"][layer]) == (c, h, w)
            stored = act[layer, :, :c, :h, :w].values
            np.testing.assert_array_equal(stored, fmap)
            if c < act.shape[2]:  # CNN stages narrower than the widest are NaN-padded
                assert np.isnan(act[layer, :, c:].values).all()


def test_vit_capture_is_patch_tokens_on_grid(tmp_path):
    model, x, path = _capture(tmp_path, "deit_digits", n=3)
    with xr.open_dataset(path) as ds:
        # 8x8 digits, 2x2 patches: a 4x4 grid, no class token; 32 channels.
        assert ds["activation"].shape == (8, 3, 32, 4, 4)
    with torch.inference_mode():
        tokens = model.forward_intermediates(x, indices=[7], output_fmt="NLC", intermediates_only=True)[0]
    with xr.open_dataset(path) as ds:
        grid = ds["activation"][7].values  # (sample, C, y, x)
    np.testing.assert_array_equal(grid.reshape(3, 32, 16).transpose(0, 2, 1), tokens.numpy())


def test_float16_capture_round_trip(tmp_path):
    model, x, path = _capture(tmp_path, "deit_digits", n=4, dtype="float16")
    with torch.inference_mode():
        expected = [m.numpy().astype(np.float16) for m in features(model, x)]
    blocks = {}
    for layer, block in iter_layer_blocks(path):
        assert block.dtype == np.float32
        blocks.setdefault(layer, []).append(block)
    for layer, fmap in enumerate(expected):
        np.testing.assert_array_equal(np.concatenate(blocks[layer]), fmap)
    # Any NetCDF reader sees floats: the half-precision values, as float32.
    with xr.open_dataset(path) as ds:
        assert ds["activation"].dtype == np.float32 and "half precision" in ds["activation"].attrs["dyn_precision"]
        for layer, fmap in enumerate(expected):
            c, h, w = fmap.shape[1:]
            np.testing.assert_array_equal(ds["activation"][layer, :, :c, :h, :w].values, fmap)
    _, _, full = _capture(tmp_path / "f32", "deit_digits", n=4)
    assert path.stat().st_size < 0.75 * full.stat().st_size, "the zeroed mantissa bits compress away"


def test_a_float16_capture_of_an_older_dyn_still_reads(tmp_path):
    # Before: the half bit patterns as uint16, attribute dyn_encoding.
    import netCDF4

    from dyn.analysis.capture import FLOAT16_BITS

    values = np.random.default_rng(0).standard_normal((2, 3, 4, 2, 2)).astype(np.float16)
    with netCDF4.Dataset(tmp_path / "old.nc", "w") as root:
        for name, size in zip(("layer", "sample", "channel", "y", "x"), values.shape):
            root.createDimension(name, size)
        for name, size in zip(("channels", "height", "width"), values.shape[2:]):
            root.createVariable(name, "i4", ("layer",))[:] = size
        variable = root.createVariable("activation", "u2", ("layer", "sample", "channel", "y", "x"),
                                       chunksizes=(1, 3, 4, 2, 2))
        variable.set_auto_maskandscale(False)
        variable[:] = values.view(np.uint16)
        variable.dyn_encoding = FLOAT16_BITS
    blocks = list(iter_layer_blocks(tmp_path / "old.nc"))
    assert [layer for layer, _ in blocks] == [0, 1] and blocks[0][1].dtype == np.float32
    np.testing.assert_array_equal(np.stack([block for _, block in blocks]), values.astype(np.float32))


@pytest.mark.skipif(shutil.which("ncdump") is None, reason="ncdump (Debian netcdf-bin) not installed; CI installs it")
def test_ncdump_reads_header(tmp_path):
    _, _, path = _capture(tmp_path, "resnet_digits", n=4)
    header = subprocess.run(["ncdump", "-h", str(path)], capture_output=True, text=True, check=True).stdout
    assert "float activation(layer, sample, channel, y, x)" in header
    assert ":layer_kind = \"stage\"" in header


@pytest.mark.parametrize("arch", ["deit_digits", "resnet_digits"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_streaming_equals_in_memory(tmp_path, arch, chunk):
    model, x, path = _capture(tmp_path, arch)
    with torch.inference_mode():
        maps = features(model, x)
    streamed = metric_files.stream_metrics(path, metrics.METRICS, bins=100, samples_per_block=chunk)
    vector = metric_files.stream_metrics(path, ("entropy",), bins=100, samples_per_block=chunk, entropy_range="vector")
    bounds = metrics.global_range(maps)
    assert streamed["entropy_range"] == bounds and vector["entropy_range"] is None
    for layer, fmap in enumerate(maps):
        np.testing.assert_allclose(streamed["spectrum"][layer], metrics.channel_spectrum(fmap), rtol=1e-6)
        assert streamed["entropy"][layer] == pytest.approx(metrics.channel_entropy(fmap, value_range=bounds), rel=1e-12)
        assert vector["entropy"][layer] == pytest.approx(metrics.channel_entropy(fmap), rel=1e-12)
        assert streamed["magnitude"][layer] == pytest.approx(metrics.activation_magnitude(fmap), rel=1e-9)


def authors_entropy(maps, bins=100):
    """The authors' per-layer entropy of a model's maps: every channel vector of every layer binned over the
    min..max of all of them (`np.histogram(v, bins, range=(min, max))`, log2), averaged over images and
    positions; a loop over positions, as their code."""
    low = min(m.min() for m in maps)
    high = max(m.max() for m in maps)
    return [reference.entropy(m, bins=bins, value_range=(low, high)) for m in maps]


@pytest.mark.parametrize("arch", ["deit_digits", "resnet_digits"])  # a CNN: stages NaN-padded in the file
def test_entropy_file_is_the_authors_entropy(tmp_path, arch):
    model, x, path = _capture(tmp_path, arch, n=3)
    with torch.inference_mode():
        maps = [m.numpy() for m in features(model, x)]
    out = metric_files.write_metric(path, "entropy", tmp_path / "entropy.nc")
    with xr.open_dataset(out) as ds:
        np.testing.assert_allclose(ds["entropy"].values, authors_entropy(maps), rtol=1e-9)
        assert ds.attrs["entropy_range"] == "global" and ds.attrs["bins"] == 100
        assert (ds.attrs["range_min"], ds.attrs["range_max"]) == (min(m.min() for m in maps), max(m.max() for m in maps))


def test_capture_keeps_its_range_and_a_file_without_it_is_read_for_it(tmp_path):
    model, x, path = _capture(tmp_path, "resnet_digits", n=5, chunk=2)
    with torch.inference_mode():
        maps = [m.numpy() for m in features(model, x)]
    bounds = (min(m.min() for m in maps), max(m.max() for m in maps))
    with xr.open_dataset(path) as ds:
        assert (ds.attrs["value_min"], ds.attrs["value_max"]) == bounds
    import netCDF4

    with netCDF4.Dataset(path, "a") as root:  # as an older dyn wrote it
        root.delncattr("value_min")
        root.delncattr("value_max")
    assert metric_files.capture_range(path) == bounds


def test_one_pass_equals_one_metric_at_a_time(tmp_path):
    _, _, path = _capture(tmp_path, "resnet_digits", n=10, chunk=3)
    together = metric_files.stream_metrics(path, metrics.METRICS, bins=50, workers=2)
    for name in metrics.METRICS:
        alone = metric_files.stream_metrics(path, (name,), bins=50)[name]
        if name == "spectrum":
            for a, b in zip(together[name], alone):
                np.testing.assert_allclose(a, b, rtol=1e-12)
        else:
            np.testing.assert_allclose(together[name], alone, rtol=1e-12)


def test_streaming_reads_one_block_at_a_time(tmp_path):
    _, _, path = _capture(tmp_path, "resnet_digits", n=10, chunk=4)
    shapes = [(layer, block.shape) for layer, block in iter_layer_blocks(path)]
    assert [s[0] for s in shapes[:3]] == [0, 0, 0] and [s[1][0] for s in shapes[:3]] == [4, 4, 2]
    assert not any(np.isnan(block).any() for _, block in iter_layer_blocks(path))


def test_metric_files(tmp_path):
    _, _, path = _capture(tmp_path, "resnet_digits", n=4)
    for name in metrics.METRICS:
        out = metric_files.write_metric(path, name, tmp_path / f"{name}.nc", bins=100)
        with xr.open_dataset(out) as ds:
            assert ds.attrs["model"] == "resnet_digits" and ds.attrs["metric"] == name
            if name == "spectrum":
                assert ds["spectrum"].dims == ("layer", "frequency")
                assert ds["spectrum"].shape == (5, 256)
                assert np.isnan(ds["spectrum"][1, 32:]).all() and not np.isnan(ds["spectrum"][1, :32]).any()
            else:
                assert ds[name].dims == ("layer",) and np.isfinite(ds[name]).all()
        assert (tmp_path / f"{name}.csv").read_text().startswith("layer,")
    with xr.open_dataset(tmp_path / "entropy.nc") as ds:
        assert ds.attrs["bins"] == 100
    with xr.open_dataset(tmp_path / "spectrum.nc") as ds:  # the authors' "average frequency intensity"
        for layer, c in enumerate(ds["channels"].values):
            assert ds["intensity"][layer] == pytest.approx(float(ds["spectrum"][layer, :c].mean()), rel=1e-12)
    assert (tmp_path / "spectrum.csv").read_text().startswith("layer,frequency,spectrum,intensity,")


def test_a_capture_that_fails_part_way_leaves_no_file(tmp_path):
    class Breaks(torch.utils.data.Dataset):  # the sixth image cannot be read
        def __len__(self):
            return 8

        def __getitem__(self, index):
            if index == 5:
                raise OSError("unreadable image")
            return torch.zeros(1, 8, 8), 0

    with pytest.raises(OSError, match="unreadable"):
        capture(timm.create_model("deit_digits"), Breaks(), tmp_path / "x.nc", {"model": "x"}, samples_per_chunk=4)
    assert list(tmp_path.iterdir()) == []


def test_stratified_capture_keeps_each_samples_index_and_class(tmp_path):
    _, _, path = _capture(tmp_path, "deit_digits", n=12, chunk=5, sample="stratified")
    val = DigitsDataset("val")
    with xr.open_dataset(path) as ds:
        samples, labels = ds["sample"].values, ds["label"].values
        assert ds["label"].dims == ("sample",) and "label" in ds["activation"].coords
    assert list(samples) == sorted(samples) and len(set(samples)) == 12
    np.testing.assert_array_equal(labels, labels_of(val)[samples])
    assert set(labels) == set(range(10))  # 12 images of 10 classes: every class, none three times
