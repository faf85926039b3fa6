"""``pretrain export RUN_ID``: register the latest checkpointed encoder of a finished or running run."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from mlflow.tracking import MlflowClient

from pretrain.models.folder import ExportError
from pretrain.models.model_registry import RegisteredEncoder, log_and_register
from pretrain.tracking.runs import resolve_tracking_uri
from pretrain.train import checkpoint as ckpt
from pretrain.train.store import CheckpointRejected, Found

log = logging.getLogger("pretrain.export")


@contextlib.contextmanager
def latest_checkpoint(storage: str, endpoint: str | None = None) -> Iterator[Found]:
    """The newest checkpoint under run folder ``storage`` whose encoder files verify against its
    manifest; the yielded local folder holds the verified encoder (downloaded when the storage
    is remote). Newer checkpoints that fail are logged and skipped.

    Raises:
        ExportError: no checkpoint with a verified encoder."""
    from cluster.storage import store_at

    store = store_at(storage, endpoint)
    with store.newest((f"{ckpt.ENCODER_DIR}/",), on_skip=_skipped) as found:
        if found is None:
            raise ExportError(f"{storage}: no checkpoint with a verified encoder")
        yield found


def _skipped(rejected: CheckpointRejected) -> None:
    log.warning("skipping checkpoint %s", rejected)


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
    with latest_checkpoint(storage, endpoint) as found:
        source = f"{storage.rstrip('/')}/{found.name}/{ckpt.ENCODER_DIR}"
        return log_and_register(uri, run_id, found.path / ckpt.ENCODER_DIR, name, alias,
                                tags={"objective": run.data.params.get("objective.name", ""),
                                      "exported_from": source})
