"""Log an exported model folder to its MLflow run and register it in the Model Registry, with
the registry's own SHA-256 record of its files and a model card as the version's description."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from pretrain.models.folder import (
    ARTIFACT_PATH,
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    read_config,
    sha256_file,
)
from pretrain.models.loading import SHA256_TAGS

# MLflow reserves the alias "latest" (set_registered_model_alias refuses it) and resolves
# ``models:/NAME/latest`` to the newest version itself; ``pretrain.hub`` also accepts
# ``models:/NAME@latest`` and maps it there, so both spellings pull the newest encoder.
LATEST_ALIAS = "latest"
VERSION_TAG = "pretrain.model_version"
TOTAL_STEPS_TAG = "pretrain.total_steps"


@dataclass(frozen=True)
class RegisteredEncoder:
    name: str
    version: str
    uri: str  # models:/NAME@ALIAS when an alias was given, else models:/NAME/latest


# MLflow 3.17's UI chooses its GenAI or "Model training" view from this query parameter (else
# from a per-browser setting that defaults to GenAI); it does not read the experiment's
# ``mlflow.experimentKind`` tag, so links into the UI carry it.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page: absolute on an MLflow server (credentials stripped), else the MLflow UI's
    own route, which works inside the UI that shows the description."""
    route = f"#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"
    if tracking_uri.startswith(("http://", "https://")):
        from pretrain.trust.redact import strip_userinfo

        return f"{strip_userinfo(tracking_uri).rstrip('/')}/{route}"
    return route


def register_folder(tracking_uri: str, run_id: str, model_dir: str | Path, name: str, *,
                    artifact_path: str, model_description: str, alias: str | None = None,
                    tags: dict[str, str] | None = None, intro: str | None = None,
                    metrics: dict[str, float] | None = None) -> str:
    """Upload ``model_dir`` to ``runs:/<run_id>/<artifact_path>`` and register it as a new
    version of ``name``; returns the version. The version's source is the artifact folder itself
    (no MLmodel flavour, so pulling never unpickles). The version gets the files' SHA-256 as tags
    (``pretrain.models.loading.SHA256_TAGS``: what pulls are checked against) and the model card as its
    description; the card is also uploaded as the folder's ``README.md``. ``metrics`` default to
    the run's latest ``probe/...`` metrics."""
    from pretrain.models.card import CardFacts, model_card

    config = read_config(model_dir)  # refuse to register files that fail their checksum
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / artifact_path
        staged.mkdir()
        for file in (WEIGHTS_NAME, CONFIG_NAME):
            shutil.copyfile(Path(model_dir) / file, staged / file)
        hashes = {SHA256_TAGS[file]: sha256_file(staged / file)
                  for file in (WEIGHTS_NAME, CONFIG_NAME)}
        client.log_artifacts(run_id, str(staged), artifact_path)
        run = client.get_run(run_id)
        source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        try:
            client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - MLflow raises a generic error for a missing model
            client.create_registered_model(name, description=model_description)
        version = str(client.create_model_version(name, source, run_id=run_id,
                                                  tags={**(tags or {}), **hashes}).version)
        if metrics is None:
            metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("probe/")}
        card = model_card(CardFacts(
            name=name, version=version, config=config, metrics=metrics, run_id=run_id,
            run_name=run.info.run_name,
            run_link=run_link(tracking_uri, run.info.experiment_id, run_id),
            params=dict(run.data.params), total_steps=run.data.tags.get(TOTAL_STEPS_TAG),
            intro=intro))
        (staged / CARD_NAME).write_text(card)
        client.log_artifact(run_id, str(staged / CARD_NAME), artifact_path)
    client.update_model_version(name, version, description=card)
    if alias and alias.lower() != LATEST_ALIAS:
        client.set_registered_model_alias(name, alias, version)
    client.set_tag(run_id, VERSION_TAG, f"{name}/{version}")
    return version


def log_and_register(tracking_uri: str, run_id: str, encoder_dir: str | Path, name: str,
                     alias: str | None = None, tags: dict[str, str] | None = None,
                     description: str | None = None,
                     metrics: dict[str, float] | None = None) -> RegisteredEncoder:
    """Register ``encoder_dir`` as a new version of ``name`` (reachable as
    ``models:/NAME/latest``), with alias ``alias`` when given (see :func:`register_folder`).
    ``description``, when given, opens the model card."""
    version = register_folder(tracking_uri, run_id, encoder_dir, name,
                              artifact_path=ARTIFACT_PATH,
                              model_description="Encoders pretrained by invariant-pretrain",
                              alias=alias, tags=tags, intro=description, metrics=metrics)
    uri = f"models:/{name}@{alias}" if alias and alias.lower() != LATEST_ALIAS else \
        f"models:/{name}/{LATEST_ALIAS}"
    return RegisteredEncoder(name=name, version=version, uri=uri)
