"""Resume's data side: the batches a run already consumed are read past without being decoded.

The proof: the consumed samples are replaced by bytes that cannot be decoded. Decoding any of
them would count it as skipped (the control run from the start does); the resumed loader counts
none and serves exactly the tail of the clean epoch."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.data.reader import make_loader
from pretrain.data.sources import expand_sources
from pretrain.data.writer import ShardSetWriter

SIZE = 8
SAMPLES = 24
LOADER = dict(world_size=2, rank=0, batch_size=2, image_size=SIZE, seed=3, epoch=1,
              shuffle_buffer=4, max_skip_frac=1.0)


def _png(sample_id: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE, 3), [sample_id, 0, 0], dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _ids(images: torch.Tensor) -> list[int]:
    return [int(img[0, 0, 0]) for img in images[:, 0]]


def _write(root: Path, broken: set[int]) -> list[str]:
    with ShardSetWriter(root, shard_size=SAMPLES // 2) as writer:
        for i in range(SAMPLES):
            writer.write(f"s{i:03d}", {"png": b"not an image" if i in broken else _png(i),
                                       "cls": b"1"})
    return expand_sources(root)


@pytest.mark.parametrize("num_workers, skip", [(0, 2), (2, 3)])
def test_resume_skips_consumed_batches_without_decoding_them(tmp_path, num_workers, skip):
    clean = _write(tmp_path / "clean", set())
    loader, plan = make_loader(clean, [SAMPLES // 2] * 2, num_workers=num_workers, **LOADER)
    full = [_ids(b.images) for b in loader]
    assert len(full) == plan.steps_per_epoch == 6
    consumed = {i for batch in full[:skip] for i in batch}
    assert len(consumed) == skip * LOADER["batch_size"]

    damaged = _write(tmp_path / "damaged", consumed)
    resumed, _ = make_loader(damaged, [SAMPLES // 2] * 2, num_workers=num_workers,
                             skip_batches=skip, **LOADER)
    batches = list(resumed)
    assert [_ids(b.images) for b in batches] == full[skip:]
    assert [b.skipped for b in batches] == [0] * len(batches)

    # Control: read from the start, the same damaged samples are decoded, fail and are counted.
    from_start, _ = make_loader(damaged, [SAMPLES // 2] * 2, num_workers=num_workers, **LOADER)
    counted = {}
    for b in from_start:
        counted[b.worker] = b.skipped  # per loader worker, cumulative
    assert sum(counted.values()) == len(consumed)
