"""One pretraining job from Python: data -> MLflow run -> Ray Train -> export -> registry.

    from pretrain.config import load_config
    from pretrain.run import run
    summary = run(load_config("configs/quickstart.yaml"))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pretrain.config.load import config_to_yaml, flatten
from pretrain.config.schema import RunConfig
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


def prepare_data(cfg: RunConfig, progress=None) -> RunConfig:
    """With ``data.path`` unset, generate the synthetic 3D set (once per distinct setting) under
    ``data.cache_dir`` and return a config pointing at it."""
    if cfg.data.path is not None:
        return cfg
    from pretrain.data.synth3d import ensure_synth3d

    settings = cfg.data.synth3d.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    out = Path(cfg.data.cache_dir).resolve() / f"synth3d-{digest}"
    ensure_synth3d(cfg.data.synth3d, out, progress=progress)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": str(out)})})


def prepare_probe_data(cfg: RunConfig) -> RunConfig:
    """Pin ``probes.cache_dir`` to an absolute path (a relative one would resolve in each Ray
    worker's own temporary working directory, so nothing would ever be reused) and render the
    synthetic 3D probe set now, on the driver, when the probes will use it: training time then
    never includes rendering it."""
    from pretrain.data.synth3d import ensure_synth3d
    from pretrain.probes.probeset import synth3d_probe_dir

    probes = cfg.probes.model_copy(update={"cache_dir": str(Path(cfg.probes.cache_dir).resolve())})
    if probes.data == "synth3d" and (probes.enabled or probes.every_steps > 0):
        out, gen = synth3d_probe_dir(probes)
        ensure_synth3d(gen, out)
    return cfg.model_copy(update={"probes": probes})


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
