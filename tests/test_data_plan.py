"""Epoch planning: disjoint coverage, equal steps per rank, determinism (pure, no I/O)."""

from __future__ import annotations

import random

import pytest

from pretrain.data.plan import RankPlan, plan_epoch, shard_permutation, steps_per_epoch


def served(plan: RankPlan) -> list[tuple[int, int]]:
    """Every (shard, offset) a plan serves, worker by worker."""
    out = []
    for worker in plan.workers:
        for seg in worker.segments:
            out.extend((seg.shard_index, i) for i in range(seg.start, seg.stop))
    return out


def stream_positions(order: tuple[int, ...], counts: list[int]) -> dict[tuple[int, int], int]:
    """Position of each (shard, offset) in the epoch stream, built by walking the order."""
    positions, pos = {}, 0
    for shard in order:
        for i in range(counts[shard]):
            positions[(shard, i)] = pos
            pos += 1
    return positions


def check_epoch(counts: list[int], world: int, workers: int, batch: int, seed: int, epoch: int) -> None:
    """All invariants of one epoch over every rank."""
    plans = [plan_epoch(counts, world_size=world, rank=r, num_workers=workers, batch_size=batch,
                        seed=seed, epoch=epoch) for r in range(world)]
    total = sum(counts)
    steps = plans[0].steps_per_epoch
    assert all(p.steps_per_epoch == steps for p in plans)
    assert steps == steps_per_epoch(counts, world, batch)
    assert len({p.shard_order for p in plans}) == 1
    positions = stream_positions(plans[0].shard_order, counts)
    everything: list[tuple[int, int]] = []
    n_rank = total // world
    for r, plan in enumerate(plans):
        assert plan.num_workers == max(1, workers)
        for w, wp in enumerate(plan.workers):
            expected_batches = sum(1 for b in range(steps) if b % max(1, workers) == w)
            assert wp.batches == expected_batches
            assert wp.samples == expected_batches * batch
            assert all(0 <= s.start < s.stop <= counts[s.shard_index] for s in wp.segments)
        mine = served(plan)
        assert len(mine) == steps * batch
        # A rank serves a contiguous block at the start of its own N // world range.
        pos = sorted(positions[s] for s in mine)
        assert pos == list(range(r * n_rank, r * n_rank + steps * batch))
        assert plan.dropped == n_rank - steps * batch
        assert 0 <= plan.dropped < batch
        everything.extend(mine)
    assert len(everything) == len(set(everything))
    not_served = total - len(everything)
    assert not_served == total - world * steps * batch == plans[0].total_dropped
    assert not_served == sum(p.dropped for p in plans) + total % world
    assert not_served < world * (batch + 1)


def test_two_ranks_two_workers_uneven_shards() -> None:
    counts = [7, 5, 11]
    check_epoch(counts, world=2, workers=2, batch=2, seed=3, epoch=0)
    plan0 = plan_epoch(counts, world_size=2, rank=0, num_workers=2, batch_size=2, seed=3, epoch=0)
    # 23 samples -> 11 per rank -> 5 batches of 2; worker 0 serves rank batches 0, 2, 4.
    assert plan0.steps_per_epoch == 5
    assert plan0.worker_batches() == [3, 2]
    assert plan0.total_dropped == 3


def test_worker_range_spans_shards_and_urls_are_attached() -> None:
    counts = [3, 3, 3]
    urls = ["a.tar", "b.tar", "c.tar"]
    plan = plan_epoch(counts, world_size=1, rank=0, num_workers=1, batch_size=4, seed=0, epoch=0,
                      urls=urls)
    segs = plan.workers[0].segments
    assert [s.shard_index for s in segs] == list(plan.shard_order)
    assert [s.size for s in segs] == [3, 3, 2]
    assert all(s.url == urls[s.shard_index] for s in segs)


def test_same_seed_and_epoch_same_plan_other_epoch_other_order() -> None:
    counts = [4, 9, 2, 7, 5, 3, 8, 6, 1, 10]
    kwargs = dict(world_size=3, rank=1, num_workers=2, batch_size=3, seed=11)
    assert plan_epoch(counts, epoch=5, **kwargs) == plan_epoch(counts, epoch=5, **kwargs)
    orders = {plan_epoch(counts, epoch=e, **kwargs).shard_order for e in range(6)}
    assert len(orders) > 1
    assert shard_permutation(10, 11, 0) != shard_permutation(10, 12, 0)
    assert sorted(shard_permutation(10, 11, 3)) == list(range(10))


def test_in_process_loader_has_one_worker_serving_every_batch() -> None:
    plan = plan_epoch([10, 10], world_size=1, rank=0, num_workers=0, batch_size=3, seed=0, epoch=0)
    assert plan.num_workers == 1
    assert plan.worker_batches() == [6]


def test_batches_before_matches_definition() -> None:
    plan = plan_epoch([13, 8, 21], world_size=2, rank=1, num_workers=3, batch_size=2, seed=1, epoch=2)
    steps = plan.steps_per_epoch
    for k in range(steps + 2):
        for wp in plan.workers:
            direct = sum(1 for j in range(wp.batches) if wp.first_batch + j * wp.stride < k)
            assert wp.batches_before(k) == direct
        assert sum(wp.batches_before(k) for wp in plan.workers) == min(k, steps)


def test_random_configurations() -> None:
    rng = random.Random(1234)
    for _ in range(300):
        counts = [rng.randint(0, 30) for _ in range(rng.randint(1, 8))]
        check_epoch(counts, world=rng.randint(1, 4), workers=rng.randint(0, 3),
                    batch=rng.randint(1, 5), seed=rng.randint(0, 10**6), epoch=rng.randint(0, 50))


def test_too_few_samples_give_zero_steps_everywhere() -> None:
    plans = [plan_epoch([3], world_size=2, rank=r, num_workers=1, batch_size=4, seed=0, epoch=0)
             for r in range(2)]
    assert [p.steps_per_epoch for p in plans] == [0, 0]
    assert plans[0].total_dropped == 3


@pytest.mark.parametrize("kwargs", [
    dict(world_size=2, rank=2), dict(world_size=0, rank=0), dict(world_size=1, rank=0, batch_size=0),
    dict(world_size=1, rank=0, num_workers=-1), dict(world_size=1, rank=0, seed=-1),
])
def test_invalid_arguments(kwargs: dict) -> None:
    base = dict(num_workers=1, batch_size=2, seed=0, epoch=0)
    base.update(kwargs)
    with pytest.raises(ValueError):
        plan_epoch([5, 5], **base)
