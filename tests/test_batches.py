"""The order of training batches: fixed by (seed, epoch), the same global batches whatever the number of
processes, and DeiT's repeated augmentation through timm's RepeatAugSampler."""
import pytest
import torch
from torch.utils.data import TensorDataset

from dyn.training.batches import Batches
from dyn.training.distributed import World


def _dataset(n):
    return TensorDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.zeros(n, dtype=torch.long))


def global_steps(n, global_batch, processes, repeats=1, epoch=0, seed=5):
    """Each step's samples over all processes, as sets: what one optimiser step sees."""
    shards = [Batches(_dataset(n), global_batch // processes, shuffle=True, seed=seed, drop_last=True,
                      world=World(rank, processes), repeats=repeats) for rank in range(processes)]
    per_rank = [[batch[2].tolist() for batch in shard.epoch(epoch)] for shard in shards]
    assert len({len(steps) for steps in per_rank}) == 1 and len(per_rank[0]) == len(shards[0])
    return [sorted(sum((steps[i] for steps in per_rank), [])) for i in range(len(per_rank[0]))]


@pytest.mark.parametrize("repeats", [1, 3])
def test_one_two_and_four_processes_take_the_same_steps_with_the_same_global_batch(repeats):
    one = global_steps(1000, 32, 1, repeats)
    assert one == global_steps(1000, 32, 2, repeats) == global_steps(1000, 32, 4, repeats)
    assert len(one) == (768 if repeats == 3 else 1000) // 32  # RA: 1000 rounded down to 256s per epoch


def test_repeated_augmentation_keeps_each_images_copies_together():
    steps = global_steps(1000, 48, 2, repeats=3)
    seen = sum(steps, [])
    assert len(seen) == 768 and len(set(seen)) == 256  # 3 copies of each image the epoch reaches
    for image in set(seen):
        where = [i for i, step in enumerate(steps) for sample in step if sample == image]
        assert len(where) == 3 and where[-1] - where[0] <= 1  # one global batch, or two neighbouring ones


def test_order_depends_on_seed_and_epoch_and_nothing_else():
    def first(seed, epoch, repeats):
        return Batches(_dataset(600), 32, True, seed=seed, repeats=repeats).indices(epoch).tolist()

    for repeats in (1, 3):
        assert first(0, 1, repeats) == first(0, 1, repeats)
        assert first(0, 1, repeats) != first(0, 2, repeats) and first(0, 1, repeats) != first(1, 1, repeats)
