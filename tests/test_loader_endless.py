"""The run's one persistent loader on real shard files and real DataLoader worker processes:
epoch after epoch in the order of the per-epoch plans, resume at any step, a bounded shuffle
buffer, and bitwise-equal weights after a stop and resume across an epoch boundary."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from pretrain.data.errors import DataError
from pretrain.data.plan import plan_epoch
from pretrain.data.reader import EndlessStream, make_endless_loader
from pretrain.data.writer import ShardSetWriter
from tests.id_shards import SIZE, id_png, ids_of, planned_ids, write_parts

COUNTS = [7, 5, 11]  # 23 samples: 11 per rank, 5 batches of 2 (odd, so the workers rotate)
EPOCHS = 3
LOADER = dict(world_size=2, batch_size=2, num_workers=2, image_size=SIZE, seed=5)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    urls, where = write_parts(tmp_path_factory.mktemp("uneven"), COUNTS)
    return urls, where


def _take(loader, n: int) -> list:
    with loader:
        return list(itertools.islice(loader, n))


def test_three_epochs_two_ranks_two_workers_follow_the_plans(uneven) -> None:
    urls, where = uneven
    served: dict[int, list[int]] = {e: [] for e in range(EPOCHS)}
    steps = []
    for rank in (0, 1):
        loader = make_endless_loader(urls, COUNTS, rank=rank, shuffle_buffer=0, **LOADER)
        per_epoch = loader.steps_per_epoch
        batches = _take(loader, EPOCHS * per_epoch)
        assert next(loader, None) is None  # closed: its worker processes are gone
        steps.append(per_epoch)
        for epoch in range(EPOCHS):
            plan = plan_epoch(COUNTS, world_size=2, rank=rank, num_workers=2, batch_size=2, seed=5,
                              epoch=epoch, urls=urls)
            mine = batches[epoch * per_epoch:(epoch + 1) * per_epoch]
            assert [ids_of(b.images) for b in mine] == planned_ids(plan, where), (rank, epoch)
            assert [(b.epoch, b.index) for b in mine] == [(epoch, i) for i in range(per_epoch)]
            for b in mine:
                assert b.labels.tolist() == [i % 10 for i in ids_of(b.images)]
            served[epoch] += [i for b in mine for i in ids_of(b.images)]
    assert steps == [5, 5]
    for epoch, ids in served.items():
        plans = [plan_epoch(COUNTS, world_size=2, rank=r, num_workers=2, batch_size=2, seed=5,
                            epoch=epoch) for r in (0, 1)]
        # No duplicates; nothing lost but the samples the plan drops (23 - 2 ranks x 5 x 2).
        assert len(ids) == len(set(ids)) == 20 == 23 - plans[0].total_dropped
        expected = {where[(s.shard_index, i)] for p in plans for w in p.workers
                    for s in w.segments for i in range(s.start, s.stop)}
        assert set(ids) == expected
    assert served[0] != served[1] or served[1] != served[2]  # the shard order changes by epoch


def test_shuffled_epochs_keep_their_samples_and_are_deterministic(uneven) -> None:
    urls, where = uneven
    first = _take(make_endless_loader(urls, COUNTS, rank=0, shuffle_buffer=3, **LOADER), 15)
    again = _take(make_endless_loader(urls, COUNTS, rank=0, shuffle_buffer=3, **LOADER), 15)
    assert [ids_of(b.images) for b in first] == [ids_of(b.images) for b in again]
    for epoch in range(EPOCHS):
        plan = plan_epoch(COUNTS, world_size=2, rank=0, num_workers=2, batch_size=2, seed=5,
                          epoch=epoch, urls=urls)
        got = [i for b in first[epoch * 5:(epoch + 1) * 5] for i in ids_of(b.images)]
        assert Counter(got) == Counter(i for ids in planned_ids(plan, where) for i in ids)
    assert [ids_of(b.images) for b in first] != [
        ids_of(b.images) for b in _take(make_endless_loader(urls, COUNTS, rank=0,
                                                            shuffle_buffer=0, **LOADER), 15)]
    # In-process iteration plays the loader workers in the DataLoader's turn: the same sequence.
    stream = EndlessStream(urls, COUNTS, rank=0, shuffle_buffer=3, **LOADER)
    assert [ids_of(b.images) for b in itertools.islice(stream, 15)] == [
        ids_of(b.images) for b in first]


@pytest.mark.parametrize("start", [3, 5, 7, 12])
def test_resume_at_any_step_serves_the_tail(uneven, start) -> None:
    """Odd and even starts in the first, at the start of and inside the second epoch: with 5
    batches per epoch and 2 workers, each start hands the loader workers other plan workers."""
    urls, _ = uneven
    full = _take(make_endless_loader(urls, COUNTS, rank=1, shuffle_buffer=3, **LOADER), 15)
    tail = _take(make_endless_loader(urls, COUNTS, rank=1, shuffle_buffer=3, start_step=start,
                                     **LOADER), 15 - start)
    assert [ids_of(b.images) for b in tail] == [ids_of(b.images) for b in full[start:]]
    assert [(b.epoch, b.index) for b in tail] == [divmod(s, 5) for s in range(start, 15)]


def test_first_batch_comes_before_the_slice_is_read(tmp_path) -> None:
    """The shard holds 200 samples but its count claims 300, so reading the whole 300-sample
    slice fails. A buffer of the requested 10,000 would read all of it before the first batch;
    bounded by half the slice, batches flow and the failure comes only at the end."""
    with ShardSetWriter(tmp_path, shard_size=200) as writer:
        for i in range(200):
            writer.write(f"s{i:03d}", {"png": id_png(i)})
    url = str(tmp_path / "shard-000000.tar")
    loader = make_endless_loader([url], [300], world_size=1, rank=0, batch_size=10,
                                 num_workers=1, image_size=SIZE, seed=0, shuffle_buffer=10_000)
    with loader:
        first = next(loader)
        ids = ids_of(first.images)
        assert len(set(ids)) == 10 and max(ids) < 160  # from the first 150 + 10 samples read
        with pytest.raises(DataError, match="ended after 200 samples"):
            for _ in range(30):
                next(loader)


@pytest.mark.slow
def test_stop_and_resume_inside_the_second_epoch_is_bitwise(tmp_path) -> None:
    """The training loop with two real loader workers and a shuffle buffer: stopped at step 9
    (inside epoch 1 of 6 steps each) and resumed to step 15, it ends with exactly the weights
    of an uninterrupted run to step 15 (the resumed loader crosses the epoch boundary at 12).
    The resumed leg asks for 1 loader process instead of 2, as a move to other hardware would:
    the run keeps the count its checkpoint records, so the data order, and the weights, stay."""
    from safetensors.torch import load_file

    from pretrain.config import load_config
    from pretrain.data.synth3d import Synth3DConfig, generate_synth3d
    from pretrain.models.folder import WEIGHTS_NAME
    from pretrain.train.checkpoint import ENCODER_DIR, read_state
    from pretrain.train.distributed import single_process_group
    from pretrain.train.loop import WorkerContext, fit
    from pretrain.train.store import checkpoint_dir_name, local_store

    data = tmp_path / "data"
    generate_synth3d(Synth3DConfig(classes=2, instances_per_class=6, views=2, size=32,
                                   shard_size=5), data)
    overrides = [f"data.path={data}", "data.image_size=32", "data.batch_size=2",
                 "data.num_workers=2", "data.shuffle_buffer=2",
                 "encoder.model=test_resnet", "objective.vicreg.expander_dims=[32,32]",
                 "train.epochs=3", "checkpoint.every_steps=3", "checkpoint.keep=10",
                 "tracking.log_every_steps=3", "probes.enabled=false"]
    cpu = WorkerContext(0, 1, torch.device("cpu"))

    def run(store, stop: int, *extra: str) -> None:
        cfg = load_config(None, [*overrides, f"train.max_steps={stop}", *extra])
        assert fit(cfg, cpu, store, tracking_uri=None, run_id=None) == stop

    def weights(root) -> dict[str, torch.Tensor]:
        return load_file(root / checkpoint_dir_name(15) / ENCODER_DIR / WEIGHTS_NAME)

    with single_process_group():
        run(local_store(tmp_path / "straight"), 15)
        resumed = local_store(tmp_path / "resumed")
        run(resumed, 9)
        assert resumed.names()[-1] == checkpoint_dir_name(9)
        run(resumed, 15, "data.num_workers=1")
    assert read_state(tmp_path / "resumed" / checkpoint_dir_name(15)).loader_workers == 2
    want, got = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert want.keys() == got.keys() and len(want) > 0
    for key in want:
        assert torch.equal(want[key], got[key]), key


@pytest.mark.parametrize("cpus, accelerated, loaders, threads", [
    (1, False, 0, 1), (1, True, 0, 1),  # one core: loading in-process
    (2, False, 1, 1), (8, False, 2, 6), (16, False, 4, 12),  # CPU: a quarter loads
    (2, True, 1, 1), (16, True, 15, 1),  # accelerator: every core but one loads
])
def test_loader_processes_are_counted_in_the_cores(cpus, accelerated, loaders, threads) -> None:
    from pretrain.config import load_config
    from pretrain.train.resources import cpu_split

    split = cpu_split(load_config(None, [f"cluster.cpus_per_worker={cpus}"]),
                      accelerated=accelerated)
    assert (split.loader_workers, split.torch_threads) == (loaders, threads)
    assert split.loader_workers + split.torch_threads <= cpus
    # Explicit settings win.
    cfg = load_config(None, [f"cluster.cpus_per_worker={cpus}", "data.num_workers=3",
                             "cluster.torch_threads=5"])
    assert cpu_split(cfg, accelerated=accelerated) == type(split)(cpus, 3, 5)
