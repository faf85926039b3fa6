"""Build and run a Ray Train ``TorchTrainer`` for one job; resume and failure policy live here."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import ray
from ray.train import FailureConfig, RunConfig as RayRunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from cluster.storage import resolve_storage, run_store, run_uri
from pretrain.config.schema import ClusterConfig
from pretrain.tracking.metrics import UNSENT_FILE
from pretrain.train import checkpoint as ckpt
from pretrain.train.store import CheckpointRejected

log = logging.getLogger("pretrain.run")
# What the driver reads from the final checkpoint (state, carried metrics, encoder): verified
# against the manifest before it is used; the engine's files are the workers' business.
DRIVER_FILES = (ckpt.STATE_NAME, UNSENT_FILE, f"{ckpt.ENCODER_DIR}/")
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


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
        cluster: ClusterConfig, name: str) -> FitResult:
    """Run ``train_fn(payload)`` on ``cluster.num_workers`` Ray Train workers.

    Checkpoints go to ``<cluster.storage_path>/<name>`` (local or ``s3://``, see
    :mod:`cluster.storage`), written by the workers themselves with a hash manifest (see
    :mod:`pretrain.train.resume`), not registered with Ray Train: re-running with the same
    ``name`` resumes from the newest checkpoint on storage that verifies, and lost workers are
    replaced up to ``cluster.max_failures`` times, each time the same way. The result's
    checkpoint is the newest one whose driver-side files verify (None: there is none). The
    workers also prune old checkpoints, by the ``checkpoint.keep`` of their config."""
    use_gpu = resolve_use_gpu(cluster)
    storage = resolve_storage(cluster)
    drop_ray_snapshot(cluster, name)
    # The workers' working directory is Ray's, not the driver's: a relative storage path must
    # reach them resolved here, or they would write their checkpoints somewhere else.
    payload = {**payload, "run_storage": run_uri(cluster, name)}
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=payload,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        # The request covers the worker's loader processes too (pretrain.train.resources).
        scaling_config=ScalingConfig(num_workers=cluster.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cluster.cpus_per_worker}),
        run_config=RayRunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=storage.filesystem,
            failure_config=FailureConfig(max_failures=cluster.max_failures),
        ),
    )
    try:
        trainer.fit()
    except ray.train.WorkerGroupError as err:
        raise worker_cause(err) from err
    return FitResult(checkpoint=final_checkpoint(cluster, name),
                     storage_dir=storage_dir(cluster, name))


def drop_ray_snapshot(cluster: ClusterConfig, name: str) -> bool:
    """Delete Ray Train's checkpoint index left in the run folder by an older version of this
    project, which registered checkpoints with Ray: Ray refuses to start a run whose index names
    a folder that is gone (``CheckpointManagerInitializationError``), and pruning deletes such
    folders. Nothing is registered with Ray any more, so the file has no other use. Returns
    True when one was deleted."""
    store = run_store(cluster, name)
    path = store.path(RAY_SNAPSHOT)
    if store.filesystem.get_file_info(path).type != pafs.FileType.File:
        return False
    store.filesystem.delete_file(path)
    log.warning("deleted %s left by an older version (Ray Train no longer indexes checkpoints)",
                path)
    return True


def final_checkpoint(cluster: ClusterConfig, name: str) -> ray.train.Checkpoint | None:
    """The newest checkpoint of run ``name`` whose driver-side files verify, in storage."""
    store = run_store(cluster, name)

    def skipped(rejected: CheckpointRejected) -> None:
        log.warning("skipping checkpoint %s", rejected)

    with store.newest(DRIVER_FILES, on_skip=skipped) as found:
        if found is None:
            return None
        return ray.train.Checkpoint(path=store.path(found.name), filesystem=store.filesystem)
