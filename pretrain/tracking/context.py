"""One MLflow run around a block: created on entry, FINISHED when the block ends, FAILED (KILLED
on Ctrl-C) when it raises, and the exception re-raised. Used by the commands that log a run of
their own (``pretrain probe``, ``pretrain probe --compare``, ``pretrain finetune``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mlflow.tracking import MlflowClient


@contextlib.contextmanager
def mlflow_run(client: MlflowClient, experiment_id: str, *, run_name: str,
               tags: dict[str, str] | None = None) -> Iterator[str]:
    """Yield the new run's id; the run ends with the block's outcome."""
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags or {}).info.run_id
    try:
        yield run_id
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        client.set_terminated(run_id, status=status)
        raise
    client.set_terminated(run_id)
