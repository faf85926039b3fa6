"""Build and run a Ray Train ``TorchTrainer`` for one job; resume and failure policy live here."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig as RayRunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from cluster.storage import resolve_storage, run_uri
from pretrain.config.schema import ClusterConfig


@dataclass(frozen=True)
class FitResult:
    checkpoint: ray.train.Checkpoint | None
    storage_dir: str


def connect(cluster: ClusterConfig) -> bool:
    """Join ``cluster.address`` (or ``$RAY_ADDRESS``), else start an embedded local Ray sized for
    the requested workers. Returns True when this call started Ray (the caller shuts it down)."""
    if ray.is_initialized():
        return False
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        needed = cluster.num_workers * cluster.cpus_per_worker
        # The dashboard serves the State API that Ray Train's controller polls; without it the
        # controller logs a warning every few seconds.
        ray.init(num_cpus=max(needed, os.cpu_count() or 1), include_dashboard=True,
                 dashboard_host="127.0.0.1",
                 log_to_driver=True, configure_logging=False)
    return True


def resolve_use_gpu(cluster: ClusterConfig) -> bool:
    if cluster.use_gpu is not None:
        return cluster.use_gpu
    return ray.cluster_resources().get("GPU", 0) > 0


def storage_dir(cluster: ClusterConfig, name: str) -> str:
    """Where a run's checkpoints live: ``<storage_path>/<name>`` (local paths made absolute)."""
    return run_uri(cluster, name)


def worker_cause(err: ray.train.WorkerGroupError) -> BaseException:
    """The lowest rank's original exception (e.g. a DataError naming a shard), so callers can
    report it as such instead of as Ray's multi-line wrapper; the wrapper itself otherwise."""
    for rank in sorted(err.worker_failures):
        failure = err.worker_failures[rank]
        cause = getattr(failure, "cause", None)
        return cause if isinstance(cause, BaseException) else failure
    return err


def fit(train_fn: Callable[[dict[str, Any]], None], payload: dict[str, Any], *,
        cluster: ClusterConfig, name: str, keep: int) -> FitResult:
    """Run ``train_fn(payload)`` on ``cluster.num_workers`` Ray Train workers.

    Re-running with the same ``name`` and storage resumes from the latest checkpoint (Ray Train
    restores its checkpoint manager from storage); lost workers are replaced up to
    ``cluster.max_failures`` times, each time from the latest checkpoint. Checkpoints go to
    ``cluster.storage_path`` (local or ``s3://``, see :mod:`cluster.storage`)."""
    use_gpu = resolve_use_gpu(cluster)
    storage = resolve_storage(cluster)
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=payload,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cluster.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cluster.cpus_per_worker}),
        run_config=RayRunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=storage.filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=keep),
            failure_config=FailureConfig(max_failures=cluster.max_failures),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.WorkerGroupError as err:
        raise worker_cause(err) from err
    return FitResult(checkpoint=result.checkpoint, storage_dir=storage_dir(cluster, name))
