"""Driver-side MLflow: resolve the store, and create or find the one run of a job."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

RUN_NAME_TAG = "pretrain.run_name"
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


def resolve_tracking_uri(configured: str | None, workdir: str | Path | None = None) -> str:
    """``tracking.uri`` if set, else ``$MLFLOW_TRACKING_URI``, else a SQLite store in ``workdir``
    (the Model Registry needs a database, so the plain file store is not enough)."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = Path(workdir or Path.cwd()).resolve() / DEFAULT_DB
    return f"sqlite:///{db}"


def local_store_paths(tracking_uri: str) -> tuple[Path, Path] | None:
    """(database file, artifact folder) for a local SQLite store; None for servers."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    return db, db.parent / DEFAULT_ARTIFACTS


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    store = local_store_paths(tracking_uri)
    artifact_location = store[1].as_uri() if store else None
    return client.create_experiment(name, artifact_location=artifact_location)


def find_run_by_name(client: MlflowClient, experiment_id: str, run_name: str):
    """The newest run of this experiment tagged with ``run_name``, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def start_or_resume_run(tracking_uri: str, experiment: str, run_name: str,
                        params: dict[str, str], config_yaml: str) -> tuple[str, bool]:
    """Return (run_id, resumed). A new run gets the flattened config as params and the resolved
    config as ``config.yaml``; a run with the same name is reused so a resumed job keeps one run."""
    client = MlflowClient(tracking_uri)
    experiment_id = ensure_experiment(client, experiment, tracking_uri)
    existing = find_run_by_name(client, experiment_id, run_name)
    if existing is not None:
        if existing.info.status != "RUNNING":
            client.update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id, True
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name})
    run_id = run.info.run_id
    items = [Param(k, v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=items[start:start + 100])
    client.log_text(run_id, config_yaml, "config.yaml")
    return run_id, False


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    MlflowClient(tracking_uri).log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    MlflowClient(tracking_uri).set_terminated(run_id, status=status)


def ui_command(tracking_uri: str) -> str:
    """The shell command that opens the MLflow UI on this store."""
    store = local_store_paths(tracking_uri)
    if store is None:
        return f"open {tracking_uri} in a browser"
    db, artifacts = store
    return (f"mlflow ui --backend-store-uri sqlite:///{db} "
            f"--default-artifact-root {artifacts.as_uri()} --port 5000")


__all__ = ["RUN_NAME_TAG", "end_run", "ensure_experiment", "find_run_by_name", "local_store_paths",
           "resolve_tracking_uri", "set_tags", "start_or_resume_run", "ui_command", "mlflow"]
