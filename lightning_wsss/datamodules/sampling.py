"""A shuffling sampler whose order and augmentation seeds depend only on (seed, epoch)."""

from __future__ import annotations

from typing import Iterator, Tuple

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler):
    """Shuffle ``num_samples`` indices with a permutation drawn from ``seed`` and the epoch, and hand each
    index its own augmentation seed: yields ``(index, augmentation_seed)`` pairs.

    Lightning calls :meth:`set_epoch` before every epoch (and wraps this sampler for DDP), so the data order and
    the augmentation of epoch ``e`` are the same in an uninterrupted run and in one resumed from a checkpoint,
    whatever else consumed the global RNG in between.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.num_samples,), generator=generator).tolist()
        return iter(zip(order, seeds))
