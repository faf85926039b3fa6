"""Pure epoch planning: which samples each rank and loader worker serves, with equal steps.

The shard order is permuted per epoch by a generator seeded with ``(seed, epoch)``, identically
on every rank. The samples of the shards in that order form one stream of ``N`` samples, cut
into ``world_size`` contiguous ranges of ``N // world_size`` samples (the last ``N % world_size``
are not served this epoch). A rank serves ``steps = n_rank // batch_size`` batches, the same on
every rank so no collective can wait on a rank that ran out. Rank batch ``b`` is served by loader
worker ``b % num_workers`` (the order in which torch's DataLoader takes batches from the workers
of an IterableDataset), so worker ``w`` serves ``len(range(w, steps, num_workers))`` batches
from its own contiguous slice of the rank's range. (The run's persistent loader, whose worker
processes go on from epoch to epoch, maps its loader workers onto these plan workers anew in
each epoch: ``pretrain.data.reader.EndlessStream``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    """Samples ``start:stop`` (offsets inside the shard) of shard ``shard_index`` (input order)."""

    shard_index: int
    start: int
    stop: int
    url: str | None = None

    @property
    def size(self) -> int:
        """Number of samples in the segment."""
        return self.stop - self.start


@dataclass(frozen=True)
class WorkerPlan:
    """What one loader worker serves: ``batches`` batches read from ``segments`` in order.

    ``first_batch`` is the rank batch index of its first batch; its ``j``-th batch has rank
    batch index ``first_batch + j * stride`` (``stride`` = number of loader workers).
    """

    worker: int
    batches: int
    first_batch: int
    stride: int
    segments: tuple[Segment, ...]

    @property
    def samples(self) -> int:
        """Number of samples the worker's segments hold (``batches * batch_size``)."""
        return sum(s.size for s in self.segments)

    def batches_before(self, rank_batch: int) -> int:
        """How many of this worker's batches have a rank batch index below ``rank_batch``."""
        return min(self.batches, len(range(self.first_batch, rank_batch, self.stride)))


@dataclass(frozen=True)
class RankPlan:
    """One rank's share of one epoch.

    Attributes:
        steps_per_epoch: batches every rank serves this epoch (identical on all ranks).
        workers: one plan per loader worker (one when the loader runs in-process).
        shard_order: shard indices in this epoch's stream order.
        rank_start, rank_stop: this rank's range in the epoch stream.
        dropped: samples of this rank's range that no batch serves (``< batch_size``).
        total_dropped: samples of the whole epoch that no rank serves,
            ``N - world_size * steps_per_epoch * batch_size``.
    """

    world_size: int
    rank: int
    batch_size: int
    seed: int
    epoch: int
    steps_per_epoch: int
    workers: tuple[WorkerPlan, ...]
    shard_order: tuple[int, ...]
    rank_start: int
    rank_stop: int
    dropped: int
    total_dropped: int

    @property
    def num_workers(self) -> int:
        """Number of loader workers planned for."""
        return len(self.workers)

    def worker_batches(self) -> list[int]:
        """Batch count of every loader worker."""
        return [w.batches for w in self.workers]


def steps_per_epoch(shard_counts: Sequence[int], world_size: int, batch_size: int) -> int:
    """Batches each rank serves per epoch (what the LR schedule needs; no shard order required)."""
    _check_positive(world_size=world_size, batch_size=batch_size)
    return (sum(shard_counts) // world_size) // batch_size


def shard_permutation(num_shards: int, seed: int, epoch: int) -> list[int]:
    """This epoch's shard order: a permutation seeded by ``(seed, epoch)``, the same everywhere."""
    if seed < 0 or epoch < 0:
        raise ValueError("seed and epoch must be >= 0")
    rng = np.random.default_rng([seed, epoch])
    return [int(i) for i in rng.permutation(num_shards)]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _segments(order: Sequence[int], counts: Sequence[int], start: int, stop: int,
              urls: Sequence[str] | None) -> tuple[Segment, ...]:
    """The pieces of stream range ``start:stop`` as per-shard segments, in stream order."""
    out: list[Segment] = []
    offset = 0
    for shard in order:
        size = counts[shard]
        lo, hi = max(start, offset), min(stop, offset + size)
        if lo < hi:
            out.append(Segment(shard, lo - offset, hi - offset, urls[shard] if urls is not None else None))
        offset += size
        if offset >= stop:
            break
    return tuple(out)


def plan_epoch(shard_counts: Sequence[int], *, world_size: int, rank: int, num_workers: int,
               batch_size: int, seed: int, epoch: int, urls: Sequence[str] | None = None) -> RankPlan:
    """Plan one epoch for one rank (pure and deterministic in its arguments).

    ``num_workers=0`` means the loader runs in-process: one worker serves every batch.
    ``urls`` (optional, same order as ``shard_counts``) is copied into the segments.
    """
    _check_positive(world_size=world_size, batch_size=batch_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if any(c < 0 for c in shard_counts):
        raise ValueError("shard counts must be >= 0")
    if urls is not None and len(urls) != len(shard_counts):
        raise ValueError("urls and shard_counts differ in length")
    workers_n = max(1, num_workers)
    order = shard_permutation(len(shard_counts), seed, epoch)
    total = sum(shard_counts)
    n_rank = total // world_size
    steps = n_rank // batch_size
    rank_start = rank * n_rank
    workers = []
    cursor = rank_start
    for w in range(workers_n):
        batches = len(range(w, steps, workers_n))
        stop = cursor + batches * batch_size
        workers.append(WorkerPlan(worker=w, batches=batches, first_batch=w, stride=workers_n,
                                  segments=_segments(order, shard_counts, cursor, stop, urls)))
        cursor = stop
    return RankPlan(
        world_size=world_size, rank=rank, batch_size=batch_size, seed=seed, epoch=epoch,
        steps_per_epoch=steps, workers=tuple(workers), shard_order=tuple(order),
        rank_start=rank_start, rank_stop=rank_start + n_rank,
        dropped=n_rank - steps * batch_size,
        total_dropped=total - world_size * steps * batch_size,
    )
