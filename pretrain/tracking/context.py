"""The one place MLflow runs are opened and closed.

``mlflow_run`` creates a run around a block (``pretrain probe``, ``pretrain probe --compare``,
``pretrain finetune``); ``ending_run`` closes a run that already exists (a pretraining run,
created or resumed by name in :mod:`pretrain.tracking.runs`). Both end the run with the block's
outcome: FINISHED when it ends, KILLED on Ctrl-C or SIGTERM (both arrive as
``KeyboardInterrupt``), FAILED on any other exception, which is re-raised. A run therefore
never stays RUNNING after its command is gone, whatever stopped it, unless the tracking server
cannot be told: then one warning line, and the block's own exception (not the MLflow error)
travels on."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from mlflow.tracking import MlflowClient

from pretrain.trust.redact import redact_text

log = logging.getLogger("pretrain.tracking")


def outcome_status(exc: BaseException | None) -> str:
    """The MLflow run status for a block that ended with ``exc`` (None: it ended normally)."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


@contextlib.contextmanager
def ending_run(client: MlflowClient | str, run_id: str) -> Iterator[str]:
    """Yield ``run_id``; end that existing run with the block's outcome (see module doc).

    ``client`` may be a tracking URI. The status is set before the exception travels on, so
    that the run is closed even when whatever handles the exception next has little time
    (Ray gives a stopped job seconds)."""
    client = MlflowClient(client) if isinstance(client, str) else client
    try:
        yield run_id
    except BaseException as exc:
        try:
            client.set_terminated(run_id, status=outcome_status(exc))
        except Exception as status_error:  # noqa: BLE001 - the block's own error matters more
            # E.g. the tracking server went away: report what stopped the block, not this.
            text = str(status_error).strip()
            log.warning("could not mark MLflow run %s %s: %s", run_id, outcome_status(exc),
                        redact_text(text.splitlines()[0]) if text else type(status_error).__name__)
        raise
    client.set_terminated(run_id, status=outcome_status(None))


@contextlib.contextmanager
def mlflow_run(client: MlflowClient, experiment_id: str, *, run_name: str,
               tags: dict[str, str] | None = None) -> Iterator[str]:
    """Create a run in ``experiment_id`` and yield its id; the run ends with the block's
    outcome (see module doc)."""
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags or {}).info.run_id
    with ending_run(client, run_id):
        yield run_id
