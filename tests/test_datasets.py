"""timm's dataset names through dyn's `build_dataset`: WebDataset shards made here (a stream: the
analysis's first N images), an image folder (indexable: capture, training, snapshots), their one-line
mistakes; and loader workers kept between epochs that give the batches new workers give."""
import io
import json
import random
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import xarray as xr
from conftest import rule_args, dyn_here
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Dataset

from dyn.data import (
    analysis_images,
    analysis_transform,
    build_dataset,
    labels_of,
    num_classes,
    stack,
)
from dyn.errors import UserError
from dyn.training.batches import Batches, split_batches
from dyn.training.recipe import Recipe
from dyn.training.rng import data_seed

SPLITS = {"train": 30, "val": 20}  # images per split: 3 and 2 of each class of the digits


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same 8x8 digits as an image folder (`<split>/<class>/<i>.png`) and as WebDataset shards of
    PNGs with .cls labels (val in two shards), both in the folder's order: by class, then index."""
    root = tmp_path_factory.mktemp("data")
    (root / "wds").mkdir()
    bunch = load_digits()
    pixels = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)
    each = [np.flatnonzero(bunch.target == c)[:5] for c in range(10)]  # each class's first 5: 3 train, 2 val
    info, labels = {"splits": {}}, {}
    for split, n in SPLITS.items():
        members = [int(i) for c in each for i in (c[:3] if split == "train" else c[3:])]
        labels[split] = [int(bunch.target[i]) for i in members]
        for i in members:
            (root / "folder" / split / str(bunch.target[i])).mkdir(parents=True, exist_ok=True)
            (root / "folder" / split / str(bunch.target[i]) / f"{i:04d}.png").write_bytes(_png(pixels[i]))
        shards = [members[:10], members[10:]] if split == "val" else [members]
        for s, shard in enumerate(shards):
            with tarfile.open(root / "wds" / f"{split}-{s:04d}.tar", "w") as tar:
                for i in shard:
                    _add(tar, f"{i:06d}.png", _png(pixels[i]))
                    _add(tar, f"{i:06d}.cls", str(bunch.target[i]).encode())
        info["splits"]["validation" if split == "val" else split] = {
            "name": split, "num_samples": n, "filenames": [f"{split}-{s:04d}.tar" for s in range(len(shards))],
            "shard_lengths": [len(shard) for shard in shards]}
    (root / "wds" / "_info.json").write_text(json.dumps(info))  # timm's split names -> shards, counts
    return root, labels


@pytest.fixture
def wds():
    pytest.importorskip("webdataset")  # the test extra has it; without it, the wds/ tests say why they skip


def _wds(root, **cfg):
    return {"name": "wds/digits", "root": str(root / "wds"), "image_mode": "L", **cfg}


def _folder(root, **cfg):
    return {"name": "folder", "root": str(root / "folder"), "image_mode": "L", **cfg}


def test_webdataset_shards_give_their_first_images_in_order(data, wds):
    root, labels = data
    transform = analysis_transform(timm.create_model("cait_digits"))
    # timm's split names of _info.json (the defaults train / validation), or shards as a brace pattern
    by_info = build_dataset(_wds(root), "val", transform)
    by_pattern = build_dataset(_wds(root, val_split="val-{0000..0001}.tar"), "val", transform)
    assert len(by_info) == 20 and len(by_pattern) == 0  # a pattern without `|N` has no known length
    images, got = stack(analysis_images(by_info, 12, "first"))
    assert images.shape == (12, 1, 8, 8) and got.tolist() == labels["val"][:12]  # across the two shards
    same, _ = stack(analysis_images(by_pattern, 12, "first"))
    folder = build_dataset(_folder(root), "val", transform)
    assert torch.equal(images, same) and torch.equal(images, stack(analysis_images(folder, 12, "first"))[0])
    assert stack(analysis_images(build_dataset(_wds(root), "train", transform), 5, "first"))[1].tolist() == \
        labels["train"][:5]
    with pytest.raises(UserError, match="the split has 20 images"):
        stack(analysis_images(by_pattern, 21, "first"))  # found while reading: the length was unknown
    with pytest.raises(UserError, match="the split has 20 images"):
        analysis_images(by_info, 21, "first")  # found before reading
    with pytest.raises(UserError, match="use analysis.sample: first"):
        analysis_images(by_info, 5, "stratified")
    with pytest.raises(UserError, match="set dataset.num_classes"):
        num_classes(by_info)  # .cls numbers name no classes
    assert num_classes(build_dataset(_wds(root, num_classes=10), "val")) == 10


