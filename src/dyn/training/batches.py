"""Batches of a split in an order fixed by (seed, epoch), sharded across data-parallel processes."""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .distributed import World


class _Indexed(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, label, index


class Batches:
    """(images, labels, sample indices) batches of a split, in an order fixed by (seed, epoch).

    Deterministic datasets (no random augmentation) are decoded once and kept as tensors;
    others go through a DataLoader with workers. Either way epoch e of seed s always visits
    the samples in the same order, so a resumed run sees the same batches as an unbroken one.
    Under data parallelism each process takes every world.size-th sample of that order (the
    training order padded to a multiple of the world size, as DistributedSampler does).
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                 in_memory: bool = False, num_workers: int = 0, drop_last: bool = False, world: World = World()):
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.num_workers, self.drop_last, self.world = num_workers, drop_last, world
        self.tensors = None
        if in_memory:
            from ..data import stack

            self.tensors = stack(dataset)

    def indices(self, epoch: int) -> torch.Tensor:
        """This process's sample indices for `epoch`, in order."""
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            if self.world.size > 1:
                padded = math.ceil(n / self.world.size) * self.world.size
                order = torch.cat([order, order[:padded - n]])
        else:
            order = torch.arange(n)
        return order[self.world.rank::self.world.size]

    def __len__(self) -> int:
        n = len(self.dataset)
        size, rank = self.world.size, self.world.rank
        # As many samples as `indices` gives this process, without drawing a permutation.
        n = math.ceil(n / size) if self.shuffle else len(range(rank, n, size))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self.indices(epoch)
        if self.tensors is not None:
            images, labels = self.tensors
            for b in range(len(self)):
                index = order[b * self.batch_size:(b + 1) * self.batch_size]
                yield images[index], labels[index], index
            return
        loader = DataLoader(_Indexed(self.dataset), batch_size=self.batch_size, sampler=order.tolist(),
                            num_workers=self.num_workers, drop_last=self.drop_last,
                            persistent_workers=False, pin_memory=torch.cuda.is_available())
        yield from loader


def split_batches(dataset_cfg: dict, model: nn.Module, recipe, seed: int,
                  world: World = World()) -> tuple[Batches, Batches]:
    """Training and validation batches of the configured dataset, with `model`'s timm transforms."""
    from ..data import build_dataset, build_transform

    train_set = build_dataset(dataset_cfg, "train", build_transform(model, train=True, recipe=recipe.to_dict()))
    val_set = build_dataset(dataset_cfg, "val", build_transform(model, train=False, recipe=recipe.to_dict()))
    small = dataset_cfg.get("name", "digits") == "digits"
    train = Batches(train_set, recipe.batch_size, shuffle=True, seed=seed, in_memory=small and not recipe.augment,
                    num_workers=recipe.num_workers, drop_last=not small, world=world)
    val = Batches(val_set, recipe.eval_batch_size, shuffle=False, in_memory=small, num_workers=recipe.num_workers,
                  world=world)
    return train, val
