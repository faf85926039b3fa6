"""One pretraining job from Python: data -> MLflow run -> Ray Train -> export -> registry.

    from pretrain.config import load_config
    from pretrain.run import run
    summary = run(load_config("configs/quickstart.yaml"))
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pretrain.config.load import config_to_yaml, flatten
from pretrain.config.schema import RunConfig
from pretrain.data.prepare import prepare_data, prepare_probe_data
from pretrain.export import read_config
from pretrain.registry import VERSION_TAG, RegisteredEncoder, log_and_register
from pretrain.tracking import runs as tracking
from pretrain.tracking.metrics import UNSENT_FILE, read_unsent, send_missing
from pretrain.train import checkpoint as ckpt
from pretrain.train.plan import TrainingPlan, plan_training

log = logging.getLogger("pretrain.run")
REGISTERED_STEP_TAG = "pretrain.registered_step"


class JobStopped(Exception):
    """SIGTERM reached the driver: ``pretrain stop`` (Ray stops a job's entrypoint with it)."""


@contextlib.contextmanager
def sigterm_raises_job_stopped():
    """Turn SIGTERM into ``JobStopped`` while the block runs, so a stopped job still closes its
    MLflow run (as KILLED) instead of leaving it RUNNING. Only the main thread can install
    handlers; elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise JobStopped("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True)
class RunSummary:
    run_name: str
    run_id: str
    tracking_uri: str
    final_step: int
    plan: TrainingPlan
    encoder_dir: str | None
    registered: RegisteredEncoder | None
    seconds: float


def run(cfg: RunConfig, progress=None) -> RunSummary:
    """Train ``cfg`` (resuming a run of the same name), then export and register its encoder."""
    from cluster import trainer
    from cluster.worker import train_worker

    started = time.perf_counter()
    cfg = prepare_probe_data(prepare_data(cfg, progress=progress))
    plan = plan_training(cfg, cfg.cluster.num_workers)  # bad data fails here, before Ray starts
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    run_id, resumed = tracking.start_or_resume_run(
        tracking_uri, cfg.tracking.experiment, cfg.name, flatten(cfg), config_to_yaml(cfg))
    storage = trainer.storage_dir(cfg.cluster, cfg.name)
    tracking.set_tags(tracking_uri, run_id, {"pretrain.storage": storage,
                                             "pretrain.total_steps": str(plan.total_steps)})
    log.info("%s MLflow run %s (%s)", "resuming" if resumed else "started", run_id, tracking_uri)
    started_ray = trainer.connect(cfg.cluster)
    try:
        with sigterm_raises_job_stopped():
            result = trainer.fit(train_worker, {"config": cfg.model_dump(mode="json"),
                                                "tracking_uri": tracking_uri, "run_id": run_id},
                                 cluster=cfg.cluster, name=cfg.name,
                                 keep=cfg.checkpoint.keep)
            if result.checkpoint is None:
                raise RuntimeError(f"run {cfg.name} produced no checkpoint")
            with result.checkpoint.as_directory() as local:
                final_step, encoder_dir, registered = _finish(cfg, Path(local), tracking_uri,
                                                              run_id)
    except (JobStopped, KeyboardInterrupt):
        tracking.end_run(tracking_uri, run_id, status="KILLED")
        raise
    except BaseException:
        tracking.end_run(tracking_uri, run_id, status="FAILED")
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    tracking.end_run(tracking_uri, run_id)
    return RunSummary(run_name=cfg.name, run_id=run_id, tracking_uri=tracking_uri,
                      final_step=final_step, plan=plan, encoder_dir=encoder_dir,
                      registered=registered, seconds=time.perf_counter() - started)


def _finish(cfg: RunConfig, checkpoint_dir: Path, tracking_uri: str, run_id: str):
    """Probe the final encoder, then register it (once per final step of a run)."""
    state = ckpt.read_state(checkpoint_dir)
    # Metrics that a tracking outage kept from MLflow until the end travel in the checkpoint.
    send_missing(tracking_uri, run_id, read_unsent(checkpoint_dir / UNSENT_FILE))
    encoder_src = checkpoint_dir / ckpt.ENCODER_DIR
    read_config(encoder_src)
    registered = None
    if cfg.registry.enabled:
        registered = already_registered(tracking_uri, run_id, state.step, cfg.registry.alias)
    if registered is not None:
        return state.step, str(encoder_src), registered
    probe_metrics: dict[str, float] = {}
    if cfg.probes.enabled:  # before registration, so the version carries the results
        from pretrain.probes.hooks import end_of_run_probes

        log.info("running the probe suite on the final encoder")
        probe_metrics = end_of_run_probes(cfg.probes, encoder_src, tracking_uri, run_id,
                                          state.step)
    if cfg.registry.enabled:
        from pretrain.probes.hooks import summary_tags

        registered = log_and_register(
            tracking_uri, run_id, encoder_src, cfg.registry.name, cfg.registry.alias,
            tags={"objective": cfg.objective.name, "step": str(state.step),
                  "run_name": cfg.name, **summary_tags(probe_metrics)},
            description=f"{cfg.objective.name} encoder from run {cfg.name} at step {state.step}; "
                        "probe results in the version tags and the run's probes/ artifacts")
        tracking.set_tags(tracking_uri, run_id, {REGISTERED_STEP_TAG: str(state.step)})
    return state.step, str(encoder_src), registered


def already_registered(tracking_uri: str, run_id: str, step: int,
                       alias: str | None) -> RegisteredEncoder | None:
    """The version registered by an earlier invocation of this run at the same final step (a
    finished run re-run with the same name trains nothing and must not add a duplicate)."""
    from mlflow.tracking import MlflowClient

    tags = MlflowClient(tracking_uri).get_run(run_id).data.tags
    if tags.get(REGISTERED_STEP_TAG) != str(step) or VERSION_TAG not in tags:
        return None
    name, _, version = tags[VERSION_TAG].rpartition("/")
    uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
    return RegisteredEncoder(name=name, version=version, uri=uri)
