"""Datasets by name and the transforms that feed them to a model.

- `digits`: scikit-learn's bundled handwritten digits (1,797 8x8 grey images, 10 classes),
  split into train/val by a seeded permutation; needs no download, the embedded default.
- `imagefolder`: the ImageNet layout, `<root>/train/<class>/*.JPEG` and `<root>/val/<class>/*.JPEG`.
- `cifar10` / `cifar100`: torchvision's folders under `<root>` (never downloaded here).
- timm's dataset names, through `timm.data.create_dataset`: `folder` (a folder or `.tar` per split under
  `<root>`), `hfds/<name>` (a Hugging Face dataset), `wds/<name>` (WebDataset tar shards), `tfds/<name>`.
  `folder` and `hfds/` are indexable and serve every stage; `wds/` and `tfds/` are streams, read in
  their stored order: they serve the analysis (`sample: first`) only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, Subset

from .errors import UserError
from .files import first_line
from .timm_datasets import FirstOf, is_stream, timm_dataset, timm_prefix  # noqa: F401  (is_stream: for callers)

DATASETS = ("digits", "imagefolder", "cifar10", "cifar100")
SPLITS = ("train", "val")
VALID_NAMES = ", ".join(DATASETS + ("folder", "hfds/<name>", "wds/<name>", "tfds/<name>"))
IMAGE_MODES = ("RGB", "L")


class DigitsDataset(Dataset):
    """scikit-learn's digits as 8x8 greyscale PIL images, with a fixed seeded train/val split."""

    num_classes = 10

    def __init__(self, split: str = "train", val_fraction: float = 0.2, split_seed: int = 0,
                 transform: Callable | None = None):
        from sklearn.datasets import load_digits

        if split not in SPLITS:
            raise UserError(f"unknown split '{split}': valid splits are {', '.join(SPLITS)}")
        if not 0.0 < val_fraction < 1.0:
            raise UserError(f"dataset.val_fraction must lie strictly between 0 and 1, got {val_fraction}")
        bunch = load_digits()
        order = np.random.default_rng(split_seed).permutation(len(bunch.target))
        n_val = int(round(val_fraction * len(order)))
        chosen = np.sort(order[:n_val] if split == "val" else order[n_val:])
        # 0..16 counts of ink -> 0..255 grey levels, exactly representable in uint8.
        self.images = (bunch.images[chosen] * (255.0 / 16.0)).round().astype(np.uint8)
        self.targets = bunch.target[chosen].astype(np.int64)
        self.source_index = chosen
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


# dataset keys and the types their values take (the workflow schema checks them too; the CLI gets JSON)
# (train_split .. image_mode apply to timm's names; their defaults live here, not in the schema, so that
# a config without them stays the config it was)
DATASET_KEYS = {"name": (str,), "root": (str, type(None)), "val_fraction": (int, float), "split_seed": (int,),
                "train_split": (str,), "val_split": (str,), "class_map": (str, type(None)),
                "num_classes": (int, type(None)), "image_mode": (str,)}


