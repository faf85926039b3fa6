"""The views batch: the one contract between augmentation and objectives (and the input check)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def check_images(images: Tensor, needed: int, recipe: str) -> None:
    """``ValueError`` unless ``images`` is a ``uint8`` ``B x V x 3 x H x W`` batch with ``V >= needed``."""
    if images.dtype != torch.uint8 or images.dim() != 5 or images.shape[2] != 3:
        shape = tuple(images.shape)
        raise ValueError(f"expected uint8 B x V x 3 x H x W images, got {images.dtype} {shape}")
    if needed > images.shape[1]:
        raise ValueError(
            f"recipe {recipe!r} cuts views from {needed} decoded views, the batch has "
            f"{images.shape[1]} (set data.views >= {needed})"
        )


@dataclass
class ViewBatch:
    """Augmented views of one batch, with what produced them.

    Attributes:
        views: one float tensor per view, each ``B x C x H x W`` on the worker's device,
            already normalised with the encoder's mean/std.
        params: one dict per view; every tensor has leading dimension ``B`` and holds the
            per-sample parameters actually applied (neutral values where an op was skipped).
        labels: class indices ``B`` (``-1`` where unknown), or ``None``.
        latents: ground-truth per-view latents from the synthetic 3D data
            (name -> ``B x V x ...``), or ``None``.
        relative: relative transformation vectors between views, filled by recipes that
            need them (name -> tensor), empty otherwise.
    """

    views: list[Tensor]
    params: list[dict[str, Tensor]]
    labels: Tensor | None = None
    latents: dict[str, Tensor] | None = None
    relative: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.views[0].shape[0])
