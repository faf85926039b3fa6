"""The on-disk shard format and the decoded batch the reader yields.

A shard set is a folder (or URL pattern) of webdataset ``.tar`` files. Each sample holds:

- one image per view: ``view{i}.png`` (or ``view{i}.jpg``) for synthetic 3D objects (``i`` in
  ``0..V-1``), or a single ``jpg``/``jpeg``/``png`` image (imported folders, CIFAR-10);
- ``cls``: the class index as ASCII text (absent for unlabeled data);
- ``latents.json`` (synthetic 3D only): per-view ground truth, see ``LATENT_KEYS``.

Writers put an ``index.json`` beside the shards (``INDEX_NAME``) with per-shard sample counts so
readers can plan an epoch without scanning the tars; readers fall back to scanning when it is absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

INDEX_NAME = "index.json"
INDEX_FORMAT = "invariant-pretrain-shards/1"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
CLASS_KEY = "cls"
LATENTS_KEY = "latents.json"

# Per-view ground-truth latents of synthetic 3D samples; each is a list with one entry per view.
#   quaternion:      [w, x, y, z] unit quaternion, object-to-world rotation, canonical sign w >= 0
#   object_hue:      float in [0, 1)
#   background_hue:  float in [0, 1)
#   light_dir:       [x, y, z] unit vector pointing from the object towards the light
LATENT_KEYS = ("quaternion", "object_hue", "background_hue", "light_dir")


def view_key(view: int, ext: str = "png") -> str:
    """Sample key of view ``view`` in a multi-view (synthetic 3D) sample: ``view{i}.png``, or
    ``view{i}.jpg`` for sets rendered as JPEG."""
    return f"view{view}.{ext}"


@dataclass
class ShardBatch:
    """One decoded batch, as the reader hands it to the training loop (CPU tensors).

    Attributes:
        images: ``uint8`` tensor ``B x V x 3 x H x W`` (V = views decoded per sample).
        labels: ``int64`` tensor ``B``; ``-1`` where a sample has no class.
        latents: name -> ``float32`` tensor ``B x V x ...`` (empty when the data has none).
        skipped: samples this loader worker skipped as unreadable since the epoch began.
        seen: samples this loader worker read (decoded or skipped) since the epoch began.
    """

    images: Tensor
    labels: Tensor
    latents: dict[str, Tensor] = field(default_factory=dict)
    skipped: int = 0
    seen: int = 0

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "ShardBatch":
        return ShardBatch(
            images=self.images.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            latents={k: v.to(device, non_blocking=non_blocking) for k, v in self.latents.items()},
            skipped=self.skipped,
            seen=self.seen,
        )
