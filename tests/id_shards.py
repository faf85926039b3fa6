"""Shards of id-encoding images (a sample's pixels spell its id) and the plan's expected ids,
shared by the reader tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pretrain.data.plan import RankPlan
from pretrain.data.writer import ShardSetWriter

SIZE = 8


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def id_png(sample_id: int, alpha: int | None = None) -> bytes:
    """An image whose pixels spell its id: red = id // 256, green = id % 256, blue = 0."""
    pixel = [sample_id // 256, sample_id % 256, 0] + ([alpha] if alpha is not None else [])
    return png(np.full((SIZE, SIZE, len(pixel)), pixel, dtype=np.uint8))


def ids_of(images: torch.Tensor) -> list[int]:
    """Recover ids from a ``B x V x 3 x H x W`` batch (view 0), checking images are uniform."""
    out = []
    for img in images[:, 0]:
        assert torch.all(img == img[:, :1, :1])
        out.append(int(img[0, 0, 0]) * 256 + int(img[1, 0, 0]))
    return out


def write_parts(root: Path, counts: list[int]) -> tuple[list[str], dict[tuple[int, int], int]]:
    """One shard per folder (its own index.json) so shard sizes can be uneven; sample ids run
    0.. over the shards in order. Returns the URLs and (shard, offset) -> id."""
    urls, where, next_id = [], {}, 0
    for shard, count in enumerate(counts):
        folder = root / f"part{shard}"
        with ShardSetWriter(folder, shard_size=count, prefix=f"part{shard}") as writer:
            for offset in range(count):
                writer.write(f"s{next_id:05d}", {"png": id_png(next_id), "cls": str(next_id % 10).encode()})
                where[(shard, offset)] = next_id
                next_id += 1
        urls.append(str(folder / f"part{shard}-000000.tar"))
    return urls, where


def planned_ids(plan: RankPlan, where: dict[tuple[int, int], int]) -> list[list[int]]:
    """Ids of each rank batch in serving order, straight from the plan (no shuffle)."""
    per_worker = []
    for wp in plan.workers:
        ids = [where[(s.shard_index, i)] for s in wp.segments for i in range(s.start, s.stop)]
        per_worker.append([ids[j:j + plan.batch_size] for j in range(0, len(ids), plan.batch_size)])
    return [per_worker[b % plan.num_workers][b // plan.num_workers] for b in range(plan.steps_per_epoch)]
