"""Finetuned classifiers on disk and in the Model Registry: safetensors + config.json, no pickle.

A classifier is a plain timm model with ``num_classes=C``; its files load with plain timm too:
``timm.create_model(config["architecture"], num_classes=C, checkpoint_path=".../model.safetensors")``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file
from torch import nn

from pretrain.export import CONFIG_NAME, WEIGHTS_NAME, ExportError, read_config, sha256_file
from pretrain.registry import LATEST_ALIAS, VERSION_TAG

CLASSIFIER_FORMAT = "invariant-pretrain-classifier/1"
CLASSIFIER_ARTIFACT = "classifier"


@dataclass(frozen=True)
class RegisteredClassifier:
    name: str
    version: str
    uri: str  # models:/NAME/VERSION


def write_classifier(model: nn.Module, out_dir: str | Path, *, architecture: str,
                     model_kwargs: dict[str, Any], num_classes: int, input_size: list[int],
                     mean: list[float], std: list[float], extra: dict[str, Any] | None = None
                     ) -> Path:
    """Write the classifier's weights (safetensors) and its description (``config.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    config = {"format": CLASSIFIER_FORMAT, "architecture": architecture,
              "model_kwargs": model_kwargs, "num_classes": num_classes,
              "input_size": list(input_size), "mean": list(mean), "std": list(std),
              **(extra or {}), "sha256": sha256_file(out / WEIGHTS_NAME)}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return out


def _load_dir(model_dir: Path) -> nn.Module:
    config = read_config(model_dir, verify=True)
    if config.get("format") != CLASSIFIER_FORMAT:
        raise ExportError(f"{model_dir}: not a classifier ({config.get('format')!r})")
    model = timm.create_model(config["architecture"], pretrained=False,
                              num_classes=int(config["num_classes"]),
                              **config.get("model_kwargs", {}))
    model.load_state_dict(load_file(str(model_dir / WEIGHTS_NAME)), strict=True)
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}),
                            "mean": tuple(config["mean"]), "std": tuple(config["std"]),
                            "input_size": tuple(config["input_size"]),
                            "num_classes": int(config["num_classes"])}
    return model.eval()


def load_classifier(source: str | Path, tracking_uri: str | None = None) -> nn.Module:
    """A finetuned classifier (timm model, eval mode) from a folder or an MLflow model URI."""
    from pretrain.hub import pull

    if isinstance(source, Path) or ":/" not in str(source):
        return _load_dir(Path(source))
    with tempfile.TemporaryDirectory() as tmp:
        return _load_dir(pull(str(source), tmp, tracking_uri=tracking_uri))


def register_classifier(tracking_uri: str, run_id: str, model_dir: str | Path, name: str,
                        alias: str | None = None, tags: dict[str, str] | None = None,
                        description: str | None = None) -> RegisteredClassifier:
    """Upload ``model_dir`` to ``runs:/<run_id>/classifier`` and register it as a new version of
    ``name``; the version's source is the artifact folder (no MLmodel flavour, no pickle)."""
    read_config(model_dir)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    client.log_artifacts(run_id, str(model_dir), CLASSIFIER_ARTIFACT)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{CLASSIFIER_ARTIFACT}"
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MLflow raises a generic error for a missing model
        client.create_registered_model(
            name, description="Classifiers finetuned from invariant-pretrain encoders")
    version = client.create_model_version(name, source, run_id=run_id, tags=tags or {},
                                          description=description)
    if alias and alias.lower() != LATEST_ALIAS:
        client.set_registered_model_alias(name, alias, version.version)
    client.set_tag(run_id, VERSION_TAG, f"{name}/{version.version}")
    return RegisteredClassifier(name, str(version.version), f"models:/{name}/{version.version}")