def test_streams_are_refused_for_training_and_evaluation_in_one_line(teacher, data, wds, tmp_path):
    root, _ = data
    with pytest.raises(UserError, match="dataset.name 'wds/digits' is a stream") as error:
        split_batches(_wds(root), timm.create_model("cait_digits"), Recipe(), seed=0)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="stream dataset"):
        Batches(build_dataset(_wds(root), "val"), 4, shuffle=False)
    fetch = rule_args(["fetch", "--name", "c", "--arch", "cait_digits", "--weights", teacher, "--out", tmp_path / "c.safetensors",
             "--dataset", json.dumps(_wds(root, num_classes=10)), "--device", "cpu"])
    evaluated = dyn_here(fetch)
    assert evaluated.returncode == 2 and "evaluate: false" in evaluated.stderr.splitlines()[-1]
    assert dyn_here(fetch + ["--no-evaluate"]).returncode == 0  # the classes from dataset.num_classes


def test_folder_is_indexable_with_labels_and_classes(data):
    root, labels = data
    val = build_dataset(_folder(root, val_split="val"), "val")  # `validation` (the default) finds val/ too
    assert len(val) == 20 and num_classes(val) == 10 and labels_of(val).tolist() == labels["val"]
    chosen = analysis_images(val, 10, "stratified", seed=1).indices
    assert sorted(labels_of(val)[chosen].tolist()) == list(range(10))
    assert val[0][0].mode == "L" and len(build_dataset(_folder(root), "train")) == 30
    (root / "folder" / "two.txt").write_text("3\n1\n")  # timm's class map: keeps these, in this order
    two = build_dataset(_folder(root, class_map="two.txt"), "val")
    assert len(two) == 4 and num_classes(two) == 2 and labels_of(two).tolist() == [1, 1, 0, 0]
    tar = root / "tarred"
    tar.mkdir()
    with tarfile.open(tar / "val.tar", "w") as archive:  # a split as one .tar of <class>/<image> members
        for c in range(10):
            archive.add(root / "folder" / "val" / str(c), arcname=str(c))
    for c in range(10):  # and as ImageNet's training tar is: a tar of one tar of images per class
        with tarfile.open(tar / f"{c}.tar", "w") as archive:
            for image in sorted((root / "folder" / "train" / str(c)).iterdir()):
                archive.add(image, arcname=image.name)
    with tarfile.open(tar / "train.tar", "w") as archive:
        for c in range(10):
            archive.add(tar / f"{c}.tar", arcname=f"{c}.tar")
    packed = build_dataset({**_folder(root), "root": str(tar)}, "val")
    assert len(packed) == 20 and labels_of(packed).tolist() == labels["val"] and num_classes(packed) == 10
    assert np.array_equal(np.asarray(packed[3][0]), np.asarray(val[3][0]))
    nested = build_dataset({**_folder(root), "root": str(tar)}, "train")
    assert len(nested) == 30 and num_classes(nested) == 10  # members in file-name order, labels by their tar
    target = load_digits().target
    assert labels_of(nested).tolist() == [target[int(Path(nested.filename(i)).stem)] for i in range(30)]


