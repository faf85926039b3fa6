"""How long a run is: shard list, sample counts, steps per epoch, total steps."""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.config.schema import RunConfig
from pretrain.data import index, plan
from pretrain.data.errors import DataError


@dataclass(frozen=True)
class TrainingPlan:
    urls: list[str]
    counts: list[int]
    steps_per_epoch: int
    total_steps: int  # length of the LR schedule: epochs x steps per epoch
    stop_step: int  # where this invocation stops: total_steps, or train.max_steps if smaller


def plan_training(cfg: RunConfig, world_size: int) -> TrainingPlan:
    """Resolve ``data.path`` (already set to generated data when it was None) into a plan.

    Raises DataError naming the path when there is no data or too little for one step."""
    if cfg.data.path is None:
        raise DataError("data.path is not set (synthetic data must be generated first)")
    shards = index.open_source(cfg.data.path)
    urls, counts = shards.urls, shards.counts
    per_epoch = plan.steps_per_epoch(counts, world_size, cfg.data.batch_size)
    if per_epoch < 1:
        raise DataError(f"{cfg.data.path}: {sum(counts)} samples are fewer than one step of "
                        f"{world_size} workers x batch {cfg.data.batch_size}")
    total = per_epoch * cfg.train.epochs
    stop = total if cfg.train.max_steps is None else min(total, cfg.train.max_steps)
    return TrainingPlan(urls=urls, counts=counts, steps_per_epoch=per_epoch, total_steps=total,
                        stop_step=stop)
