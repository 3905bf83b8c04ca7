"""timm's datasets by name, through `timm.data.create_dataset`: `folder` (a folder or `.tar` per split),
`hfds/<name>` (Hugging Face), `wds/<name>` (WebDataset shards), `tfds/<name>` (TensorFlow Datasets).

`folder` and `hfds/` are indexable (timm's ImageDataset) and serve every stage. `wds/` and `tfds/` are
streams (timm's IterableImageDataset) read in their stored order: no sample by index, hence no order
fixed by (seed, epoch) and no stratified choice; they serve the analysis's first N images (`FirstOf`).
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset, IterableDataset

from .errors import UserError
from .files import first_line

# timm's dataset names: `folder`, or a prefix and a name; each prefix -> the packages it needs (pip names)
TIMM_PREFIXES = {"folder": (), "hfds": ("datasets",), "wds": ("webdataset",),
                 "tfds": ("tensorflow_datasets", "tensorflow")}
STREAMS = ("wds", "tfds")  # read in order only (timm's IterableImageDataset)
# timm's split names, by our split: Hugging Face's and TFDS's names, found by `folder` as val/ too
TIMM_SPLITS = {"train": "train", "val": "validation"}


def timm_prefix(name: str) -> str | None:
    """`folder`, `hfds`, `wds` or `tfds` for a timm dataset name; None for the others."""
    prefix, slash, rest = name.partition("/")
    if name == "folder" or (slash and rest and prefix in TIMM_PREFIXES and prefix != "folder"):
        return prefix
    return None


def is_stream(cfg: dict) -> bool:
    """Whether the configured dataset is read in order only (no sample by index)."""
    return timm_prefix(cfg.get("name", "")) in STREAMS  # no name: the digits, no stream


def timm_dataset(cfg: dict, split: str, transform: Callable | None = None) -> Dataset:
    """A dataset by timm's name (`folder`, `hfds/..`, `wds/..`, `tfds/..`), built by `timm.data.create_dataset`
    with `dataset.train_split` / `dataset.val_split` as timm's split, `class_map` and `image_mode`."""
    from timm.data import create_dataset

    name, prefix = cfg["name"], timm_prefix(cfg["name"])
    if split not in TIMM_SPLITS:
        raise UserError(f"unknown split '{split}': valid splits are {', '.join(TIMM_SPLITS)}")
    key = f"{split}_split"
    split_name = cfg.get(key, TIMM_SPLITS[split])
    missing = [package for package in TIMM_PREFIXES[prefix] if importlib.util.find_spec(package) is None]
    if missing:
        pip = " ".join(p.replace("_", "-") for p in missing)
        raise UserError(f"dataset.name '{name}' needs the Python package(s) {pip}: pip install {pip}")
    root = _timm_root(cfg, prefix)
    if prefix == "folder":
        root = _split_path(root, split_name, key)
    if prefix == "hfds":  # the project reads no network at run time: datasets come from the cache only
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        dataset = create_dataset(name, root=None if root is None else str(root), split=split_name,
                                 search_split=False, class_map=_class_map(cfg),
                                 input_img_mode=cfg.get("image_mode", "RGB"))
    except (RuntimeError, ValueError, AssertionError, OSError, ImportError, KeyError) as error:
        hint = " (a split of its _info.json, or shards as a brace pattern, e.g. 'val-{0000..0009}.tar|5000')" \
            if prefix == "wds" else ""
        raise UserError(f"dataset.name '{name}', dataset.{key} '{split_name}'{hint}: {first_line(error)}") from None
    if prefix == "wds":
        _check_shards(dataset.reader.split_info.filenames, root, key, split_name)
    dataset.transform = transform
    if cfg.get("num_classes") is not None:
        dataset.num_classes = cfg["num_classes"]
    return dataset


def _timm_root(cfg: dict, prefix: str) -> Path | None:
    """`dataset.root`: needed by `folder` and `wds/` (their files), optional for `hfds/` and `tfds/` (their cache)."""
    root = cfg.get("root")
    if not root and prefix in ("folder", "wds"):
        raise UserError(f"dataset '{cfg['name']}' needs dataset.root: the folder that holds its "
                        f"{'split folders or .tar files' if prefix == 'folder' else 'shards'}")
    if root and not Path(root).is_dir():
        raise UserError(f"dataset.root does not exist: {root} (dataset '{cfg['name']}')")
    return Path(root) if root else None


def _class_map(cfg: dict) -> str | None:
    """`dataset.class_map` as a path: as given, or under `dataset.root`."""
    name = cfg.get("class_map")
    if not name:
        return None
    for path in (Path(name), Path(cfg.get("root") or ".") / name):
        if path.is_file():
            return str(path)
    raise UserError(f"dataset.class_map not found: {name} (nor under dataset.root)")


SPLIT_SYNONYMS = (("train", "training"), ("val", "validation", "valid", "eval", "evaluation"))


def _split_path(root: Path, split_name: str, key: str) -> Path:
    """`folder`'s split: `<root>/<split>/` or `<root>/<split>.tar`, under its name or a synonym (timm's,
    so `validation` finds val/). Never the root itself, where the two splits would be one."""
    names = [split_name] + [n for group in SPLIT_SYNONYMS if split_name in group for n in group if n != split_name]
    for candidate in names:
        for path in (root / candidate, root / f"{candidate}.tar"):
            if path.is_dir() or path.suffix == ".tar" and path.is_file():
                return path
    raise UserError(f"dataset.{key} '{split_name}': no folder or .tar for it under {root} (tried "
                    f"{', '.join(names)}); set dataset.{key} to the name of one")


def _check_shards(files, root: Path, key: str, split_name: str) -> None:
    absent = [f for f in files if not (root / f).is_file()]
    if absent or not files:
        raise UserError(f"dataset.{key} '{split_name}' names {len(files)} shard(s) under {root}, "
                        f"{len(absent)} of them missing" + (f", e.g. {absent[0]}" if absent else ""))


class FirstOf(IterableDataset):
    """The first `n` samples of a stream dataset, in its order (sample indices 0..n-1), read in one process."""

    def __init__(self, dataset: IterableDataset, n: int):
        self.dataset, self.n, self.indices = dataset, n, list(range(n))

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        taken = 0
        stream = iter(self.dataset)
        try:
            for _, sample in zip(range(self.n), stream):  # range first: no sample read past the n-th
                taken += 1
                yield sample
        finally:
            getattr(stream, "close", lambda: None)()  # a generator: its open shards close now
        if taken < self.n:
            raise UserError(f"analysis.num_images is {self.n} but the split has {taken} images: use at most {taken}")
