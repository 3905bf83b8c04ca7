"""Batches of a split in an order fixed by (seed, epoch), sharded across data-parallel processes."""
from __future__ import annotations

import math
import random
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ..errors import UserError
from .distributed import World
from .rng import RngStream, data_seed


def _seed_worker(seed: int) -> None:
    """Seed this loader worker as torch seeds a new worker of a loader whose generator is seeded with
    `seed` (base seed: that generator's first int64; then base + worker id, numpy from both)."""
    # private, but what torch seeds a worker's numpy with
    from torch.utils.data._utils.worker import _generate_state

    info = torch.utils.data.get_worker_info()
    base = torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(seed)).item()
    random.seed(base + info.id)
    torch.manual_seed(base + info.id)
    np.random.seed(_generate_state(base, info.id))


class _Indexed(Dataset):
    """The samples with their index, asked for as (pass, epoch, index). A worker kept between passes
    reseeds its generators at a pass's first sample, as a new worker of that epoch would be seeded."""

    def __init__(self, dataset: Dataset, seed: int = 0, rank: int = 0):
        self.dataset, self.seed, self.rank, self.pass_ = dataset, seed, rank, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int, int]):
        pass_, epoch, index = item
        # (the main process, num_workers 0, swaps in the epoch's RngStream instead)
        if pass_ != self.pass_ and torch.utils.data.get_worker_info() is not None:
            _seed_worker(data_seed(self.seed, epoch, self.rank))
        self.pass_ = pass_
        image, label = self.dataset[index]
        return image, label, index


class _EpochOrder(Sampler):
    """One pass's (pass, epoch, index) triples: the sampler of a loader whose workers outlive the pass."""

    def __init__(self):
        self.order: list[tuple[int, int, int]] = []
        self.passes = 0

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


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
    models trained on the batches, and their random draws, do not change them. The loader's workers
    live as long as the Batches (persistent): each reseeds itself at a pass's first sample, so epoch
    e's batches are those a fresh loader of epoch e gives (a resumed run's), whatever came before.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                 in_memory: bool = False, num_workers: int = 0, drop_last: bool = False, world: World = World(),
                 repeats: int = 1):
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.num_workers, self.drop_last, self.world, self.repeats = num_workers, drop_last, world, repeats
        if isinstance(dataset, IterableDataset):
            raise UserError("training and evaluation read samples by index, in an order fixed by (seed, epoch), "
                            "which a stream dataset (wds/, tfds/) has not: use folder or hfds/ for them")
        self.tensors, self._loader, self._order = None, None, _EpochOrder()
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
        stream = RngStream(data_seed(self.seed, epoch, self.world.rank))
        self._order.passes += 1  # (a second pass over epoch 0, as evaluation makes, reseeds too)
        self._order.order = [(self._order.passes, epoch, i) for i in order.tolist()]
        batches = iter(self._loader_once())
        while True:
            with stream.active():
                batch = next(batches, None)
            if batch is None:
                return
            yield batch

    def _loader_once(self) -> DataLoader:
        """The one loader of all epochs; its generator is its own, not the process's."""
        if self._loader is None:
            self._loader = DataLoader(_Indexed(self.dataset, self.seed, self.world.rank), batch_size=self.batch_size,
                                      sampler=self._order, num_workers=self.num_workers, drop_last=self.drop_last,
                                      persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
                                      generator=torch.Generator().manual_seed(self.seed))
        return self._loader


def split_batches(dataset_cfg: dict, model: nn.Module, recipe, seed: int,
                  world: World = World()) -> tuple[Batches, Batches]:
    """Training and validation batches of the configured dataset, with `model`'s timm transforms."""
    from ..data import build_dataset, build_transform, dataset_name, is_stream

    name = dataset_name(dataset_cfg)
    if is_stream(dataset_cfg):  # before the datasets are built: the stream would be refused after
        raise UserError(f"dataset.name '{name}' is a stream (timm's IterableImageDataset, no sample by index): "
                        "training and evaluation take their batches in an order fixed by (seed, epoch), so they "
                        "need folder (a folder or .tar per split) or hfds/; streams serve dyn capture "
                        "(analysis.sample: first) and a fetch without evaluation (evaluate: false)")
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
