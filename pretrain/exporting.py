"""``pretrain export RUN_ID``: register the latest checkpointed encoder of a finished or running run."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs
from mlflow.tracking import MlflowClient

from pretrain.export import ExportError
from pretrain.registry import RegisteredEncoder, log_and_register
from pretrain.tracking.runs import resolve_tracking_uri
from pretrain.train import checkpoint as ckpt


SNAPSHOT = "checkpoint_manager_snapshot.json"


def _filesystem(storage: str, endpoint: str | None) -> tuple[pafs.FileSystem, str]:
    if storage.startswith("s3://"):
        from cluster.storage import first_env, s3_filesystem, ENDPOINT_ENV

        return (s3_filesystem(endpoint or first_env(ENDPOINT_ENV, os.environ), None),
                storage.removeprefix("s3://").rstrip("/"))
    return pafs.FileSystem.from_uri(storage if "://" in storage else str(Path(storage)))


def latest_checkpoint(storage: str, endpoint: str | None = None) -> str:
    """Path (in ``storage``'s filesystem) of the checkpoint Ray registered last; folders Ray never
    registered (an interrupted upload) are ignored. Without Ray's snapshot: the newest folder
    that holds an encoder."""
    fs, root = _filesystem(storage, endpoint)
    snapshot = fs.get_file_info(f"{root}/{SNAPSHOT}")
    if snapshot.type == pafs.FileType.File:
        with fs.open_input_stream(f"{root}/{SNAPSHOT}") as handle:
            latest = json.loads(handle.read()).get("latest_checkpoint_result") or {}
        if latest.get("checkpoint_dir_name"):
            return f"{root}/{latest['checkpoint_dir_name']}"
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
    endpoint = run.data.params.get("cluster.storage_endpoint")
    endpoint = None if endpoint in (None, "None") else endpoint
    fs, _ = _filesystem(storage, endpoint)
    source = f"{latest_checkpoint(storage, endpoint)}/{ckpt.ENCODER_DIR}"
    with tempfile.TemporaryDirectory() as tmp:
        pafs.copy_files(source, tmp, source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return log_and_register(uri, run_id, tmp, name, alias,
                                tags={"objective": run.data.params.get("objective.name", ""),
                                      "exported_from": source})
