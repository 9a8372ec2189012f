"""MatchGAN's training batches (Sun et al. 2020): labelled batches grouped by class,
alternating with unlabelled batches.

Even iterations serve a *labelled* batch of ``classes_per_batch`` distinct classes times
``batch_size // classes_per_batch`` images of each, contiguous per class (items 0-3 class a,
4-7 class b, ... for the paper's 4 x 4): the matching (triplet) loss needs several images of
one class next to images of others. Odd iterations serve ``batch_size`` unlabelled images.
With no unlabelled training data every batch is a labelled one. The order follows the
official code: classes are taken by cycling through a shuffled list of all labelled classes,
a class's images by cycling through its labelled images in shuffled order, unlabelled images
by cycling through all of them in shuffled order.

DDP: Lightning rebuilds a custom batch sampler with its ``DistributedSampler`` in place of
``sampler`` (from the constructor arguments it captured while the ``train_dataloader`` hook
ran). The sampler then takes rank and replica count from it, draws its own stream per rank
and splits the epoch, and follows the epoch Lightning sets on that sampler.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import BatchSampler, DistributedSampler, Sampler

from .io import option


class EpochSampler(Sampler[int]):
    """Indices ``0..length-1`` in order, plus an ``epoch`` that Lightning sets at the start of
    every epoch (it calls ``set_epoch`` on ``dataloader.batch_sampler.sampler``), so a
    :class:`MatchedBatchSampler` draws a new stream per epoch on one device too."""

    def __init__(self, length: int) -> None:
        self.length, self.epoch = length, 0

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.length))

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def check_matched(
    batch_size: int,
    classes_per_batch: int,
    classes: np.ndarray | None = None,
    labelled: np.ndarray | None = None,
) -> None:
    """Raise ``ValueError`` naming the option when class-grouped batches cannot be built
    (the class count is checked only when ``classes`` and ``labelled`` are given)."""
    if classes_per_batch < 1:
        raise ValueError(f"{option('classes_per_batch')} must be >= 1, got {classes_per_batch}")
    if batch_size % classes_per_batch:
        raise ValueError(
            f"{option('batch_size')} ({batch_size}) must be divisible by "
            f"{option('classes_per_batch')} ({classes_per_batch}) for batch_composition='matched'"
        )
    if classes is None or labelled is None:
        return
    found = len(np.unique(classes[labelled]))
    if found < classes_per_batch:
        raise ValueError(
            f"{option('classes_per_batch')}={classes_per_batch} needs at least that many "
            "labelled classes "
            f"(or attribute patterns), but the labelled training set has {found}"
        )


class _Cycle:
    """Endless draws from ``pool``: walk a shuffled copy, reshuffle when it runs out. A
    draw that straddles two shuffles takes no item twice while the pool is large enough."""

    def __init__(self, pool: np.ndarray, rng: np.random.Generator) -> None:
        self.pool, self.rng = pool, rng
        self.queue = pool[:0]

    def take(self, n: int) -> np.ndarray:
        while len(self.queue) < n:
            fresh = self.rng.permutation(self.pool)
            if len(self.pool) >= n:  # else repeats are unavoidable
                fresh = fresh[~np.isin(fresh, self.queue)]
            self.queue = np.concatenate([self.queue, fresh])
        out, self.queue = self.queue[:n], self.queue[n:]
        return out


class MatchedBatchSampler(BatchSampler):
    """Alternating class-grouped labelled batches and unlabelled batches (see module doc).

    Args:
        sampler: A sampler over the training set; its indices are not used. A
            ``DistributedSampler`` gives ``rank`` and ``num_replicas``; a sampler with an
            ``epoch`` attribute (``DistributedSampler``, :class:`EpochSampler`) gives the
            epoch.
        batch_size: Items per batch; divisible by ``classes_per_batch``.
        drop_last: Accepted for the ``BatchSampler`` interface; every batch is full anyway.
        classes: Class (or attribute-pattern stratum) per training item, ``(N,)``.
        labelled: Boolean per training item, ``(N,)``: True where it keeps its label.
        classes_per_batch: Distinct classes in a labelled batch (MatchGAN: 4).
        seed: Seed of the stream; the batches depend only on (seed, epoch, rank).

    An epoch has ``ceil(N / batch_size)`` batches, split over the replicas:
    ``ceil(N / (batch_size * num_replicas))`` per rank.
    """

    def __init__(
        self,
        sampler: Sampler[int] | Sequence[int],
        batch_size: int,
        drop_last: bool = False,
        *,
        classes: np.ndarray,
        labelled: np.ndarray,
        classes_per_batch: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        classes, labelled = np.asarray(classes), np.asarray(labelled, dtype=bool)
        if classes.shape != labelled.shape or classes.ndim != 1:
            raise ValueError(
                f"classes {classes.shape} and labelled {labelled.shape} must be aligned (N,)"
            )
        check_matched(batch_size, classes_per_batch, classes, labelled)
        self.classes, self.labelled = classes, labelled
        self.classes_per_batch, self.seed = classes_per_batch, seed
        self.per_class = batch_size // classes_per_batch
        if isinstance(sampler, DistributedSampler):
            self.rank, self.num_replicas = int(sampler.rank), int(sampler.num_replicas)
        else:
            self.rank, self.num_replicas = 0, 1
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed for ``epoch`` (also passed on to the wrapped sampler)."""
        self.epoch = epoch
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def _current_epoch(self) -> int:
        # Lightning sets the epoch on the wrapped sampler, not on the batch sampler.
        return int(getattr(self.sampler, "epoch", self.epoch))

    def __len__(self) -> int:
        return math.ceil(len(self.labelled) / (self.batch_size * self.num_replicas))

    def __iter__(self) -> Iterator[list[int]]:
        seeds = [self.seed, self._current_epoch(), self.rank]
        labelled_batches = self._labelled_batches(np.random.default_rng([*seeds, 0]))
        unlabelled = np.flatnonzero(~self.labelled)
        draw_unlabelled = _Cycle(unlabelled, np.random.default_rng([*seeds, 1]))
        for i in range(len(self)):
            if i % 2 == 0 or len(unlabelled) == 0:
                yield next(labelled_batches)
            else:
                yield draw_unlabelled.take(self.batch_size).tolist()

    def _labelled_batches(self, rng: np.random.Generator) -> Iterator[list[int]]:
        labelled_classes = np.unique(self.classes[self.labelled])
        draw_classes = _Cycle(labelled_classes, rng)
        draw_images = {
            c: _Cycle(np.flatnonzero(self.labelled & (self.classes == c)), rng)
            for c in labelled_classes.tolist()
        }
        while True:
            chosen = draw_classes.take(self.classes_per_batch).tolist()
            yield [i for c in chosen for i in draw_images[c].take(self.per_class).tolist()]

    def __repr__(self) -> str:
        extra: dict[str, Any] = {
            "batch_size": self.batch_size,
            "classes_per_batch": self.classes_per_batch,
            "rank": self.rank,
            "num_replicas": self.num_replicas,
        }
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in extra.items())})"
