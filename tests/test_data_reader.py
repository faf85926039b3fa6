"""The streaming reader on real shard files: coverage, resume, determinism, bad data, sources."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.data.decode import decode_sample
from pretrain.data.image import BadSample, decode_image
from pretrain.data.errors import DataError
from pretrain.data.format import INDEX_NAME, view_key
from pretrain.data.index import open_source, scan_shard, shard_counts
from pretrain.data.plan import plan_epoch
from pretrain.data.reader import ShardStream, make_loader
from pretrain.data.sources import expand_sources
from pretrain.data.writer import ShardSetWriter
from tests.id_shards import SIZE, id_png, ids_of, planned_ids, png, write_parts

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
GRAY_MARK = 255  # blue channel of id-encoding images is 0, so an all-255 image is the gray one


def run(loader) -> list:
    return [batch for batch in loader]


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> tuple[list[str], list[int], dict[tuple[int, int], int]]:
    root = tmp_path_factory.mktemp("uneven")
    counts = [7, 5, 11]
    urls, where = write_parts(root, counts)
    return urls, counts, where


def loader_kwargs(**overrides) -> dict:
    kwargs = dict(world_size=2, rank=0, batch_size=2, num_workers=2, image_size=SIZE, seed=5,
                  epoch=1, shuffle_buffer=0)
    kwargs.update(overrides)
    return kwargs


def test_two_ranks_two_workers_serve_the_plan_exactly(uneven) -> None:
    urls, counts, where = uneven
    assert open_source(urls).counts == counts
    all_ids: list[int] = []
    steps = []
    for rank in (0, 1):
        loader, plan = make_loader(urls, counts, **loader_kwargs(rank=rank))
        batches = run(loader)
        steps.append(len(batches))
        assert all(b.images.shape == (2, 1, 3, SIZE, SIZE) and b.images.dtype == torch.uint8 for b in batches)
        got = [ids_of(b.images) for b in batches]
        assert got == planned_ids(plan, where)
        for b, ids in zip(batches, got):
            assert b.labels.tolist() == [i % 10 for i in ids]
        all_ids += [i for ids in got for i in ids]
    assert steps == [5, 5]
    assert len(all_ids) == len(set(all_ids)) == 20


def test_shuffle_buffer_serves_same_samples_in_another_order(uneven) -> None:
    urls, counts, where = uneven
    for rank in (0, 1):
        loader, plan = make_loader(urls, counts, **loader_kwargs(rank=rank, shuffle_buffer=4))
        shuffled = [ids_of(b.images) for b in run(loader)]
        planned = planned_ids(plan, where)
        assert len(shuffled) == len(planned)
        assert sorted(i for ids in shuffled for i in ids) == sorted(i for ids in planned for i in ids)
        if rank == 0:
            assert shuffled != planned


def test_in_process_iteration_matches_the_dataloader_order(uneven) -> None:
    urls, counts, _ = uneven
    loader, plan = make_loader(urls, counts, **loader_kwargs(shuffle_buffer=3))
    through_workers = [ids_of(b.images) for b in run(loader)]
    stream = ShardStream(plan, image_size=SIZE, shuffle_buffer=3)
    assert [ids_of(b.images) for b in stream] == through_workers


def test_skip_batches_yields_the_tail(uneven) -> None:
    urls, counts, _ = uneven
    plan = plan_epoch(counts, world_size=1, rank=0, num_workers=2, batch_size=2, seed=9, epoch=0,
                      urls=urls)
    full = [ids_of(b.images) for b in ShardStream(plan, image_size=SIZE, shuffle_buffer=5)]
    assert len(full) == plan.steps_per_epoch == 11
    for k in range(plan.steps_per_epoch + 1):
        resumed = ShardStream(plan, image_size=SIZE, shuffle_buffer=5, skip_batches=k)
        tail = [ids_of(b.images) for b in resumed]
        assert tail == full[k:], k
    # Through real loader workers, with an odd k so that worker 1 owns the first batch served.
    loader, _ = make_loader(urls, counts, **loader_kwargs(world_size=1, num_workers=2, seed=9, epoch=0,
                                                          shuffle_buffer=5, skip_batches=3))
    assert len(loader) == 8
    assert [ids_of(b.images) for b in run(loader)] == full[3:]


def test_identical_loaders_give_identical_batches(uneven) -> None:
    urls, counts, _ = uneven
    kwargs = loader_kwargs(num_workers=0, shuffle_buffer=6)
    first = run(make_loader(urls, counts, **kwargs)[0])
    second = run(make_loader(urls, counts, **kwargs)[0])
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    other_epoch = run(make_loader(urls, counts, **{**kwargs, "epoch": 2})[0])
    assert [ids_of(b.images) for b in other_epoch] != [ids_of(b.images) for b in first]


def write_with_bad_samples(root: Path) -> list[str]:
    """Two shards of 8: ids 0..15 minus three unreadable samples, plus a gray and an RGBA one."""
    with ShardSetWriter(root, shard_size=8) as writer:
        for i in range(16):
            files = {"png": id_png(i), "cls": str(i % 10).encode()}
            if i == 2:
                files["png"] = b"\x89PNG\r\n\x1a\n this is not a png"
            elif i == 5:
                files = {"cls": b"5"}
            elif i == 11:
                files["cls"] = b"eleven"
            elif i == 7:
                files["png"] = png(np.full((SIZE, SIZE), GRAY_MARK, dtype=np.uint8), mode="L")
            elif i == 9:
                files["png"] = id_png(i, alpha=30)
            writer.write(f"s{i:03d}", files)
    return expand_sources(str(root))


def test_bad_samples_are_skipped_counted_and_padded(tmp_path, caplog) -> None:
    urls = write_with_bad_samples(tmp_path)
    shard_set = open_source(urls)
    caplog.set_level(logging.WARNING, logger="pretrain.data")
    loader, plan = make_loader(shard_set.urls, shard_set.counts, **loader_kwargs(
        world_size=1, batch_size=4, num_workers=0, shuffle_buffer=0, max_skip_frac=0.5))
    batches = run(loader)
    assert len(batches) == plan.steps_per_epoch == 4
    assert all(b.images.shape[0] == 4 for b in batches)
    last = batches[-1]
    assert (last.skipped, last.seen, last.padded) == (3, 16, 3)
    served = [["gray" if torch.all(img == GRAY_MARK) else ids_of(img[None, None])[0]
               for img in b.images[:, 0]] for b in batches]
    # Good samples in order: 0 1 3 4 6 gray(7) 8 9(RGBA) 10 12 13 14 15; the three places left
    # by unreadable samples 2, 5 and 11 repeat the most recent good samples 12 13 14.
    assert served == [[0, 1, 3, 4], [6, "gray", 8, 9], [10, 12, 13, 14], [15, 12, 13, 14]]
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "pretrain.data" and r.levelno == logging.WARNING]
    assert len(warnings) == 3  # one per shard holding unreadable samples, one for the padding
    assert "repeating 3 good samples" in warnings[-1]
    assert {Path(u).name for u in urls if any(u in m for m in warnings)} == {
        "shard-000000.tar", "shard-000001.tar"}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_too_many_bad_samples_raise(tmp_path, num_workers) -> None:
    urls = write_with_bad_samples(tmp_path)
    loader, _ = make_loader(urls, [8, 8], **loader_kwargs(world_size=1, batch_size=4,
                                                           num_workers=num_workers, max_skip_frac=0.1))
    with pytest.raises(DataError, match=r"max_skip_frac.*shard-00000[01]\.tar"):
        run(loader)


def _one_shard_with_bad(root: Path, count: int, bad: set[int]) -> list[str]:
    with ShardSetWriter(root, shard_size=count) as writer:
        for i in range(count):
            writer.write(f"s{i:03d}", {"png": id_png(i) if i not in bad else b"broken"})
    return expand_sources(root)


def test_skip_fraction_is_judged_over_the_whole_range_not_a_prefix(tmp_path) -> None:
    # Issue 11 item 10: 2 bad samples in 300 (0.67%) were stopped as "2/100 = 2.0% > 1.0%"
    # because the fraction was checked on the first 100 samples.
    urls = _one_shard_with_bad(tmp_path, 300, {1, 3})
    loader, plan = make_loader(urls, [300], **loader_kwargs(world_size=1, batch_size=10,
                                                            num_workers=0))
    batches = run(loader)
    assert len(batches) == plan.steps_per_epoch == 30
    assert (batches[-1].skipped, batches[-1].seen, batches[-1].padded) == (2, 300, 2)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_skip_limit_stops_once_certain_and_names_shard_and_counts(tmp_path, num_workers) -> None:
    # 4 bad among the first 10 of 300: 4 > 1% of 300 is certain after the 10th sample, so the
    # stream stops there instead of training on; with a loader worker process the message must
    # still be ours (torch re-raises it as "Caught DataError in DataLoader worker process 0.").
    urls = _one_shard_with_bad(tmp_path, 300, {0, 4, 6, 9})
    loader, _ = make_loader(urls, [300], **loader_kwargs(world_size=1, batch_size=10,
                                                         num_workers=num_workers))
    served = 0
    with pytest.raises(DataError) as caught:
        for _ in loader:
            served += 1
    assert served == 0
    assert str(caught.value) == (
        "too many unreadable samples: 4 of 300 = 1.3% > max_skip_frac 1.0% (rank 0, loader "
        f"worker 0); shards: {urls[0]} (4 of 10 read)")


def test_missing_paths_and_empty_lists_name_the_path(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        open_source(str(missing))
    with pytest.raises(DataError, match="empty"):
        open_source([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=str(tmp_path / "empty")):
        expand_sources(tmp_path / "empty")
    with pytest.raises(DataError, match="train-000001.tar"):
        expand_sources(f"{tmp_path}/train-{{000000..000001}}.tar")
    with pytest.raises(DataError, match=str(missing)):
        make_loader([str(missing)], [4], **loader_kwargs(world_size=1))


def test_a_shard_url_with_credentials_is_redacted_in_the_error() -> None:
    # Issue 11 item 2: a DataError line reaches the terminal, Ray's logs and the job's failure.
    from pretrain.data.sources import iter_shard

    url = "http://alice:PW1@127.0.0.1:9/train-000.tar?token=T0K"  # port 9: connection refused
    with pytest.raises(DataError) as caught:
        list(iter_shard(url, 0, 1))
    message = str(caught.value)
    assert "http://***@127.0.0.1:9/train-000.tar?token=***" in message
    assert "PW1" not in message and "T0K" not in message
    # Re-created from its message (DataLoader workers, Ray): the same line.
    assert str(DataError(message)) == message


def test_counts_by_scanning_equal_true_counts(tmp_path) -> None:
    with ShardSetWriter(tmp_path, shard_size=6) as writer:
        for i in range(17):
            writer.write(f"s{i:03d}", {"png": id_png(i), "cls": b"1"})
    urls = expand_sources(tmp_path)
    assert shard_counts(urls)[0] == [6, 6, 5]
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    (tmp_path / INDEX_NAME).unlink()
    assert [scan_shard(u) for u in urls] == [6, 6, 5]
    assert open_source(tmp_path).counts == [6, 6, 5]
    # An index elsewhere can be named explicitly (remote shard sets).
    index["shards"][0]["samples"] = 4
    elsewhere = tmp_path.parent / f"{tmp_path.name}-index.json"
    elsewhere.write_text(json.dumps(index))
    assert open_source(tmp_path, index=str(elsewhere)).counts == [4, 6, 5]


def test_stale_index_claiming_more_samples_fails(tmp_path) -> None:
    with ShardSetWriter(tmp_path, shard_size=6) as writer:
        for i in range(6):
            writer.write(f"s{i:03d}", {"png": id_png(i)})
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    index["shards"][0]["samples"] = 9
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    shard_set = open_source(tmp_path)
    loader, _ = make_loader(shard_set.urls, shard_set.counts, **loader_kwargs(
        world_size=1, batch_size=3, num_workers=0))
    with pytest.raises(DataError, match="shard-000000.tar"):
        run(loader)


def test_brace_pattern_file_and_pipe_urls(tmp_path) -> None:
    with ShardSetWriter(tmp_path, shard_size=4) as writer:
        for i in range(12):
            writer.write(f"s{i:03d}", {"png": id_png(i)})
    pattern = open_source(f"{tmp_path}/shard-{{000000..000002}}.tar")
    assert pattern.counts == [4, 4, 4]
    assert open_source(f"{tmp_path}/shard-*.tar").urls == pattern.urls
    for url in (f"file:{tmp_path}/shard-000001.tar", f"pipe:cat {tmp_path}/shard-000001.tar"):
        shard_set = open_source(url)
        assert shard_set.counts == [4]
        loader, _ = make_loader(shard_set.urls, shard_set.counts, **loader_kwargs(
            world_size=1, batch_size=2, num_workers=0))
        assert sorted(i for b in run(loader) for i in ids_of(b.images)) == [4, 5, 6, 7]


def test_multi_view_samples_choose_views_and_latents_together(tmp_path) -> None:
    def view_png(sample: int, view: int) -> bytes:
        return png(np.full((SIZE, SIZE, 3), [sample, view, 0], dtype=np.uint8))

    with ShardSetWriter(tmp_path, shard_size=10) as writer:
        for i in range(6):
            nviews = 4 if i < 5 else 2
            files = {view_key(v): view_png(i, v) for v in range(nviews)}
            files["latents.json"] = json.dumps({
                "object_hue": [v / 10 for v in range(nviews)],
                "quaternion": [[1.0, 0.0, 0.0, float(v)] for v in range(nviews)],
            }).encode()
            writer.write(f"s{i:03d}", files)
    urls = expand_sources(tmp_path)
    for views in (2, 3):
        plan = plan_epoch([6], world_size=1, rank=0, num_workers=0, batch_size=3, seed=1, epoch=0, urls=urls)
        batches = list(ShardStream(plan, image_size=SIZE, views=views))
        again = list(ShardStream(plan, image_size=SIZE, views=views))
        for b, b2 in zip(batches, again):
            assert torch.equal(b.images, b2.images)
            assert b.images.shape == (3, views, 3, SIZE, SIZE)
            assert b.latents["quaternion"].shape == (3, views, 4)
            assert b.latents["object_hue"].dtype == torch.float32
            for s in range(3):
                chosen = [int(b.images[s, v, 1, 0, 0]) for v in range(views)]
                sample = int(b.images[s, 0, 0, 0, 0])
                if sample < 5:
                    assert len(set(chosen)) == views and all(0 <= c < 4 for c in chosen)
                else:
                    assert chosen == [v % 2 for v in range(views)]
                assert b.latents["quaternion"][s, :, 3].tolist() == chosen
                assert torch.allclose(b.latents["object_hue"][s], torch.tensor(chosen) / 10)
    picks = set()
    for seed in range(8):
        plan = plan_epoch([6], world_size=1, rank=0, num_workers=0, batch_size=3, seed=seed, epoch=0,
                          urls=urls)
        first = next(iter(ShardStream(plan, image_size=SIZE, views=2)))
        picks.add(tuple(first.images[:, :, 1, 0, 0].flatten().tolist()))
    assert len(picks) > 1


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_decode_image_crops_resizes_and_converts_modes() -> None:
    bands = np.zeros((8, 16, 3), dtype=np.uint8)
    bands[:, :4] = [255, 0, 0]
    bands[:, 4:12] = [0, 255, 0]
    bands[:, 12:] = [0, 0, 255]
    assert (decode_image(png(bands), 8) == [0, 255, 0]).all()  # center crop keeps the middle
    tall = np.zeros((16, 8, 3), dtype=np.uint8)
    tall[8:] = 255
    out = decode_image(png(tall), 8)
    assert (out[:4] == 0).all() and (out[4:] == 255).all()
    uniform = decode_image(png(np.full((16, 32, 3), [10, 20, 30], dtype=np.uint8)), 8)
    assert uniform.shape == (8, 8, 3) and (uniform == [10, 20, 30]).all()
    assert decode_image(png(bands), None).shape == (8, 16, 3)
    wide = np.array([[65535, 25700], [0, 257]], dtype=np.uint16)
    assert decode_image(png(wide), None)[..., 0].tolist() == [[255, 100], [0, 1]]
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([200, 10, 10, 0, 0, 0])
    buf = io.BytesIO()
    palette.save(buf, format="PNG", transparency=0)
    assert (decode_image(buf.getvalue(), 4) == [200, 10, 10]).all()
    gray_alpha = np.dstack([np.full((4, 4), 77, np.uint8), np.full((4, 4), 9, np.uint8)])
    assert (decode_image(png(gray_alpha, mode="LA"), 4) == 77).all()
    cmyk = decode_image(jpeg(Image.new("CMYK", (16, 16), (0, 0, 0, 0))), 8)
    assert cmyk.shape == (8, 8, 3) and np.abs(cmyk.astype(int) - 255).max() <= 2
    with pytest.raises(BadSample, match="undecodable"):
        decode_image(b"GIF89a broken", 8)


def test_decode_sample_rejects_missing_image_and_bad_label() -> None:
    with pytest.raises(BadSample, match="no image"):
        decode_sample({"__key__": "a", "cls": b"1"}, image_size=SIZE, views=1, seed=(0,))
    with pytest.raises(BadSample, match="label"):
        decode_sample({"__key__": "a", "png": id_png(1), "cls": b"x1"}, image_size=SIZE, views=1, seed=(0,))
    sample = decode_sample({"__key__": "a", "jpg": jpeg(Image.new("RGB", (8, 8)))}, image_size=SIZE,
                           views=2, seed=(0,))
    assert sample.label == -1 and sample.images.shape == (2, SIZE, SIZE, 3)


@pytest.mark.skipif(not CIFAR.is_dir(), reason="CIFAR-10 shards not on this machine")
def test_cifar10_test_shards_decode() -> None:
    shard_set = open_source(str(CIFAR / "test-{000000..000001}.tar"))
    assert shard_set.counts == [5000, 5000]
    loader, plan = make_loader(shard_set.urls, shard_set.counts, world_size=1, rank=0, batch_size=64,
                               num_workers=0, image_size=32, seed=0, epoch=0, shuffle_buffer=0)
    assert plan.steps_per_epoch == 10000 // 64
    labels = []
    for i, batch in enumerate(loader):
        assert batch.images.shape == (64, 1, 3, 32, 32) and batch.images.dtype == torch.uint8
        assert batch.images.float().std() > 10  # real photos, not blank
        labels += batch.labels.tolist()
        if i == 2:
            break
    assert set(labels) <= set(range(10)) and len(set(labels)) > 5
