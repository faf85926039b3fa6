"""Entry point of each Ray Train worker: rebuild the config, then run the training loop."""

from __future__ import annotations

import logging
from typing import Any

import ray.train
import ray.train.torch
import torch

from cluster.reporter import RayReporter
from pretrain.config.schema import RunConfig
from pretrain.train.loop import WorkerContext, fit


def train_worker(payload: dict[str, Any]) -> None:
    """``payload``: {"config": resolved RunConfig dict, "tracking_uri", "run_id"}."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = RunConfig.model_validate(payload["config"])
    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(cfg.cluster.cpus_per_worker)
    ctx = WorkerContext(rank=context.get_world_rank(), world_size=context.get_world_size(),
                        device=device)
    fit(cfg, ctx, RayReporter(), tracking_uri=payload.get("tracking_uri"),
        run_id=payload.get("run_id"))
