"""Finetuned classifiers on disk and in the Model Registry: the same timm-native folder as an
encoder (``pretrain.models.folder``), with ``num_classes=C`` and ``label_names``; no pickle anywhere.

Plain timm opens it too: ``timm.create_model("local-dir:clf/", pretrained=True)``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pretrain.models.folder import ExportError, ModelConfig, timm_config, write_model_files
from pretrain.models.model_registry import register_folder

CLASSIFIER_FORMAT = "invariant-pretrain-classifier/2"
CLASSIFIER_ARTIFACT = "classifier"


@dataclass(frozen=True)
class RegisteredClassifier:
    name: str
    version: str
    uri: str  # models:/NAME/VERSION


def write_classifier(model: nn.Module, out_dir: str | Path, *, encoder: ModelConfig,
                     num_classes: int, label_names: list[str] | None = None,
                     extra: dict[str, Any] | None = None) -> Path:
    """Write the classifier built on ``encoder`` (weights + timm-native ``config.json``); its
    provenance keeps the encoder's objective and data next to ``extra``."""
    inherited = {k: encoder.provenance[k] for k in ("objective", "data", "step")
                 if k in encoder.provenance}
    provenance = {"format": CLASSIFIER_FORMAT, "kind": "classifier", **inherited,
                  "stem": encoder.stem, **(extra or {})}
    config = timm_config(model, architecture=encoder.architecture,
                         model_args=encoder.model_args, num_classes=num_classes,
                         num_features=encoder.num_features, input_size=list(encoder.input_size),
                         mean=encoder.mean, std=encoder.std, label_names=label_names,
                         provenance=provenance)
    return write_model_files(model, out_dir, config)


def _load_dir(model_dir: Path) -> nn.Module:
    from pretrain.models.loading import load_model_dir

    model = load_model_dir(model_dir)
    if getattr(model, "num_classes", 0) == 0:
        raise ExportError(f"{model_dir}: an encoder, not a classifier (no classes)")
    return model


def load_classifier(source: str | Path, tracking_uri: str | None = None) -> nn.Module:
    """A finetuned classifier (timm model, eval mode) from a folder or an MLflow model URI."""
    from pretrain.models.loading import pull

    if isinstance(source, Path) or ":/" not in str(source):
        return _load_dir(Path(source))
    with tempfile.TemporaryDirectory() as tmp:
        return _load_dir(pull(str(source), Path(tmp) / "model", tracking_uri=tracking_uri))


def register_classifier(tracking_uri: str, run_id: str, model_dir: str | Path, name: str,
                        alias: str | None = None, tags: dict[str, str] | None = None,
                        description: str | None = None) -> RegisteredClassifier:
    """Upload ``model_dir`` to ``runs:/<run_id>/classifier`` and register it as a new version of
    ``name`` (SHA-256 tags and model card as for encoders: ``pretrain.models.model_registry``)."""
    version = register_folder(
        tracking_uri, run_id, model_dir, name, artifact_path=CLASSIFIER_ARTIFACT,
        model_description="Classifiers finetuned from invariant-pretrain encoders", alias=alias,
        tags=tags, intro=description, metrics={})
    return RegisteredClassifier(name, version, f"models:/{name}/{version}")