def check_dataset_cfg(cfg: dict) -> None:
    """One line for an unknown dataset key or a value of the wrong type."""
    for key, value in cfg.items():
        if key not in DATASET_KEYS:
            raise UserError(f"unknown dataset key '{key}': valid keys are {', '.join(DATASET_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, DATASET_KEYS[key]):
            kinds = "a number" if DATASET_KEYS[key] == (int, float) else " or ".join(
                "null" if t is type(None) else "an integer" if t is int else "a string" for t in DATASET_KEYS[key])
            raise UserError(f"dataset.{key} must be {kinds}, got {value!r}")
    if "image_mode" in cfg and cfg["image_mode"] not in IMAGE_MODES:
        raise UserError(f"dataset.image_mode must be one of {', '.join(IMAGE_MODES)} (3 or 1 channels), "
                        f"got {cfg['image_mode']!r}")
    if cfg.get("num_classes") is not None and cfg["num_classes"] < 1:
        raise UserError(f"dataset.num_classes must be at least 1, got {cfg['num_classes']}")


# The dataset section's defaults where a config is given in code; the workflow's come from the schema
# (tests/test_methods.py holds the two equal).
DATASET_DEFAULTS = {"name": "digits", "val_fraction": 0.2, "split_seed": 0}


def dataset_name(cfg: dict) -> str:
    return cfg.get("name", DATASET_DEFAULTS["name"])


def build_dataset(cfg: dict, split: str, transform: Callable | None = None) -> Dataset:
    """The dataset named by `cfg['name']` (see DATASETS) for `split`, with `transform` applied."""
    check_dataset_cfg(cfg)
    cfg = {**DATASET_DEFAULTS, **cfg}
    name = cfg["name"]
    if timm_prefix(name):
        return timm_dataset(cfg, split, transform)
    if name not in DATASETS:
        raise UserError(f"unknown dataset.name '{name}': valid datasets are {VALID_NAMES}")
    if name == "digits":
        return DigitsDataset(split, cfg["val_fraction"], cfg["split_seed"], transform)
    root = cfg.get("root")
    if not root:
        raise UserError(f"dataset '{name}' needs dataset.root: the folder that holds its files")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset.root does not exist: {root} (dataset '{name}')")
    if name == "imagefolder":
        from torchvision.datasets import ImageFolder

        folder = root / split
        if not folder.is_dir():
            raise UserError(f"imagefolder split folder not found: {folder} (expected {root}/train and {root}/val)")
        try:
            return ImageFolder(str(folder), transform=transform, loader=load_image)
        except FileNotFoundError as error:  # no class folders, or none holds a file with an image suffix
            raise UserError(f"no image files in {folder}: {first_line(error)}") from None
    else:  # cifar10, cifar100
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if name == "cifar10" else CIFAR100
        try:
            return cls(str(root), train=(split == "train"), transform=transform, download=False)
        except RuntimeError as error:
            raise UserError(f"{name} files not found under {root}: {error}") from None


def load_image(path: str):
    """torchvision's image loader, with one line naming an image that does not decode."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise UserError(f"cannot read image {path}: {first_line(error)}") from None


def num_classes(dataset: Dataset) -> int:
    if isinstance(dataset, (Subset, FirstOf)):
        return num_classes(dataset.dataset)
    if hasattr(dataset, "num_classes"):
        return int(dataset.num_classes)
    reader = getattr(dataset, "reader", None)  # timm's datasets: their reader's class index
    if reader is not None:
        classes = getattr(reader, "class_to_idx", None) or getattr(reader, "class_name_to_idx", None)
        if not classes:
            raise UserError("the dataset's labels name no classes to count (a webdataset's .cls numbers, say): "
                            "set dataset.num_classes, or dataset.class_map")
        return max(classes.values()) + 1
    return len(dataset.classes)


SAMPLES = ("stratified", "first")


def labels_of(dataset: Dataset) -> np.ndarray:
    """The class index of every sample, from the dataset's `targets` where it has them."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    targets = getattr(dataset, "targets", None)
    reader = getattr(dataset, "reader", None)  # timm's: a folder's (path, label) list, a tar's labels, HF's column
    if targets is None and reader is not None:
        if hasattr(reader, "targets"):
            targets = reader.targets
        elif hasattr(reader, "samples"):
            targets = [label for _, label in reader.samples]
        elif hasattr(reader, "iter_targets"):
            targets = list(reader.iter_targets())
    if targets is None:  # e.g. a TensorDataset: read every sample
        targets = [int(dataset[i][1]) for i in range(len(dataset))]
    return np.asarray(targets, dtype=np.int64)


def analysis_images(dataset: Dataset, n: int, how: str = "stratified", seed: int = 0) -> Subset:
    """The fixed images of the analysis and of the students' entropy snapshots, in dataset order.

    `first`: the first n samples. `stratified`: round-robin over the classes, one image of each class
    in turn until there are n, with the order of the classes and of each class's images drawn from
    `seed`; n images of n or more classes are n different classes.
    """
    if n < 1:
        raise UserError(f"the number of fixed images must be at least 1, got {n}")
    if isinstance(dataset, IterableDataset):
        if how not in SAMPLES:
            raise UserError(f"unknown analysis.sample '{how}': valid are {', '.join(SAMPLES)}")
        if how != "first":
            raise UserError(f"analysis.sample '{how}' needs the labels of the whole split, which a stream dataset "
                            f"(wds/, tfds/) gives only by reading all of it: use analysis.sample: first")
        if 0 < len(dataset) < n:  # a stream's length is known only where its split gives it (else 0)
            raise UserError(f"analysis.num_images is {n} but the split has {len(dataset)} images: use at most "
                            f"{len(dataset)}")
        return FirstOf(dataset, n)
    if n > len(dataset):
        raise UserError(f"analysis.num_images is {n} but the validation split has {len(dataset)} images: use at most "
                        f"{len(dataset)}")
    if how == "first":
        return Subset(dataset, list(range(n)))
    if how != "stratified":
        raise UserError(f"unknown analysis.sample '{how}': valid are {', '.join(SAMPLES)}")
    labels = labels_of(dataset)
    rng = np.random.default_rng(seed)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in rng.permutation(np.unique(labels))]
    chosen: list[int] = []
    for round_ in range(max(len(m) for m in members)):
        chosen += [int(m[round_]) for m in members if round_ < len(m)][:n - len(chosen)]
        if len(chosen) == n:
            break
    return Subset(dataset, sorted(chosen))


