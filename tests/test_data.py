import numpy as np
import pytest
from sklearn.datasets import load_digits

from dyn.data import DigitsDataset, analysis_images, build_dataset, labels_of, num_classes
from dyn.errors import UserError


def test_digits_split_is_fixed_disjoint_and_complete():
    train, val = DigitsDataset("train"), DigitsDataset("val")
    assert len(train) + len(val) == 1797 and len(val) == 359
    assert not set(train.source_index) & set(val.source_index)
    np.testing.assert_array_equal(DigitsDataset("val").source_index, val.source_index)
    assert not np.array_equal(DigitsDataset("val", split_seed=1).source_index, val.source_index)


def test_digits_images_and_labels_are_the_bundled_ones():
    bunch = load_digits()
    val = DigitsDataset("val")
    image, label = val[3]
    source = val.source_index[3]
    assert image.size == (8, 8) and image.mode == "L"
    assert label == bunch.target[source]
    np.testing.assert_array_equal(np.asarray(image), np.round(bunch.images[source] * 255 / 16).astype(np.uint8))
    assert num_classes(val) == 10 and num_classes(analysis_images(val, 5)) == 10


@pytest.mark.parametrize("cfg, split, fragment", [
    ({"name": "imagefolder"}, "train", "dataset.root"),
    ({"name": "imagefolder", "root": "/nonexistent/imagenet"}, "train", "does not exist"),
    ({"name": "cifar10", "root": "/"}, "train", "cifar10 files not found"),
    ({"name": "mnist"}, "train", "valid datasets are"),
    ({"name": "digits"}, "test", "valid splits are"),
])
def test_dataset_mistakes_are_one_line(cfg, split, fragment):
    with pytest.raises(UserError) as error:
        build_dataset(cfg, split)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_imagefolder_layout(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / cls / "a.png")
    ds = build_dataset({"name": "imagefolder", "root": str(tmp_path)}, "val")
    assert len(ds) == 2 and num_classes(ds) == 2


def test_first_sample_is_the_first_images():
    val = DigitsDataset("val")
    assert analysis_images(val, 7, "first").indices == list(range(7))
    assert len(analysis_images(val, len(val), "first")) == len(val)
    for how in ("first", "stratified"):
        with pytest.raises(UserError, match="the validation split has 359 images"):
            analysis_images(val, 10_000, how)


def test_stratified_sample_spreads_evenly_over_the_classes():
    val = DigitsDataset("val")
    labels = labels_of(val)
    for n in (7, 10, 64):
        chosen = analysis_images(val, n, "stratified", seed=3).indices
        counts = np.bincount(labels[chosen], minlength=10)
        assert len(chosen) == len(set(chosen)) == n and chosen == sorted(chosen)
        assert counts.max() - counts.min() <= 1  # round-robin: n < 10 gives n different classes
    assert analysis_images(val, 64, "stratified", seed=3).indices == analysis_images(val, 64, "stratified", 3).indices
    assert analysis_images(val, 64, "stratified", seed=4).indices != analysis_images(val, 64, "stratified", 3).indices


def test_stratified_sample_of_imbalanced_classes_takes_what_each_has(tmp_path):
    from PIL import Image

    for cls, count in (("a", 1), ("b", 5), ("c", 5)):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (4, 4)).save(tmp_path / "val" / cls / f"{i}.png")
    val = build_dataset({"name": "imagefolder", "root": str(tmp_path)}, "val")
    counts = np.bincount(labels_of(val)[analysis_images(val, 7, "stratified").indices], minlength=3)
    assert counts[0] == 1 and sorted(counts[1:]) == [3, 3]


def test_digits_augmentation_moves_the_digit_and_keeps_its_shape():
    # timm's ImageNet augmentation fails on 8x8 grey images (RandAugment's posterize); the digits
    # get small affine moves of their own, drawn from torch's random generator.
    import timm
    import torch

    from dyn.data import build_transform

    model = timm.create_model("deit_digits")
    recipe = {"augment": True, "crop_pct": None, "auto_augment": "rand-m9-mstd0.5-inc1"}
    train = build_dataset({"name": "digits"}, "train", build_transform(model, True, recipe, dataset="digits"))
    plain = build_dataset({"name": "digits"}, "train", build_transform(model, False, recipe))
    torch.manual_seed(0)
    moved = [train[i][0] for i in range(50)]
    assert all(x.shape == (1, 8, 8) and torch.isfinite(x).all() for x in moved)
    assert sum(not torch.equal(x, plain[i][0]) for i, x in enumerate(moved)) > 25
    torch.manual_seed(0)
    assert all(torch.equal(train[i][0], moved[i]) for i in range(50)), "the same draws give the same images"


def test_imagenet_analysis_transform_is_the_authors(tmp_path):
    # Resize(256) of the short side, bilinear, CenterCrop(224), ImageNet mean and std: the authors'
    # val_transform, written out with torchvision.
    import timm
    import torch
    from PIL import Image
    from torchvision import transforms

    from dyn.data import analysis_transform

    authors = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                  transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    ours = analysis_transform(timm.create_model("resnet18"), "imagenet")
    rng = np.random.default_rng(0)
    for size in [(300, 400), (517, 333), (256, 256)]:
        image = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        torch.testing.assert_close(ours(image), authors(image), rtol=0, atol=0)
    with pytest.raises(UserError, match="takes 1x8x8: use analysis.transform: model"):
        analysis_transform(timm.create_model("deit_digits"), "imagenet")
