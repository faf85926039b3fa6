"""The one training step every caller runs (the loop, ``pretrain bench``, the benchmark scripts)
and the running means logged every N steps."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from augment.batch import ViewBatch
from objectives.base import LossOutput
from pretrain.data.format import ShardBatch
from pretrain.train.precision import engine_guard
from pretrain.train.seeding import derive_seed, generator_for

if TYPE_CHECKING:  # annotations only: importing DeepSpeed costs seconds
    from deepspeed import DeepSpeedEngine

    from augment.pipeline import ViewAugmenter

log = logging.getLogger("pretrain.train")


def make_views(augmenter: ViewAugmenter, batch: ShardBatch, generator: torch.Generator
               ) -> ViewBatch:
    """Augment a device-resident batch and attach its labels and latents."""
    return augmenter(batch.images, generator, labels=batch.labels, latents=batch.latents or None)


def run_step(engine: DeepSpeedEngine, augmenter: ViewAugmenter, batch: ShardBatch, *, seed: int,
             step: int, rank: int, total_steps: int) -> LossOutput:
    """Training step ``step`` of ``rank`` on a device-resident ``batch``: the whole step as the
    training loop, ``pretrain bench`` and the benchmarks run it.

    1. torch's global generator is seeded from ``(seed, "step", step, rank)``, so dropout,
       drop-path and any other draw from it replay exactly after a resume;
    2. the views are made with the generator of ``(seed, "augment", step, rank)``;
    3. ``step_on_views``: forward (under the bf16 guard), backward, optimizer/LR step, then the
       objective's ``on_step_end`` (seq-JEPA's EMA target update).
    """
    torch.manual_seed(derive_seed(seed, "step", step, rank))
    views = make_views(augmenter, batch, generator_for(seed, "augment", step, rank))
    return step_on_views(engine, views, step=step, total_steps=total_steps)


def step_on_views(engine: DeepSpeedEngine, views: ViewBatch, *, step: int, total_steps: int
                  ) -> LossOutput:
    """The part of ``run_step`` after the views exist: ``train_step``, then the objective's
    per-step hook. Called alone only where the views are fixed on purpose (``pretrain
    bench``'s compute-only mode, which times the step without its input)."""
    out = train_step(engine, views)
    engine.module.on_step_end(step, total_steps)
    return out


def train_step(engine: DeepSpeedEngine, views: ViewBatch) -> LossOutput:
    """Forward, backward and optimizer/LR step through the DeepSpeed engine (no objective hook:
    callers that train use ``run_step`` or ``step_on_views``)."""
    with engine_guard(engine):
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


class StepHealth:
    """Steps the optimizer skipped and losses that stopped being finite, checked once per
    logging interval (no host sync on the hot path).

    DeepSpeed's ZeRO 1/2 optimizers skip a step whose gradients are not finite and count it in
    ``engine.skipped_steps``; under bf16 autocast there is no loss scale to lower, so a skip means
    the gradients were wrong, never a routine scale adjustment. ZeRO 0 does not check at all and
    applies them. Either way the run must say so: the count is logged as ``train/skipped_steps``
    and every new skip or non-finite mean loss is a warning.

    ``already_skipped``: the engine's count when checking starts (a resumed engine restores
    DeepSpeed's ``skipped_steps`` from its checkpoint; those skips were warned about before)."""

    def __init__(self, already_skipped: int = 0) -> None:
        self.skipped = already_skipped

    def check(self, engine, step: int, mean_loss: float) -> dict[str, float]:
        skipped = int(getattr(engine, "skipped_steps", 0))
        if skipped > self.skipped:
            log.warning("step %d: the optimizer skipped %d step(s) with non-finite gradients "
                        "(%d in all)", step, skipped - self.skipped, skipped)
        self.skipped = skipped
        if not math.isfinite(mean_loss):
            log.warning("step %d: the mean loss of the last interval is %s", step, mean_loss)
        return {"train/skipped_steps": float(skipped)}
