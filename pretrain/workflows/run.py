"""One pretraining job from Python: data -> MLflow run -> Ray Train -> export -> registry.

    from pretrain.config import load_config
    from pretrain.workflows.run import run
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

from pretrain.config.compat import data_problem
from pretrain.config.load import ConfigError, config_to_yaml, flatten
from pretrain.trust.redact import redact_text
from pretrain.config.schema import RunConfig
from pretrain.data.errors import DataError
from pretrain.workflows.prepare_data import prepare_data, prepare_probe_data
from pretrain.models.folder import read_config
from pretrain.models.model_registry import VERSION_TAG, RegisteredEncoder, log_and_register
from pretrain.tracking import runs as tracking
from pretrain.tracking.context import ending_run
from pretrain.tracking.reachable import TrackingUnreachable, check_reachable
from pretrain.tracking.metrics import UNSENT_FILE, read_unsent, send_missing
from pretrain.train import checkpoint as ckpt
from pretrain.train.plan import TrainingPlan, plan_training

log = logging.getLogger("pretrain.run")
REGISTERED_STEP_TAG = "pretrain.registered_step"


class JobStopped(KeyboardInterrupt):
    """SIGTERM reached the driver: ``pretrain stop`` (Ray stops a job's entrypoint with it).

    A ``KeyboardInterrupt`` on purpose: while the driver waits inside ``ray.get`` (all of
    ``trainer.fit``), Ray turns only a ``KeyboardInterrupt`` raised by a signal handler into an
    exception of ``ray.get``; any other exception stays pending until the call returns, which
    for a stopped job is never (Ray sends SIGKILL 3 s later), so the run stayed RUNNING. Ray
    re-raises a plain ``KeyboardInterrupt``, hence :func:`stopped_by_sigterm`."""


class RunFailed(RuntimeError):
    """Training failed for a reason outside the config and data (a lost worker, a crash); the
    message is one line that says how to resume."""


_sigterm_seen = threading.Event()


def stopped_by_sigterm() -> bool:
    """Whether SIGTERM arrived inside :func:`sigterm_raises_job_stopped` in this process."""
    return _sigterm_seen.is_set()


@contextlib.contextmanager
def sigterm_raises_job_stopped():
    """Turn SIGTERM into ``JobStopped`` while the block runs, so a stopped job still closes its
    MLflow run (as KILLED) instead of leaving it RUNNING. Only the main thread can install
    handlers; elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        _sigterm_seen.set()
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


def run(cfg: RunConfig, progress=None, *, allow_config_change: bool = False) -> RunSummary:
    """Train ``cfg`` (resuming a run of the same name), then export and register its encoder.

    Everything a user can get wrong is checked before Ray starts and raises a one-line
    ``ConfigError``/``DataError``/``TrackingUnreachable``: the MLflow server answers, the data
    exists and suffices, objective/recipe/data fit together, and a resumed run keeps its config
    (``allow_config_change`` lifts that). A stopped run ends KILLED in MLflow, a failed one FAILED.
    """
    from cluster import trainer

    started = time.perf_counter()
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    check_reachable(tracking_uri)  # seconds, not MLflow's minutes of retries
    cfg = prepare_data(cfg, progress=progress)
    plan = plan_training(cfg, cfg.cluster.num_workers)  # bad data fails here, before Ray starts
    problem = data_problem(cfg, plan.urls[0])
    if problem is not None:
        raise ConfigError(problem)
    cfg = prepare_probe_data(cfg)
    with sigterm_raises_job_stopped():
        run_id, resumed = tracking.start_or_resume_run(
            tracking_uri, cfg.tracking.experiment, cfg.name, flatten(cfg), config_to_yaml(cfg),
            allow_config_change=allow_config_change)
        storage = trainer.storage_dir(cfg.cluster, cfg.name)
        tracking.set_tags(tracking_uri, run_id, {"pretrain.storage": storage,
                                                 "pretrain.total_steps": str(plan.total_steps)})
        log.info("%s MLflow run %s (%s)", "resuming" if resumed else "started", run_id,
                 redact_text(tracking_uri))
        final_step, encoder_dir, registered = _train_and_finish(cfg, tracking_uri, run_id)
    return RunSummary(run_name=cfg.name, run_id=run_id, tracking_uri=tracking_uri,
                      final_step=final_step, plan=plan, encoder_dir=encoder_dir,
                      registered=registered, seconds=time.perf_counter() - started)


def _train_and_finish(cfg: RunConfig, tracking_uri: str, run_id: str):
    """Ray Train, then :func:`_finish`; the MLflow run ends FINISHED, or KILLED or FAILED when
    that fails (:func:`pretrain.tracking.context.ending_run`)."""
    from cluster import trainer
    from cluster.worker import train_worker

    started_ray = False
    try:
        # The run's status is set first, while Ray may still give us 3 s: it must not stay RUNNING.
        with ending_run(tracking_uri, run_id):
            started_ray = trainer.connect(cfg.cluster)
            # ray.init installs its own SIGTERM handler (it logs and aborts): ours goes on top.
            with sigterm_raises_job_stopped():
                result = trainer.fit(train_worker, {"config": cfg.model_dump(mode="json"),
                                                    "tracking_uri": tracking_uri,
                                                    "run_id": run_id},
                                     cluster=cfg.cluster, name=cfg.name)
            if result.checkpoint is None:
                raise RuntimeError(f"run {cfg.name} produced no checkpoint")
            with result.checkpoint.as_directory() as local:
                return _finish(cfg, Path(local), tracking_uri, run_id)
    except KeyboardInterrupt:
        if stopped_by_sigterm():
            raise JobStopped(f"run {cfg.name} stopped; {resume_hint(cfg)}") from None
        raise
    except (ConfigError, DataError, TrackingUnreachable):
        raise
    except Exception as exc:
        raise RunFailed(f"run {cfg.name} failed: {_first_line(exc)}; {resume_hint(cfg)}"
                        ) from exc
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def resume_hint(cfg: RunConfig) -> str:
    """How to continue a run that stopped: the same name resumes from its last checkpoint."""
    from cluster.storage import run_uri

    return (f"re-run with the same config (name={cfg.name}) to resume from its last checkpoint "
            f"in {redact_text(run_uri(cfg.cluster, cfg.name))}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


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
        from pretrain.workflows.probe import end_of_run_probes

        log.info("running the probe suite on the final encoder")
        probe_metrics = end_of_run_probes(cfg.probes, encoder_src, tracking_uri, run_id,
                                          state.step)
    if cfg.registry.enabled:
        from pretrain.probes.profile import headline_tags

        registered = log_and_register(
            tracking_uri, run_id, encoder_src, cfg.registry.name, cfg.registry.alias,
            tags={"objective": cfg.objective.name, "step": str(state.step),
                  "run_name": cfg.name, **headline_tags(probe_metrics)},
            metrics=probe_metrics)  # the version's description is the model card
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
