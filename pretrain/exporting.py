"""``pretrain export RUN_ID``: register the latest checkpointed encoder of a finished or running run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow.fs as pafs
from mlflow.tracking import MlflowClient

from pretrain.export import ExportError
from pretrain.registry import RegisteredEncoder, log_and_register
from pretrain.tracking.runs import resolve_tracking_uri
from pretrain.train import checkpoint as ckpt


def latest_checkpoint(storage: str) -> str:
    """Path (in ``storage``'s filesystem) of the newest checkpoint that holds an encoder."""
    fs, root = pafs.FileSystem.from_uri(storage if "://" in storage else str(Path(storage)))
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    names = sorted(i.base_name for i in infos
                   if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))
    for name in reversed(names):
        config = fs.get_file_info(f"{root}/{name}/{ckpt.ENCODER_DIR}/config.json")
        if config.type == pafs.FileType.File:
            return f"{root}/{name}"
    raise ExportError(f"{storage}: no checkpoint with an exported encoder")


def export_run(run_id: str, *, name: str | None = None, alias: str | None = None,
               tracking_uri: str | None = None) -> RegisteredEncoder:
    uri = resolve_tracking_uri(tracking_uri)
    run = MlflowClient(uri).get_run(run_id)
    storage = run.data.tags.get("pretrain.storage")
    if not storage:
        raise ExportError(f"run {run_id} has no pretrain.storage tag (not a pretraining run?)")
    name = name or run.data.params.get("registry.name") or "invariant-encoder"
    fs, _ = pafs.FileSystem.from_uri(storage if "://" in storage else str(Path(storage)))
    source = f"{latest_checkpoint(storage)}/{ckpt.ENCODER_DIR}"
    with tempfile.TemporaryDirectory() as tmp:
        pafs.copy_files(source, tmp, source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return log_and_register(uri, run_id, tmp, name, alias,
                                tags={"objective": run.data.params.get("objective.name", ""),
                                      "exported_from": source})
