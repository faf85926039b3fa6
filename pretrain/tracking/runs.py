"""Driver-side MLflow: resolve the store, and create or find the one run of a job (which
:func:`pretrain.tracking.context.ending_run` closes)."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

from pretrain.config.load import ConfigError
from pretrain.config.objective import renamed_params

RUN_NAME_TAG = "pretrain.run_name"
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
# Config keys a resumed run may change without --allow-config-change: they decide what is
# logged, probed, kept or registered, when this invocation stops, or the workers' resources, but
# not what the trained weights are (the data order does not follow data.num_workers on resume:
# the checkpoint keeps the loader count the run started with).
RESUMABLE_CHANGES = ("train.max_steps", "tracking.", "probes.", "registry.",
                     "data.max_skip_frac", "checkpoint.keep", "cluster.address",
                     "cluster.max_failures", "cluster.cpus_per_worker", "cluster.torch_threads",
                     "data.num_workers")
CONFIG_CHANGE_FLAG = "--allow-config-change"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


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
    """The id of experiment ``name``, created if missing. It is tagged as a model-training
    experiment (``mlflow.experimentKind``, read by the MLflow UI), so the UI opens it in its
    "Model training" view rather than the GenAI one; an experiment without a kind, or with one
    the UI only inferred, gets the tag too, and a kind set on purpose is left alone."""
    kind_tag, kind = "mlflow.experimentKind", "custom_model_development"
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        current = (experiment.tags or {}).get(kind_tag, "")
        if current in ("", "no_inferred_type") or current.endswith("_inferred"):
            client.set_experiment_tag(experiment.experiment_id, kind_tag, kind)
        return experiment.experiment_id
    store = local_store_paths(tracking_uri)
    artifact_location = store[1].as_uri() if store else None
    return client.create_experiment(name, artifact_location=artifact_location,
                                    tags={kind_tag: kind})


def find_run_by_name(client: MlflowClient, experiment_id: str, run_name: str):
    """The newest run of this experiment tagged with ``run_name``, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def config_changes(stored: dict[str, str], params: dict[str, str]) -> dict[str, tuple[str, str]]:
    """``key: (stored, new)`` for every key present in both whose value differs (keys that only
    one side has, such as settings added to the code since, are not compared). Generated
    synthetic data is the same data wherever its cache folder is (its folder name is the digest
    of its settings, which are compared themselves): a job re-run from another working directory
    or Ray session resolves ``data.path`` elsewhere. Stored keys renamed since compare under
    their new names (:func:`pretrain.config.objective.renamed_params`)."""
    stored = renamed_params(stored)
    changes = {}
    for key, value in params.items():
        old, new = stored.get(key), value[:MAX_PARAM_CHARS]
        if old is None or old == new:
            continue
        if key == "data.path" and _generated_set(old) and _generated_set(old) == _generated_set(new):
            continue
        changes[key] = (old, new)
    return changes


def _generated_set(path: str) -> str | None:
    name = Path(path).name
    return name if name.startswith("synth3d-") else None


def refused_changes(changes: dict[str, tuple[str, str]]) -> list[str]:
    """The changed keys that resuming does not allow (see ``RESUMABLE_CHANGES``)."""
    return sorted(key for key in changes
                  if not any(key == allowed or (allowed.endswith(".") and key.startswith(allowed))
                             for allowed in RESUMABLE_CHANGES))


def _describe(changes: dict[str, tuple[str, str]], keys: list[str], limit: int = 4) -> str:
    shown = [f"{key} ({changes[key][0][:40]} -> {changes[key][1][:40]})" for key in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def start_or_resume_run(tracking_uri: str, experiment: str, run_name: str,
                        params: dict[str, str], config_yaml: str,
                        allow_config_change: bool = False) -> tuple[str, bool]:
    """Return (run_id, resumed). A new run gets the flattened config as params and the resolved
    config as ``config.yaml``; a run with the same name is reused so a resumed job keeps one run.

    Resuming compares ``params`` with the stored ones: a change outside ``RESUMABLE_CHANGES``
    would mix two configs in one run (its params would describe the first one), so it raises a
    ``ConfigError`` naming the keys, unless ``allow_config_change``. ``params`` are compared as
    stored, i.e. redacted."""
    client = MlflowClient(tracking_uri)
    experiment_id = ensure_experiment(client, experiment, tracking_uri)
    existing = find_run_by_name(client, experiment_id, run_name)
    if existing is not None:
        changes = config_changes(existing.data.params, params)
        refused = refused_changes(changes)
        if refused and not allow_config_change:
            raise ConfigError(
                f"run {run_name!r} already exists with another config: "
                f"{_describe(changes, refused)};"
                f" resuming it would mix two configs in one run. Use another name, or pass "
                f"{CONFIG_CHANGE_FLAG} to resume anyway")
        if changes:
            client.set_tag(existing.info.run_id, "pretrain.config_changed",
                           _describe(changes, sorted(changes), limit=20)[:5000])
        if existing.info.status != "RUNNING":
            client.update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id, True
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name})
    run_id = run.info.run_id
    items = [Param(k, v[:MAX_PARAM_CHARS]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=items[start:start + 100])
    client.log_text(run_id, config_yaml, "config.yaml")
    return run_id, False


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    MlflowClient(tracking_uri).log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def ui_command(tracking_uri: str) -> str:
    """The shell command that opens the MLflow UI on this store."""
    store = local_store_paths(tracking_uri)
    if store is None:
        return f"open {tracking_uri} in a browser"
    db, artifacts = store
    return (f"mlflow ui --backend-store-uri sqlite:///{db} "
            f"--default-artifact-root {artifacts.as_uri()} --port 5000")


__all__ = ["RUN_NAME_TAG",
           "ensure_experiment", "find_run_by_name", "local_store_paths",
           "resolve_tracking_uri", "set_tags", "start_or_resume_run", "ui_command", "mlflow"]
