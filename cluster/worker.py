"""Entry point of each Ray Train worker: rebuild the config, then run the training loop."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray.train
import ray.train.torch
import torch

from cluster.storage import run_store, store_at
from pretrain.config.schema import RunConfig
from pretrain.train.loop import WorkerContext, fit
from pretrain.train.resources import cpu_split

# Rank 0's MetricLogger retries on its own schedule; MLflow's HTTP client would otherwise retry
# with backoff for minutes per call (and time out after 120 s) during a tracking-server outage.
MLFLOW_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def train_worker(payload: dict[str, Any]) -> None:
    """``payload``: {"config": resolved RunConfig dict, "tracking_uri", "run_id", and
    "run_storage": the run's checkpoint folder as the driver resolved it}."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for key, value in MLFLOW_CLIENT_ENV.items():
        os.environ.setdefault(key, value)
    cfg = RunConfig.model_validate(payload["config"])
    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    # On every device: Ray sets OMP_NUM_THREADS to the whole CPU request, which would leave no
    # core to the loader processes counted in it.
    torch.set_num_threads(cpu_split(cfg, accelerated=device.type != "cpu").torch_threads)
    ctx = WorkerContext(rank=context.get_world_rank(), world_size=context.get_world_size(),
                        device=device)
    store = (store_at(payload["run_storage"], cfg.cluster.storage_endpoint,
                      cfg.cluster.storage_region) if payload.get("run_storage")
             else run_store(cfg.cluster, cfg.name))
    fit(cfg, ctx, store, tracking_uri=payload.get("tracking_uri"), run_id=payload.get("run_id"))
