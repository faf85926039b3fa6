"""Exported models on disk: a folder that timm opens by itself, and that we read without pickle.

    enc/
      model.safetensors   the state dict (safetensors: tensors only, nothing to unpickle)
      config.json         timm's Hugging Face Hub format, plus our provenance under one key
      README.md           the model card (written at registration)

``config.json`` is what ``timm.create_model("local-dir:enc/", pretrained=True)`` and
``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` read: ``architecture``,
``num_classes``, ``num_features``, ``model_args`` (keyword arguments of the architecture) and
``pretrained_cfg`` (input size, mean, std, interpolation, classifier name). timm ignores
top-level keys it does not know, so the project's provenance (format, objective, data spec and
fingerprint, run id, step, SHA-256 of the weights, encoder stem) lives under
``"invariant_pretrain"``. The folder can be uploaded to a model hub as it is.

Encoders are exported with ``num_classes=0``; finetuned classifiers (``pretrain.models.classifier``)
with their head and ``label_names``. Folders in the first format (``invariant-pretrain-encoder/1``,
our own schema) are still read.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from pretrain.models.encoder import EncoderInfo

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
ARTIFACT_PATH = "encoder"
PROVENANCE_KEY = "invariant_pretrain"
FORMAT = "invariant-pretrain-encoder/2"
LEGACY_FORMATS = ("invariant-pretrain-encoder/1", "invariant-pretrain-classifier/1")

# Keyword arguments a pulled config.json may pass to ``timm.create_model``: architecture shape
# only. Anything else (``pretrained_cfg_overlay``, ``checkpoint_path``, ``cache_dir``,
# ``pretrained``...) could point timm at a file of the attacker's choosing, so it is refused.
ALLOWED_MODEL_ARGS = frozenset({
    "in_chans", "global_pool", "drop_rate", "drop_path_rate", "drop_block_rate",
    "proj_drop_rate", "attn_drop_rate", "pos_drop_rate", "patch_drop_rate", "output_stride",
    "img_size", "patch_size", "embed_dim", "depth", "depths", "num_heads", "mlp_ratio",
    "qkv_bias", "qk_norm", "class_token", "no_embed_class", "reg_tokens", "pos_embed",
    "dynamic_img_size", "dynamic_img_pad", "init_values", "fc_norm", "window_size",
    "stem_type", "stem_width", "stem_chs", "block_reduce_first", "down_kernel_size", "avg_down",
    "zero_init_last", "cardinality", "base_width", "layers", "channels", "widths",
    "embed_dims", "width_multiplier", "channel_multiplier", "act_layer", "norm_layer",
    "head_hidden_size", "head_norm_first", "conv_mlp", "ls_init_value", "kernel_sizes",
})
# String values must be names (``avg``, ``gelu``, ``deep``), never paths or URLs.
_NAME_VALUE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class ExportError(RuntimeError):
    """The model files are missing, incomplete, fail their checksum or ask for something unsafe."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelConfig:
    """An exported folder's ``config.json``, parsed: what to build and where it came from."""

    architecture: str
    model_args: dict[str, Any]
    num_classes: int
    num_features: int | None
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stem: str = "timm"
    label_names: list[str] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str | None:
        return self.provenance.get("sha256")

    @property
    def run_id(self) -> str | None:
        return self.provenance.get("run_id")


def check_model_args(model_args: Any, where: str = CONFIG_NAME) -> dict[str, Any]:
    """``model_args`` if every key is allow-listed and every value a number, bool, name or a list
    of those; otherwise ``ExportError`` naming the key."""
    if not isinstance(model_args, dict):
        raise ExportError(f"{where}: model_args must be a mapping")
    for key, value in model_args.items():
        if key not in ALLOWED_MODEL_ARGS:
            raise ExportError(f"{where}: model_args key {key!r} is not allowed (allowed: "
                              "architecture arguments such as in_chans, global_pool, drop_rate)")
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, str) and not _NAME_VALUE.match(item):
                raise ExportError(f"{where}: model_args {key!r} must be a name, not {item!r}")
            if not isinstance(item, (str, int, float, bool, type(None))):
                raise ExportError(f"{where}: model_args {key!r} has an unsupported value")
    return dict(model_args)


