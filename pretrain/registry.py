"""Log an exported encoder to its MLflow run and register it in the Model Registry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from pretrain.export import ARTIFACT_PATH, read_config

# MLflow reserves the alias "latest" (set_registered_model_alias refuses it) and resolves
# ``models:/NAME/latest`` to the newest version itself; ``pretrain.hub`` also accepts
# ``models:/NAME@latest`` and maps it there, so both spellings pull the newest encoder.
LATEST_ALIAS = "latest"
VERSION_TAG = "pretrain.model_version"


@dataclass(frozen=True)
class RegisteredEncoder:
    name: str
    version: str
    uri: str  # models:/NAME@ALIAS when an alias was given, else models:/NAME/latest


def log_and_register(tracking_uri: str, run_id: str, encoder_dir: str | Path, name: str,
                     alias: str | None = None, tags: dict[str, str] | None = None,
                     description: str | None = None) -> RegisteredEncoder:
    """Upload ``encoder_dir`` to ``runs:/<run_id>/encoder`` and register it as a new version of
    ``name`` (reachable as ``models:/NAME/latest``), with alias ``alias`` when given. The
    version's source is the artifact folder itself, not an MLmodel, so pulling it never needs a
    model flavour (and never unpickles)."""
    read_config(encoder_dir)  # refuse to register files that fail their checksum
    client = MlflowClient(tracking_uri)
    client.log_artifacts(run_id, str(encoder_dir), ARTIFACT_PATH)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name, description="Encoders pretrained by invariant-pretrain")
    version = client.create_model_version(name, source, run_id=run_id, tags=tags or {},
                                          description=description)
    if alias and alias.lower() != LATEST_ALIAS:
        client.set_registered_model_alias(name, alias, version.version)
    client.set_tag(run_id, VERSION_TAG, f"{name}/{version.version}")
    uri = f"models:/{name}@{alias}" if alias and alias.lower() != LATEST_ALIAS else \
        f"models:/{name}/{LATEST_ALIAS}"
    return RegisteredEncoder(name=name, version=str(version.version), uri=uri)
