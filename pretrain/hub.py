"""Pull a pretrained encoder and load it as a plain timm model, without unpickling anything.

    from pretrain.hub import load_encoder
    encoder = load_encoder("models:/invariant-encoder@latest")
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import timm
from safetensors.torch import load_file
from torch import nn

from pretrain.export import CONFIG_NAME, WEIGHTS_NAME, ExportError, read_config


def resolve_source(model_uri: str, tracking_uri: str) -> str:
    """The artifact URI behind ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or
    ``models:/NAME/latest`` (MLflow reserves the alias ``latest``, so ``@latest`` means the newest
    version); other URIs (``runs:/``, ``s3://``, ...) are returned as they are."""
    if not model_uri.startswith("models:/"):
        return model_uri
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    rest = model_uri.removeprefix("models:/").rstrip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if alias.lower() != "latest":
            return client.get_model_version_by_alias(name, alias).source
        rest = f"{name}/latest"
    name, _, version = rest.rpartition("/")
    if not name:
        raise ExportError(f"{model_uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    if version.lower() == "latest":
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise ExportError(f"{model_uri}: no versions of registered model {name!r}")
        return max(versions, key=lambda v: int(v.version)).source
    return client.get_model_version(name, version).source


def pull(model_uri: str, out_dir: str | Path, tracking_uri: str | None = None) -> Path:
    """Download ``model.safetensors`` + ``config.json`` of ``models:/NAME@ALIAS`` (or
    ``models:/NAME/VERSION``, ``runs:/ID/encoder``) into ``out_dir`` and verify the checksum."""
    import mlflow.artifacts

    from pretrain.tracking.runs import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=resolve_source(model_uri, uri), dst_path=tmp, tracking_uri=uri))
        if not (local / CONFIG_NAME).is_file():
            raise ExportError(f"{model_uri}: no {CONFIG_NAME} in the downloaded files")
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            shutil.copyfile(local / name, out / name)
    read_config(out, verify=True)
    return out


def load_encoder(source: str | Path, tracking_uri: str | None = None) -> nn.Module:
    """A timm encoder (``num_classes=0``) in eval mode with the exported weights loaded strictly.

    ``source`` is a folder holding the exported files or an MLflow URI (``models:/...``,
    ``runs:/...``). Weights are read with safetensors only."""
    if isinstance(source, Path) or "://" not in str(source) and ":/" not in str(source):
        return _load_dir(Path(source))
    with tempfile.TemporaryDirectory() as tmp:
        return _load_dir(pull(str(source), tmp, tracking_uri=tracking_uri))


def _load_dir(model_dir: Path) -> nn.Module:
    config = read_config(model_dir, verify=True)
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=0,
                              **config.get("model_kwargs", {}))
    model.load_state_dict(load_file(str(model_dir / WEIGHTS_NAME)), strict=True)
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}),
                            "mean": tuple(config["mean"]), "std": tuple(config["std"]),
                            "input_size": tuple(config["input_size"])}
    return model.eval()
