"""Batch samplers: ``PKSampler`` draws P people × K photos per batch.

Use as ``DataLoader(dataset, batch_sampler=PKSampler(labels, p=8, k=4, seed=0))``. Every batch holds
P distinct people and K photos of each, which triplet mining and center loss need, and which keeps a
small, unbalanced folder balanced.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["PKSampler"]


def _least_used(counts: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``n`` smallest counts, ties broken at random; increments their counts."""
    chosen = np.argsort(counts + rng.random(len(counts)), kind="stable")[:n]
    counts[chosen] += 1
    return chosen


class PKSampler(Sampler[list[int]]):
    """Balanced P × K batch sampler, deterministic per ``(seed, epoch)``, optionally split across DDP ranks.

    labels: one label per dataset item (ints, strings, a numpy array or a tensor); the items of one label
    are one person. p: people per batch (≤ number of people). k: photos per person. Each batch is a list
    of ``p·k`` dataset indices, grouped person by person.

    Balance: people are picked least-used-first within an epoch (ties at random), so at any point of an
    epoch the people's counts differ by at most one; photos of a person are cycled the same way, so every
    photo is used before any repeats. A person with fewer than K photos gets all of them plus repeats,
    drawn as evenly as possible (sampling with replacement).

    Epoch length: ``batches_per_epoch`` batches in total, by default ``ceil(len(labels) / (p·k))``, about
    one pass over the photos. With DDP every rank draws the same stream and takes every
    ``world_size``-th batch from ``rank``, so ``len(sampler) = ceil(batches_per_epoch / world_size)`` on
    every rank and the ranks' batches differ. ``rank``/``world_size`` default to ``torch.distributed``'s
    when it is initialised, else 0 and 1.

    Determinism: the batches depend only on ``(labels, p, k, seed, epoch, batches_per_epoch, world_size,
    rank)``. ``set_epoch(e)`` fixes the next pass to epoch ``e``; without it, each completed pass moves to
    the next epoch (a new shuffle), and a pass abandoned midway does not.
    """

    def __init__(
        self,
        labels: Sequence | np.ndarray | torch.Tensor,
        p: int,
        k: int,
        seed: int = 0,
        *,
        batches_per_epoch: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"labels must be a non-empty 1-d sequence, got shape {labels.shape}")
        _, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))[:-1]
        self._people: list[np.ndarray] = np.split(order, bounds)
        num_people = len(self._people)
        if int(p) != p or not 1 <= p <= num_people:
            raise ValueError(f"p must be an integer in [1, {num_people}] (the number of people), got {p!r}")
        if int(k) != k or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if batches_per_epoch is None:
            batches_per_epoch = math.ceil(len(labels) / (p * k))
        if int(batches_per_epoch) != batches_per_epoch or batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be an integer >= 1, got {batches_per_epoch!r}")
        if world_size is None or rank is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            if world_size is None:
                world_size = torch.distributed.get_world_size() if distributed else 1
            if rank is None:
                rank = torch.distributed.get_rank() if distributed else 0
        if int(world_size) != world_size or world_size < 1:
            raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
        if int(rank) != rank or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an integer in [0, {world_size - 1}], got {rank!r}")
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        self.batches_per_epoch = int(batches_per_epoch)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    @property
    def num_people(self) -> int:
        return len(self._people)

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch (the shuffle) of the next pass; call with the same value on every DDP rank."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per pass on this rank."""
        return math.ceil(self.batches_per_epoch / self.world_size)

    def _epoch_batches(self, epoch: int) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        person_counts = np.zeros(self.num_people)
        photo_counts = [np.zeros(len(items)) for items in self._people]
        for _ in range(len(self) * self.world_size):
            batch: list[int] = []
            for person in _least_used(person_counts, self.p, rng):
                items, counts = self._people[person], photo_counts[person]
                needed = self.k
                while needed:
                    take = min(needed, len(items))
                    batch.extend(items[_least_used(counts, take, rng)].tolist())
                    needed -= take
            yield batch

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        for index, batch in enumerate(self._epoch_batches(epoch)):
            if index % self.world_size == self.rank:
                yield batch
        if self.epoch == epoch:
            self.epoch = epoch + 1
