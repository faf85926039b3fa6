"""Probe data sets: a fixed, small, held-out set of images (+ labels, + 3D latents) in memory.

A ``ProbeSet`` comes from shards (read in stream order, capped, deterministic) or from a preset:

- ``synth3d``: synthetic 3D objects rendered once into ``cache_dir`` with a seed the pretraining
  data does not use (held-out objects); the first ``max_train`` objects are probe-train, the next
  ``max_test`` probe-test, so the two splits never share an object.
- ``cifar10``: the CIFAR-10 shards (its own ``train-*``/``test-*`` files) in the folder named
  by ``$PRETRAIN_CIFAR10_DIR``; without it, a source checkout's ``../shared/data/cifar10``
  (the development default, see :func:`cifar10_dir`).

Any other source is a shard folder or pattern; a local folder holding ``train-*.tar`` and
``test-*.tar`` is split by file name, anything else by position (``test_every``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pretrain.data.decode import decode_sample
from pretrain.data.image import BadSample
from pretrain.data.errors import DataError
from pretrain.data.format import LATENTS_KEY
from pretrain.data.index import open_source
from pretrain.data.sources import iter_shard
from pretrain.data.synth3d import Synth3DConfig, ensure_synth3d
from pretrain.data.synth3d.shapes import MAX_PARAMS
from pretrain.probes.config import ProbesConfig

log = logging.getLogger("pretrain.probes")

CIFAR10_ENV = "PRETRAIN_CIFAR10_DIR"
# The development default only: where the shards sit beside a source checkout (the workspace's
# shared data folder). An installed package has no such neighbour; it needs $PRETRAIN_CIFAR10_DIR.
DEV_CIFAR10_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"
PRESETS = ("synth3d", "cifar10")
# Per-sample latents a ProbeSet needs to re-render an object (3D transformations).
LATENTS_3D = ("quaternion", "object_hue", "background_hue", "light_dir", "shape_params")


def cifar10_dir() -> Path:
    """The folder of the ``cifar10`` preset: ``$PRETRAIN_CIFAR10_DIR`` when set, else
    ``DEV_CIFAR10_DIR``. Read at each call, so the setting can change within a process."""
    configured = os.environ.get(CIFAR10_ENV, "").strip()
    return Path(configured).expanduser() if configured else DEV_CIFAR10_DIR


def cifar10_split() -> tuple[list[str], list[str]]:
    """The ``cifar10`` preset's train and test shard files; a ``DataError`` (one line, naming
    the setting) when the folder or its ``train-*.tar``/``test-*.tar`` files are missing."""
    folder = cifar10_dir()
    split = _split_files(folder) if folder.is_dir() else None
    if split is None:
        where = (f"${CIFAR10_ENV}={folder}" if os.environ.get(CIFAR10_ENV, "").strip()
                 else f"{folder} (the development default)")
        raise DataError(f"CIFAR-10 shards (train-*.tar and test-*.tar) not found in {where}; set "
                        f"${CIFAR10_ENV} to the folder that holds them")
    return split


@dataclass
class ProbeSet:
    """Images and what is known about them, split into probe-train and probe-test.

    Attributes:
        images: ``uint8`` ``N x 3 x H x W`` (square).
        labels: ``int64`` ``N``; ``-1`` where unknown.
        train: ``bool`` ``N``; True for probe-train rows, False for probe-test rows.
        latents: per-sample 3D ground truth of the decoded view (``quaternion`` ``N x 4``,
            ``object_hue`` ``N``, ``background_hue`` ``N``, ``light_dir`` ``N x 3``,
            ``shape_params`` ``N x MAX_PARAMS`` zero-padded); empty for ordinary images.
        name: where the set came from (preset name or source).
        classes: class names in label order, when the data says.
        render_size: side the 3D objects were rendered at (``None`` for ordinary images).
        pose_max_angle_deg: pose range the 3D objects were drawn from (``None``: uniform on
            SO(3)); re-rendered poses (``object_rotation``) come from the same range.
    """

    images: Tensor
    labels: Tensor
    train: Tensor
    latents: dict[str, Tensor] = field(default_factory=dict)
    name: str = ""
    classes: list[str] | None = None
    render_size: int | None = None
    pose_max_angle_deg: float | None = None

    @property
    def train_idx(self) -> Tensor:
        return torch.nonzero(self.train, as_tuple=True)[0]

    @property
    def test_idx(self) -> Tensor:
        return torch.nonzero(~self.train, as_tuple=True)[0]

    @property
    def has_3d(self) -> bool:
        """True when every sample can be re-rendered (3D transformations apply)."""
        return all(k in self.latents for k in LATENTS_3D)

    def capped(self, max_train: int, max_test: int) -> "ProbeSet":
        """The first ``max_train`` probe-train and ``max_test`` probe-test rows (self when
        nothing is cut), e.g. the online subset of an end-of-run set."""
        tr, te = self.train_idx, self.test_idx
        if tr.numel() <= max_train and te.numel() <= max_test:
            return self
        rows = torch.cat((tr[:max_train], te[:max_test]))
        return ProbeSet(images=self.images[rows], labels=self.labels[rows],
                        train=self.train[rows], latents={k: v[rows] for k, v in self.latents.items()},
                        name=self.name, classes=self.classes, render_size=self.render_size)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max().item()) + 1 if self.labels.numel() else 0


@dataclass
class _Row:
    image: np.ndarray  # H x W x 3
    label: int
    latents: dict[str, np.ndarray]


def _iter_rows(source: str | list[str], image_size: int | None, seed: int) -> Iterator[_Row]:
    """Decoded samples of ``source`` in stream order; unreadable samples are skipped (logged).

    The first image fixes the side when ``image_size`` is None (its shorter side), so the set is
    always square and stackable."""
    shards = open_source(source)
    position, size = 0, image_size
    for url in shards.urls:
        for raw in iter_shard(url):
            position += 1
            try:
                if size is None:
                    first = decode_sample(raw, image_size=None, views=1, seed=(seed, position))
                    size = int(min(first.images.shape[1:3]))
                decoded = decode_sample(raw, image_size=size, views=1, seed=(seed, position))
            except BadSample as exc:
                log.warning("probe set: skipping sample %s of %s: %s",
                            raw.get("__key__"), url, exc.reason)
                continue
            latents = {k: v[0] for k, v in decoded.latents.items()}
            if LATENTS_KEY in raw and latents:
                shape = json.loads(raw[LATENTS_KEY]).get("shape_params")
                if shape is not None:
                    padded = np.zeros(MAX_PARAMS, dtype=np.float32)
                    padded[: len(shape)] = np.asarray(shape, dtype=np.float32)
                    latents["shape_params"] = padded
            yield _Row(decoded.images[0], decoded.label, latents)


def _take(rows: Iterator[_Row], n: int) -> list[_Row]:
    out = []
    for row in rows:
        if len(out) >= n:
            break
        out.append(row)
    return out


def _assemble(train: list[_Row], test: list[_Row], name: str, classes: list[str] | None,
              render_size: int | None) -> ProbeSet:
    rows = train + test
    if not train or not test:
        raise DataError(f"probe data {name}: need probe-train and probe-test samples, got "
                        f"{len(train)} and {len(test)}")
    images = torch.from_numpy(np.stack([r.image for r in rows])).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([r.label for r in rows], dtype=torch.int64)
    split = torch.zeros(len(rows), dtype=torch.bool)
    split[: len(train)] = True
    names = set.intersection(*(set(r.latents) for r in rows))
    latents = {k: torch.from_numpy(np.stack([r.latents[k] for r in rows])).float()
               for k in sorted(names)}
    return ProbeSet(images=images, labels=labels, train=split, latents=latents, name=name,
                    classes=classes, render_size=render_size)


def _metadata(source: str) -> dict:
    try:
        return open_source(source).metadata
    except DataError:
        return {}


def probe_set_from_shards(train_source: str | list[str], test_source: str | list[str] | None,
                          *, max_train: int, max_test: int, image_size: int | None = None,
                          test_every: int = 5, seed: int = 0, name: str | None = None) -> ProbeSet:
    """The first ``max_train`` / ``max_test`` readable samples of the train / test sources.

    Without ``test_source`` one stream is split by position: sample ``i`` (0-based, readable
    samples only) is probe-test when ``i % test_every == test_every - 1``. Deterministic: the
    same shards and arguments give the same set."""
    label = name or str(train_source)
    if test_source is not None:
        train = _take(_iter_rows(train_source, image_size, seed), max_train)
        size = image_size or (train[0].image.shape[0] if train else None)
        test = _take(_iter_rows(test_source, size, seed), max_test)
    else:
        train, test = [], []
        for i, row in enumerate(_iter_rows(train_source, image_size, seed)):
            bucket, cap = (test, max_test) if i % test_every == test_every - 1 else (train, max_train)
            if len(bucket) < cap:
                bucket.append(row)
            if len(train) >= max_train and len(test) >= max_test:
                break
    meta = _metadata(train_source) if isinstance(train_source, str) else {}
    classes = meta.get("classes") if isinstance(meta.get("classes"), list) else None
    render = meta.get("image_size") if meta.get("kind") == "synth3d" else None
    probe = _assemble(train, test, label, classes, render)
    if render is not None:
        probe.pose_max_angle_deg = (meta.get("config") or {}).get("max_angle_deg")
    return probe


def _split_files(folder: Path) -> tuple[list[str], list[str]] | None:
    train = sorted(str(p) for p in folder.glob("train-*.tar"))
    test = sorted(str(p) for p in folder.glob("test-*.tar"))
    return (train, test) if train and test else None


def synth3d_probe_dir(cfg: ProbesConfig) -> tuple[Path, Synth3DConfig]:
    """Folder (under ``cfg.cache_dir``) and generator settings of the held-out 3D probe set."""
    total = cfg.max_train + cfg.max_test
    gen = Synth3DConfig(classes=cfg.synth3d_classes,
                        instances_per_class=math.ceil(total / cfg.synth3d_classes), views=1,
                        size=cfg.synth3d_size, seed=cfg.synth3d_seed, shard_size=256,
                        max_angle_deg=cfg.synth3d_max_angle_deg)
    return Path(cfg.cache_dir).resolve() / f"probe-synth3d-{gen.cache_key()}", gen


def synth3d_probe_set(cfg: ProbesConfig) -> ProbeSet:
    """Render (once, cached) and load the held-out synthetic 3D probe set.

    Objects interleave classes, so the first ``max_train`` objects (probe-train) and the next
    ``max_test`` (probe-test) are class-balanced and disjoint."""
    out, gen = synth3d_probe_dir(cfg)
    ensure_synth3d(gen, out)
    rows = _take(_iter_rows(str(out), cfg.image_size, cfg.seed), cfg.max_train + cfg.max_test)
    meta = open_source(str(out)).metadata
    probe = _assemble(rows[: cfg.max_train], rows[cfg.max_train:], "synth3d",
                      meta.get("classes"), int(meta.get("image_size", gen.size)))
    probe.pose_max_angle_deg = gen.max_angle_deg
    return probe


def load_probe_set(data: str, cfg: ProbesConfig) -> ProbeSet:
    """A probe set from a preset name (``PRESETS``) or a shard folder/pattern (see module doc)."""
    if data == "synth3d":
        return synth3d_probe_set(cfg)
    common = dict(max_train=cfg.max_train, max_test=cfg.max_test, image_size=cfg.image_size,
                  test_every=cfg.test_every, seed=cfg.seed)
    if data == "cifar10":
        train, test = cifar10_split()
        return probe_set_from_shards(train, test, name="cifar10", **common)
    folder = Path(data)
    split = _split_files(folder) if folder.is_dir() else None
    if split is not None:
        probe = probe_set_from_shards(split[0], split[1], name=data, **common)
        meta = _metadata(data)
        probe.classes = probe.classes or meta.get("classes")
        return probe
    return probe_set_from_shards(data, None, name=data, **common)
