"""Resolve what is known about an encoder given by URI or folder: its run and model version.

Reading only (the registry's record or the folder's ``config.json``); recording it on a derived
run is :mod:`pretrain.tracking.lineage`'s job.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from pretrain.models.folder import read_config
from pretrain.models.loading import model_version
from pretrain.tracking.lineage import EncoderSource


def describe_source(source: str | Path, tracking_uri: str) -> EncoderSource:
    """The run and model version behind a ``models:/`` or ``runs:/`` URI or an encoder folder
    (a folder's run is the one recorded in its ``config.json``)."""
    text = str(source)
    if text.startswith("models:/"):
        mv = model_version(MlflowClient(tracking_uri, registry_uri=tracking_uri), text)
        return EncoderSource(text, f"{mv.name}/v{mv.version}", mv.run_id or None, mv.name,
                             str(mv.version))
    if text.startswith("runs:/"):
        run_id = text.removeprefix("runs:/").split("/", 1)[0]
        return EncoderSource(text, f"run {run_id[:8]}", run_id)
    config = read_config(Path(text), verify=False)
    return EncoderSource(text, Path(text).resolve().name, config.run_id or None)
