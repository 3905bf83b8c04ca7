"""Batches of a split in an order fixed by (seed, epoch), sharded across data-parallel processes."""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .distributed import World
from .rng import RngStream, data_seed


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
    training order padded to a multiple of the world size, as DistributedSampler does), so the
    processes' batches of one step together are the batch one process would take with the same
    global batch. With `repeats` > 1 the order comes from timm's RepeatAugSampler (DeiT's repeated
    augmentation): each image `repeats` times in a row, so its copies land in one global batch (or
    two neighbouring ones), and an epoch as long as the dataset (rounded down to a multiple of 256).
    Random augmentations draw from a stream of the data's own, seeded by (seed, epoch, rank): the
    models trained on the batches, and their random draws, do not change them.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                 in_memory: bool = False, num_workers: int = 0, drop_last: bool = False, world: World = World(),
                 repeats: int = 1):
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.num_workers, self.drop_last, self.world, self.repeats = num_workers, drop_last, world, repeats
        self.tensors = None
        if in_memory:
            from ..data import stack

            self.tensors = stack(dataset)

    def _repeat_sampler(self):
        from timm.data.distributed_sampler import RepeatAugSampler

        return RepeatAugSampler(self.dataset, num_replicas=self.world.size, rank=self.world.rank,
                                num_repeats=self.repeats)

    def indices(self, epoch: int) -> torch.Tensor:
        """This process's sample indices for `epoch`, in order."""
        n, size, rank = len(self.dataset), self.world.size, self.world.rank
        if not self.shuffle:
            return torch.arange(n)[rank::size]
        seed = self.seed * 100003 + epoch
        if self.repeats > 1:
            sampler = self._repeat_sampler()
            sampler.set_epoch(seed)  # its permutation is seeded by this number alone
            return torch.tensor(list(sampler), dtype=torch.long)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        padded = math.ceil(n / size) * size
        return torch.cat([order, order[:padded - n]])[rank::size]

    def __len__(self) -> int:
        n, size, rank = len(self.dataset), self.world.size, self.world.rank
        # As many samples as `indices` gives this process, without drawing a permutation.
        if not self.shuffle:
            n = len(range(rank, n, size))
        else:
            n = len(self._repeat_sampler()) if self.repeats > 1 else math.ceil(n / size)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self.indices(epoch)
        if self.tensors is not None:
            images, labels = self.tensors
            for b in range(len(self)):
                index = order[b * self.batch_size:(b + 1) * self.batch_size]
                yield images[index], labels[index], index
            return
        # Random augmentation draws from the data's own stream, a function of (seed, epoch, rank): in the
        # main process (num_workers 0) swapped in around each batch, in workers seeded from it.
        seed = data_seed(self.seed, epoch, self.world.rank)
        stream = RngStream(seed)
        loader = DataLoader(_Indexed(self.dataset), batch_size=self.batch_size, sampler=order.tolist(),
                            num_workers=self.num_workers, drop_last=self.drop_last,
                            persistent_workers=False, pin_memory=torch.cuda.is_available(),
                            generator=torch.Generator().manual_seed(seed))
        batches = iter(loader)
        while True:
            with stream.active():
                batch = next(batches, None)
            if batch is None:
                return
            yield batch


def split_batches(dataset_cfg: dict, model: nn.Module, recipe, seed: int,
                  world: World = World()) -> tuple[Batches, Batches]:
    """Training and validation batches of the configured dataset, with `model`'s timm transforms."""
    from ..data import build_dataset, build_transform

    name = dataset_cfg.get("name", "digits")
    train_set = build_dataset(dataset_cfg, "train", build_transform(model, train=True, recipe=recipe.to_dict(),
                                                                    dataset=name))
    val_set = build_dataset(dataset_cfg, "val", build_transform(model, train=False, recipe=recipe.to_dict()))
    small = name == "digits"
    train = Batches(train_set, recipe.batch_per_process(world.size), shuffle=True, seed=seed,
                    in_memory=small and not recipe.augment, num_workers=recipe.num_workers, drop_last=not small,
                    world=world, repeats=recipe.repeated_aug)
    val = Batches(val_set, recipe.eval_batch_size, shuffle=False, in_memory=small, num_workers=recipe.num_workers,
                  world=world)
    return train, val