def test_a_hugging_face_dataset_is_indexable(data, tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    root, labels = data
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # as dyn sets it: the cache (here: a local folder) only
    # A local folder through Hugging Face's imagefolder builder; `val` is its name for the validation split.
    cfg = {"name": f"hfds/{root / 'folder'}", "root": str(tmp_path), "image_mode": "L"}
    val = build_dataset(cfg, "val", analysis_transform(timm.create_model("cait_digits")))
    assert len(val) == 20 and num_classes(val) == 10 and sorted(labels_of(val).tolist()) == labels["val"]
    images, got = stack(analysis_images(val, 10, "stratified"))
    assert images.shape == (10, 1, 8, 8) and sorted(got.tolist()) == list(range(10))
    with pytest.raises(UserError, match="dataset.val_split 'test'"):
        build_dataset({**cfg, "val_split": "test"}, "val")


def test_capture_of_shards_and_of_a_folder_is_the_same(teacher, data, wds, tmp_path):
    root, labels = data
    files = {}
    for kind, cfg in (("wds", _wds(root)), ("folder", _folder(root))):
        files[kind] = tmp_path / f"{kind}.nc"
        ran = dyn_here(rule_args(["capture", "--name", "c", "--arch", "cait_digits", "--checkpoint", teacher, "--num-images", 12,
                        "--sample", "first", "--samples-per-chunk", 8, "--dataset", json.dumps(cfg), "--device", "cpu",
                        "--out", files[kind]]))
        assert ran.returncode == 0, ran.stderr[-2000:]
    with xr.open_dataset(files["wds"]) as shards, xr.open_dataset(files["folder"]) as folder:
        assert shards.attrs["dataset"] == "wds/digits" and shards["label"].values.tolist() == labels["val"][:12]
        assert shards["sample"].values.tolist() == list(range(12))
        np.testing.assert_array_equal(shards["activation"].values, folder["activation"].values)
    stratified = dyn_here(rule_args(["capture", "--name", "c", "--arch", "cait_digits", "--checkpoint", teacher,
                           "--dataset", json.dumps(_wds(root)), "--device", "cpu", "--out", tmp_path / "s.nc"]))
    assert stratified.returncode == 2 and stratified.stderr.count("\n") == 1
    assert stratified.stderr.startswith("dyn: error: analysis.sample 'stratified'") and not (tmp_path / "s.nc").exists()


def test_a_folder_trains_a_student_with_snapshots_and_two_workers(teacher, data, tmp_path):
    from dyn.training.distill import distill
    from conftest import snapshots
    from dyn.grid.runs import RunSpec

    root, _ = data
    recipe = Recipe(global_batch=10, lr_base=2e-3, lr_base_size=64, warmup_epochs=0, augment=False, num_workers=2,
                    eval_batch_size=64, crop_pct=None)
    summary = distill([RunSpec("softkd", "none", 0.0, 1, 0)], "cait_digits", teacher, "deit_digits", _folder(root),
                      recipe, [tmp_path / "run"], snapshots=snapshots(num_images=10, every=1), device="cpu")[0]
    assert 0 <= summary["top1"] <= 100
    with xr.open_dataset(tmp_path / "run" / "evolution.nc") as evolution:
        assert evolution.sizes["epoch"] == 2 and np.isfinite(evolution["entropy"].values).all()


@pytest.mark.parametrize("cfg, fragment", [
    ({"name": "xyz/imagenet"}, "unknown dataset.name 'xyz/imagenet': valid datasets are"),
    ({"name": "folder"}, "dataset 'folder' needs dataset.root"),
    ({"name": "wds/x", "root": "/nonexistent/shards"}, "dataset.root does not exist: /nonexistent/shards"),
    ({"name": "wds/x", "root": "DATA/wds", "val_split": "nope"}, "dataset.val_split 'nope'"),
    ({"name": "wds/x", "root": "DATA/wds", "val_split": "val-{0000..0002}.tar"}, "3 shard(s) under"),
    ({"name": "folder", "root": "DATA/folder", "val_split": "test"}, "dataset.val_split 'test': no folder or .tar"),
    ({"name": "folder", "root": "DATA/folder", "image_mode": "CMYK"}, "dataset.image_mode must be one of RGB, L"),
    ({"name": "folder", "root": "DATA/folder", "num_classes": 0}, "dataset.num_classes must be at least 1"),
    ({"name": "folder", "root": "DATA/folder", "class_map": 3}, "dataset.class_map must be a string or null"),
    ({"name": "folder", "root": "DATA/folder", "class_map": "none.txt"}, "dataset.class_map not found: none.txt"),
])
def test_dataset_mistakes_are_one_line(data, cfg, fragment):
    root, _ = data
    if cfg["name"].startswith("wds/"):
        pytest.importorskip("webdataset")
    cfg = {k: v.replace("DATA", str(root)) if isinstance(v, str) else v for k, v in cfg.items()}
    with pytest.raises(UserError) as error:
        build_dataset(cfg, "val")
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_missing_package_is_named(monkeypatch, teacher, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "webdataset" else real(name, *a))
    ran = dyn_here(rule_args(["capture", "--name", "c", "--arch", "cait_digits", "--checkpoint", teacher, "--sample", "first",
                    "--dataset", '{"name": "wds/imagenet", "root": "."}', "--out", tmp_path / "c.nc"]))
    assert ran.returncode == 2 and ran.stderr == ("dyn: error: dataset.name 'wds/imagenet' needs the Python "
                                                  "package(s) webdataset: pip install webdataset\n")


class _Noisy(Dataset):
    """Samples drawn from torch's, Python's and numpy's generators: what a random augmentation draws."""

    def __len__(self):
        return 24

    def __getitem__(self, index):
        return torch.tensor([float(index), torch.rand(()).item(), random.random(), np.random.rand()]), 0


class _Numbered(_Noisy):
    def __getitem__(self, index):
        return (*super().__getitem__(index), index)


def test_workers_kept_between_epochs_give_the_batches_of_new_ones():
    kept = Batches(_Noisy(), 8, shuffle=True, seed=3, num_workers=2)
    epochs = {e: torch.cat([b[0] for b in kept.epoch(e)]) for e in (0, 1, 2)}
    for e, images in epochs.items():  # as before: a new loader for each epoch, its generator seeded by it
        before = DataLoader(_Numbered(), batch_size=8, sampler=kept.indices(e).tolist(), num_workers=2,
                            generator=torch.Generator().manual_seed(data_seed(3, e, 0)))
        assert torch.equal(images, torch.cat([b[0] for b in before]))
    assert torch.equal(epochs[1], torch.cat([b[0] for b in kept.epoch(1)]))  # a second pass over an epoch
    resumed = Batches(_Noisy(), 8, shuffle=True, seed=3, num_workers=2)
    assert torch.equal(epochs[2], torch.cat([b[0] for b in resumed.epoch(2)]))
    assert not torch.equal(epochs[0][:, 1:], epochs[1][:, 1:])
    assert kept._loader.persistent_workers and kept._loader._iterator is not None


@pytest.mark.parametrize("change, where", [
    ({}, "analysis.sample"),
    ({"analysis": {"models": ["m"], "sample": "first"}}, "models.m.weights"),
    ({"analysis": {"models": ["m"], "sample": "first"},
      "models": {"m": {"arch": "cait_digits", "weights": "w.safetensors", "evaluate": True}}}, "models.m.evaluate"),
])
def test_a_stream_asked_for_more_than_the_analysis_of_given_weights_is_one_line_before_any_job(change, where):
    from dyn.workflow.config import _check_stream

    config = {"dataset": {"name": "wds/digits"}, "models": {"m": {"arch": "cait_digits", "weights": "train"}},
              "analysis": {"models": ["m"], "sample": "stratified"}, **change}
    with pytest.raises(UserError, match=rf"^config error at {re.escape(where)}: dataset.name 'wds/digits' is a stream"):
        _check_stream(config)
    config["dataset"]["name"] = "hfds/digits"  # indexable: everything
    _check_stream(config)