def describe_sample(how: str, n: int, seed: int, split: str = "val") -> str:
    """How the analysis images were chosen, for the capture file's attributes."""
    if how == "first":
        return f"first: the first {n} images of the {split} split"
    return f"stratified: {n} images of the {split} split, round-robin over its classes, seed {seed}"


def build_transform(model: torch.nn.Module, train: bool, recipe: dict | None = None,
                    dataset: str | None = None) -> Callable:
    """timm's transform for this model's input config; random augmentation only if the recipe asks.

    The digits get their own augmentation: timm's ImageNet one (random resized crops down to 8% of
    the image, flips, RandAugment's posterize and colour operations) does not suit 8x8 grey digits.
    """
    from timm.data import create_transform, resolve_data_config

    recipe = recipe or {}
    data_cfg = resolve_data_config(model=model)
    if recipe.get("crop_pct") is not None:
        data_cfg["crop_pct"] = recipe["crop_pct"]
    if recipe.get("interpolation"):
        data_cfg["interpolation"] = recipe["interpolation"]
    if not (train and recipe.get("augment", False)):
        return create_transform(**data_cfg, is_training=False)
    if dataset == "digits":
        return digits_augmentation(create_transform(**data_cfg, is_training=False))
    return create_transform(
        **data_cfg,
        is_training=True,
        auto_augment=recipe.get("auto_augment"),
        color_jitter=recipe.get("color_jitter", 0.4),
        re_prob=recipe.get("random_erasing", 0.0),
        re_mode="pixel",
        re_count=1,
    )


TRANSFORMS = ("model", "imagenet")
# The authors' analysis transform (Analysis_Code/spectrum_and_entrop_analysis.py): Resize(256) of the short
# side, bilinear, CenterCrop(224), ImageNet mean and std, for every model.
IMAGENET_ANALYSIS = dict(input_size=(3, 224, 224), crop_pct=224 / 256, crop_mode="center", interpolation="bilinear")


def analysis_transform(model: torch.nn.Module, how: str = "model", recipe: dict | None = None) -> Callable:
    """The transform of the fixed analysis images: `model`, the model's own timm evaluation transform
    (with the recipe's crop and interpolation where given); `imagenet`, the authors' protocol, the
    same for every model, built by timm's transform factory."""
    if how == "model":
        return build_transform(model, False, recipe)
    if how != "imagenet":
        raise UserError(f"unknown analysis.transform '{how}': valid are {', '.join(TRANSFORMS)}")
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, resolve_data_config

    takes = tuple(resolve_data_config(model=model)["input_size"])
    if takes[0] != 3:
        raise UserError(f"analysis.transform 'imagenet' makes 3x224x224 RGB images (the authors' protocol) but the "
                        f"model takes {'x'.join(map(str, takes))}: use analysis.transform: model")
    return create_transform(**IMAGENET_ANALYSIS, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                            is_training=False)


def digits_augmentation(then: Callable) -> Callable:
    """Small random affine moves that keep an 8x8 digit a digit (up to 10 degrees of rotation, one
    pixel of shift, 10% of scale; no flips: a flipped 2 is no digit), then the model's own `then`."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomAffine(degrees=10, translate=(0.125, 0.125), scale=(0.9, 1.1),
                                interpolation=transforms.InterpolationMode.BILINEAR),
        then,
    ])


def stack(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a (small) dataset as one image tensor and one label tensor."""
    samples = iter(dataset) if isinstance(dataset, IterableDataset) else (dataset[i] for i in range(len(dataset)))
    images, labels = zip(*samples)
    return torch.stack(images), torch.as_tensor(labels)
