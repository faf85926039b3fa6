"""Pulling registered models and loading exported folders, without unpickling anything.

The implementation behind the public door ``pretrain.hub``; modules inside the package import it
from here, users from ``pretrain.hub``.

What is trusted: the Model Registry's record of each version (its SHA-256 tags), not the
artifact store the files come from. A ``models:/`` pull checks every file against the
registry's record, then against ``config.json``'s own checksum, and only then moves the files
into place; a failed pull leaves the folder as it was. Weights are read with safetensors only,
and a pulled ``config.json`` may pass only allow-listed architecture arguments to timm.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import timm
from safetensors.torch import load_file
from torch import nn

from pretrain.models.folder import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    ExportError,
    ModelConfig,
    read_config,
    sha256_file,
)

# Model-version tags holding the SHA-256 of each file, written at registration
# (``pretrain.models.model_registry``); the weights' tag is required, the config's too for new versions.
SHA256_TAGS = {WEIGHTS_NAME: "pretrain.sha256", CONFIG_NAME: "pretrain.sha256.config"}
# Files a pull copies (never anything else an artifact folder may hold, such as a planted
# ``pytorch_model.bin`` that timm's ``local-dir:`` loader would otherwise consider).
PULLED_FILES = (WEIGHTS_NAME, CARD_NAME, CONFIG_NAME)


@dataclass(frozen=True)
class Resolved:
    """Where a model URI's files are, and what the registry expects them to hash to."""

    source: str
    expected: dict[str, str]  # file name -> SHA-256; empty for runs:/ and other plain URIs
    version: object | None = None  # mlflow ModelVersion for models:/ URIs


def model_version(client, model_uri: str):
    """The ModelVersion behind ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or
    ``models:/NAME/latest`` (MLflow reserves the alias ``latest``, so ``@latest`` means the
    newest version). An unknown model, version or alias is an ``ExportError``."""
    from mlflow.exceptions import MlflowException

    rest = model_uri.removeprefix("models:/").rstrip("/")
    try:
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            if alias.lower() != "latest":
                return client.get_model_version_by_alias(name, alias)
            rest = f"{name}/latest"
        name, _, version = rest.rpartition("/")
        if not name or not version:
            raise ExportError(f"{model_uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        if version.lower() == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise ExportError(f"{model_uri}: no versions of registered model {name!r}")
            return max(versions, key=lambda v: int(v.version))
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            first = str(exc.message).strip().splitlines()[0] if exc.message else exc.error_code
            raise ExportError(f"{model_uri}: no such model version or alias ({first})") from None
        raise


def resolve(model_uri: str, tracking_uri: str) -> Resolved:
    """The artifact URI behind a model URI and the registry's SHA-256 record for it; other URIs
    (``runs:/``, ``s3://``, ...) are returned as they are, with no record."""
    if not model_uri.startswith("models:/"):
        return Resolved(model_uri, {})
    from mlflow.tracking import MlflowClient

    mv = model_version(MlflowClient(tracking_uri, registry_uri=tracking_uri), model_uri)
    tags = mv.tags or {}
    if SHA256_TAGS[WEIGHTS_NAME] not in tags:
        raise ExportError(f"{model_uri} (version {mv.version}) has no SHA-256 record in the "
                          "registry; register it again (pretrain export RUN_ID) to load it")
    expected = {name: tags[tag] for name, tag in SHA256_TAGS.items() if tag in tags}
    return Resolved(mv.source, expected, mv)


def verify_against(model_dir: Path, expected: dict[str, str], what: str) -> None:
    """Every file named in ``expected`` exists in ``model_dir`` with that SHA-256."""
    for name, digest in expected.items():
        path = model_dir / name
        if not path.is_file():
            raise ExportError(f"{what}: {name} is missing")
        if sha256_file(path) != digest:
            raise ExportError(f"{what}: {name} SHA-256 does not match the registry's record "
                              "(files replaced in the artifact store?)")


def pull(model_uri: str, out_dir: str | Path, tracking_uri: str | None = None) -> Path:
    """Download ``model.safetensors``, ``config.json`` and ``README.md`` of ``models:/NAME@ALIAS``
    (or ``models:/NAME/VERSION``, ``runs:/ID/encoder``) into ``out_dir``, verified first.

    The files are downloaded into a temporary folder beside ``out_dir``, checked against the
    registry's record (``models:/`` URIs) and against ``config.json``'s checksum, and only then
    moved into ``out_dir`` one by one with an atomic rename, weights first and ``config.json``
    last. A failed pull leaves ``out_dir`` as it was."""
    import mlflow.artifacts

    from pretrain.tracking.runs import resolve_tracking_uri

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; --out must name a folder")
    uri = resolve_tracking_uri(tracking_uri)
    resolved = resolve(model_uri, uri)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.pull-", dir=out.parent))
    try:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=resolved.source, dst_path=str(staging), tracking_uri=uri))
        if not (local / CONFIG_NAME).is_file():
            raise ExportError(f"{model_uri}: no {CONFIG_NAME} in the downloaded files")
        verify_against(local, resolved.expected, model_uri)
        read_config(local, verify=True)
        out.mkdir(parents=True, exist_ok=True)
        for name in PULLED_FILES:
            if (local / name).is_file():
                os.replace(local / name, out / name)
            elif name != CONFIG_NAME and (out / name).is_file():
                (out / name).unlink()  # a card of an earlier pull must not describe these files
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def load_encoder(source: str | Path, tracking_uri: str | None = None) -> nn.Module:
    """A timm encoder (``num_classes=0``) in eval mode with the exported weights loaded strictly.

    ``source`` is a folder holding the exported files or an MLflow URI (``models:/...``,
    ``runs:/...``). Weights are read with safetensors only."""
    if isinstance(source, Path) or "://" not in str(source) and ":/" not in str(source):
        return load_model_dir(Path(source))
    with tempfile.TemporaryDirectory() as tmp:
        return load_model_dir(pull(str(source), Path(tmp) / "model", tracking_uri=tracking_uri))


def build_model(config: ModelConfig, num_classes: int | None = None) -> nn.Module:
    """The timm architecture ``config`` describes (random weights), with its stem; an unknown
    architecture or arguments timm rejects are an ``ExportError``."""
    from pretrain.models.encoder import apply_stem

    if not timm.is_model(config.architecture):
        raise ExportError(f"{CONFIG_NAME}: unknown timm model {config.architecture!r} "
                          f"(timm {timm.__version__})")
    classes = config.num_classes if num_classes is None else num_classes
    try:
        model = timm.create_model(config.architecture, pretrained=False, num_classes=classes,
                                  **config.model_args)
        return apply_stem(model, config.stem)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise ExportError(f"{CONFIG_NAME}: timm cannot build {config.architecture!r} with "
                          f"{config.model_args}: {exc}") from None


def load_model_dir(model_dir: Path) -> nn.Module:
    """The model an exported folder holds (encoder or classifier), eval mode, weights checked
    against ``config.json`` and loaded strictly with safetensors."""
    config = read_config(model_dir, verify=True)
    model = build_model(config)
    try:
        state = load_file(str(model_dir / WEIGHTS_NAME))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError
        raise ExportError(f"{model_dir / WEIGHTS_NAME}: not a safetensors file ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ExportError(f"{model_dir / WEIGHTS_NAME}: weights do not fit "
                          f"{config.architecture!r}: {first}") from None
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}),
                            "mean": config.mean, "std": config.std,
                            "input_size": config.input_size, "crop_pct": 1.0,
                            "num_classes": config.num_classes}
    if config.label_names:
        model.pretrained_cfg["label_names"] = tuple(config.label_names)
    return model.eval()
