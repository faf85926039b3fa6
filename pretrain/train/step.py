"""One optimisation step and the running means logged every N steps."""

from __future__ import annotations

import torch
from torch import Tensor

from augment.batch import ViewBatch
from objectives.base import LossOutput
from pretrain.data.format import ShardBatch


def make_views(augmenter, batch: ShardBatch, generator: torch.Generator) -> ViewBatch:
    """Augment a device-resident batch and attach its labels and latents."""
    return augmenter(batch.images, generator, labels=batch.labels, latents=batch.latents or None)


def train_step(engine, views: ViewBatch) -> LossOutput:
    """Forward, backward and optimizer/LR step through the DeepSpeed engine."""
    out: LossOutput = engine(views)
    engine.backward(out.loss)
    engine.step()
    return out


class RunningMeans:
    """Sums named scalars on the device and reads them back once per logging interval,
    so the hot path has no host sync."""

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, Tensor]) -> None:
        for name, value in values.items():
            value = value.detach().float()
            self._sums[name] = self._sums[name] + value if name in self._sums else value.clone()
        self.count += 1

    def pop(self) -> dict[str, float]:
        """Means since the last pop (one device->host copy), then reset."""
        if not self.count:
            return {}
        names = list(self._sums)
        means = (torch.stack([self._sums[n] for n in names]) / self.count).cpu().tolist()
        self._sums.clear()
        self.count = 0
        return dict(zip(names, means))
