"""Typed finetuning configuration: every default lives here; a YAML file and ``key=value``
overrides only change it, as for ``pretrain run``.

    from pretrain.config.finetune import FinetuneConfig, load_finetune_config
    cfg = FinetuneConfig(model_uri="models:/invariant-encoder@latest", data="data/labeled",
                         epochs=5)
    cfg = load_finetune_config("finetune.yaml", ["epochs=5", "linear_only=true"])

The keys are flat and named as ``pretrain finetune``'s options are (``--test-data`` is
``test_data``; ``--out`` is ``out_dir``), so a command line and a file say the same thing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pretrain.config.load import ConfigError, apply_overrides, describe_validation_error, read_yaml


class FinetuneConfig(BaseModel):
    """What to finetune, on which labelled shards, how, and where the result goes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model_uri: str = Field(
        min_length=1, description="Encoder: models:/NAME@ALIAS, models:/NAME/VERSION, "
        "runs:/RUN_ID/encoder or a folder with model.safetensors + config.json.")
    data: str = Field(
        min_length=1, description="Labelled shards: a folder (train-*/test-* files are split by "
        "name, else every 5th sample is test), a pattern, or a preset ('cifar10', 'synth3d').")
    test_data: str | None = Field(None, description="Separate test shards.")
    epochs: int = Field(1, ge=1, description="Passes over the train split.")
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate (cosine decay).")
    linear_only: bool = Field(False, description="Freeze the encoder; train only the head.")
    batch_size: int = Field(64, ge=1, description="Images per optimizer step.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    # At least 2, as the shard reader behind both splits (pretrain.probes.ProbesConfig) needs.
    max_train: int | None = Field(None, ge=2, description="Train images at most (None: all).")
    max_test: int | None = Field(None, ge=2, description="Test images at most (None: all).")
    image_size: int | None = Field(None, ge=8, description="Decoded image side (None: the "
                                   "first image's).")
    seed: int = Field(0, description="Seeds the new head, the shuffles and the flips.")
    device: str | None = Field(None, description="cpu, cuda, cuda:1 (None: cuda if available).")
    registry_name: str | None = Field("finetuned-classifier", min_length=1,
                                      description="Registered model name of the classifier "
                                      "(None: not registered).")
    alias: str | None = Field(None, description="Alias for the new model version.")
    out_dir: str | None = Field(None, description="Also keep the classifier files here.")
    experiment: str | None = Field(None, description="MLflow experiment (None: the source "
                                   "run's).")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (None: "
                                     "$MLFLOW_TRACKING_URI, else ./mlflow.db).")

    @field_validator("model_uri", "data", "test_data", "out_dir", mode="before")
    @classmethod
    def _paths_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value


def default_of(key: str) -> Any:
    """The code default of ``key`` (for help texts, so defaults are written once)."""
    return FinetuneConfig.model_fields[key].default


def load_finetune_config(path: str | Path | None = None, overrides: list[str] | None = None,
                         **values: Any) -> FinetuneConfig:
    """Code defaults, then the YAML file ``path``, then ``values`` (keyword settings, e.g. a
    command line's options), then ``key=value`` ``overrides``; validated. The first problem is a
    one-line ``ConfigError`` naming its key."""
    tree = read_yaml(path) if path is not None else {}
    tree.update(values)
    tree = apply_overrides(tree, list(overrides or []))
    try:
        return FinetuneConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