def timm_config(model: nn.Module, *, architecture: str, model_args: dict[str, Any],
                num_classes: int, num_features: int | None, input_size: int | list[int],
                mean: tuple[float, ...] | list[float], std: tuple[float, ...] | list[float],
                label_names: list[str] | None, provenance: dict[str, Any]) -> dict[str, Any]:
    """The ``config.json`` dictionary in timm's Hub format.

    ``pretrained_cfg`` keeps only the architecture's own facts from timm's default entry
    (classifier and first-conv names, interpolation, crop mode) and replaces the rest: the input
    size and normalisation the encoder was trained with, ``crop_pct`` 1 (training used whole
    images, so timm's eval transform must not centre-crop them), and no source URL or hub id
    (these weights come from this folder, not from timm's ImageNet release)."""
    default = dict(getattr(model, "pretrained_cfg", None) or {})
    size = list(input_size) if isinstance(input_size, (list, tuple)) else [3, input_size,
                                                                            input_size]
    pretrained_cfg = {k: default[k] for k in ("classifier", "first_conv", "interpolation",
                                              "crop_mode", "fixed_input_size") if k in default}
    pretrained_cfg |= {"input_size": size, "crop_pct": 1.0, "mean": list(mean),
                       "std": list(std), "num_classes": num_classes}
    config = {"architecture": architecture, "num_classes": num_classes,
              "num_features": num_features, "model_args": dict(model_args),
              "pretrained_cfg": pretrained_cfg}
    if label_names:
        config["label_names"] = list(label_names)
    config[PROVENANCE_KEY] = provenance
    return config


def write_model_files(model: nn.Module, out_dir: str | Path, config: dict[str, Any]) -> Path:
    """Write ``model``'s state dict and ``config`` (from :func:`timm_config`, its provenance
    completed with the weights' SHA-256) into ``out_dir``; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = out / WEIGHTS_NAME
    save_file(tensors, str(weights), metadata={"format": "pt"})
    config[PROVENANCE_KEY] = {**config[PROVENANCE_KEY], "sha256": sha256_file(weights)}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return out


def write_encoder(encoder: nn.Module, info: EncoderInfo, out_dir: str | Path, *,
                  objective: str, data: str, run_id: str | None, step: int | None = None,
                  extra: dict[str, Any] | None = None) -> Path:
    """Write the encoder's weights and its timm-native description; returns ``out_dir``.

    ``data`` is the shard source trained on; the folder records its portable spec and
    fingerprint (``pretrain.models.provenance``), never the training machine's path."""
    from pretrain.models.provenance import data_provenance

    provenance = {"format": FORMAT, "kind": "encoder", "objective": objective,
                  "data": data_provenance(data), "run_id": run_id, "step": step,
                  "stem": getattr(info, "stem", "timm"), **(extra or {})}
    config = timm_config(encoder, architecture=info.model, model_args=info.kwargs,
                         num_classes=0, num_features=info.num_features,
                         input_size=info.input_size, mean=info.mean, std=info.std,
                         label_names=None, provenance=provenance)
    return write_model_files(encoder, out_dir, config)


def parse_config(raw: Any, where: str = CONFIG_NAME) -> ModelConfig:
    """A ``config.json`` (this format or the legacy one) as a :class:`ModelConfig`; anything
    malformed or unsafe is an ``ExportError`` naming the problem."""
    if not isinstance(raw, dict):
        raise ExportError(f"{where}: not a JSON object")
    try:
        if "pretrained_cfg" in raw:
            cfg = raw["pretrained_cfg"]
            provenance = dict(raw.get(PROVENANCE_KEY) or {})
            return ModelConfig(
                architecture=str(raw["architecture"]),
                model_args=check_model_args(raw.get("model_args", {}), where),
                num_classes=int(raw.get("num_classes", cfg.get("num_classes", 0))),
                num_features=raw.get("num_features"),
                input_size=tuple(int(v) for v in cfg["input_size"]),
                mean=tuple(float(v) for v in cfg["mean"]),
                std=tuple(float(v) for v in cfg["std"]),
                stem=str(provenance.get("stem", "timm")),
                label_names=raw.get("label_names") or cfg.get("label_names"),
                provenance=provenance)
        if raw.get("format") in LEGACY_FORMATS:
            known = {"architecture", "model_kwargs", "num_classes", "num_features", "input_size",
                     "mean", "std", "classes", "format"}
            return ModelConfig(
                architecture=str(raw["architecture"]),
                model_args=check_model_args(raw.get("model_kwargs", {}), where),
                num_classes=int(raw.get("num_classes", 0)), num_features=raw.get("num_features"),
                input_size=tuple(int(v) for v in raw["input_size"]),
                mean=tuple(float(v) for v in raw["mean"]),
                std=tuple(float(v) for v in raw["std"]),
                label_names=raw.get("classes"),
                provenance={"format": raw["format"],
                            **{k: v for k, v in raw.items() if k not in known}})
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{where}: malformed ({type(exc).__name__}: {exc})") from None
    raise ExportError(f"{where}: not a timm model config (no 'pretrained_cfg')")


def read_config(model_dir: str | Path, verify: bool = True) -> ModelConfig:
    """Read ``config.json``; with ``verify`` check the weights' SHA-256 against it."""
    model_dir = Path(model_dir)
    config_path, weights = model_dir / CONFIG_NAME, model_dir / WEIGHTS_NAME
    if not config_path.is_file() or not weights.is_file():
        raise ExportError(f"{model_dir}: expected {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{config_path}: not readable JSON ({exc})") from None
    config = parse_config(raw, str(config_path))
    if verify and sha256_file(weights) != config.sha256:
        raise ExportError(f"{weights}: SHA-256 does not match {CONFIG_NAME} (corrupt download?)")
    return config
