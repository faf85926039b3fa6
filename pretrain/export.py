"""Encoder export: ``model.safetensors`` + ``config.json``, logged to MLflow and registered.

The files are exactly what plain timm reads: ``timm.create_model(name, num_classes=0,
checkpoint_path=".../model.safetensors")`` loads them too, and nothing here is pickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from pretrain.encoder import EncoderInfo

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
ARTIFACT_PATH = "encoder"
FORMAT = "invariant-pretrain-encoder/1"


class ExportError(RuntimeError):
    """The encoder files are missing, incomplete or fail their checksum."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_encoder(encoder: nn.Module, info: EncoderInfo, out_dir: str | Path, *,
                  objective: str, data: str, run_id: str | None, step: int | None = None,
                  extra: dict[str, Any] | None = None) -> Path:
    """Write the encoder's weights and its description; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    weights = out / WEIGHTS_NAME
    save_file(tensors, str(weights), metadata={"format": "pt"})
    config = {
        "format": FORMAT,
        "architecture": info.model,
        "model_kwargs": info.kwargs,
        "num_features": info.num_features,
        "input_size": [3, info.input_size, info.input_size],
        "mean": list(info.mean),
        "std": list(info.std),
        "objective": objective,
        "data": data,
        "run_id": run_id,
        "step": step,
        "sha256": sha256_file(weights),
        **(extra or {}),
    }
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return out


def read_config(model_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read ``config.json``; with ``verify`` check the weights' SHA-256 against it."""
    model_dir = Path(model_dir)
    config_path, weights = model_dir / CONFIG_NAME, model_dir / WEIGHTS_NAME
    if not config_path.is_file() or not weights.is_file():
        raise ExportError(f"{model_dir}: expected {CONFIG_NAME} and {WEIGHTS_NAME}")
    config = json.loads(config_path.read_text())
    if verify and sha256_file(weights) != config.get("sha256"):
        raise ExportError(f"{weights}: SHA-256 does not match {CONFIG_NAME} (corrupt download?)")
    return config


def encoder_info_dict(info: EncoderInfo) -> dict[str, Any]:
    return asdict(info)
