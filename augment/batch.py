"""The views batch: the one contract between augmentation and objectives."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


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
