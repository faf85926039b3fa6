"""Rank-0 metric logging that never stalls training, and logs each step exactly once.

Metrics are appended to an in-memory list that a background thread sends in batches, oldest
first, one whole step per batch at least (MLflow stores a batch in one transaction, so a step is
either all there or not at all). When the tracking server is unreachable the thread keeps the
metrics and retries, so the metrics of an outage reach the server once it is back.

Exactly once across restarts: on resume the logger first asks the server for the last step it
has (of ``marker_key``) and drops every metric at or below it, since those steps are re-run after
a restore from an older checkpoint. Metrics of steps at or before a checkpoint that were still
unsent when it was taken travel inside the checkpoint (:func:`write_unsent`) and are sent again
by the restored logger; re-sending an identical metric (same timestamp) is a no-op on MLflow's
SQL stores, so a send that timed out after the server committed it does no harm either.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

log = logging.getLogger("pretrain.tracking")
_BATCH_LIMIT = 1000  # MLflow accepts at most 1000 metrics per log_batch
MARKER_KEY = "loss/total"  # logged at every logging step; its last step is "how far we got"
UNSENT_FILE = "unsent_metrics.json"


def step_chunk(metrics: list[Metric], limit: int = _BATCH_LIMIT) -> list[Metric]:
    """The longest prefix of ``metrics`` (ordered by step) that holds only whole steps and at
    most ``limit`` metrics; a single step larger than ``limit`` is cut at ``limit``."""
    if len(metrics) <= limit:
        return list(metrics)
    end = limit
    while end > 0 and metrics[end - 1].step == metrics[limit].step:
        end -= 1
    return list(metrics[:end or limit])


def write_unsent(path: Path, metrics: Iterable[Metric]) -> None:
    """Store metrics (timestamps included) so that a restored run can send them again."""
    rows = [[m.key, m.value, m.timestamp, m.step] for m in metrics]
    Path(path).write_text(json.dumps(rows))


def read_unsent(path: Path) -> list[Metric]:
    """Metrics stored by :func:`write_unsent`; none when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    return [Metric(key, float(value), int(ts), int(step))
            for key, value, ts, step in json.loads(path.read_text())]


def last_logged_step(client: MlflowClient, run_id: str, key: str = MARKER_KEY) -> int:
    """Highest step already logged for ``key`` in the run (-1 when none)."""
    return max((m.step for m in client.get_metric_history(run_id, key)), default=-1)


def send_missing(tracking_uri: str, run_id: str, metrics: list[Metric],
                 key: str = MARKER_KEY) -> list[int]:
    """Send, synchronously, those of ``metrics`` whose steps the run does not have yet (e.g. a
    final checkpoint's unsent metrics after a long outage); returns the steps sent."""
    client = MlflowClient(tracking_uri)
    done = last_logged_step(client, run_id, key)
    todo = [m for m in metrics if m.step > done]
    while todo:
        chunk = step_chunk(todo)
        client.log_batch(run_id, metrics=chunk)
        todo = todo[len(chunk):]
    return sorted({m.step for m in metrics if m.step > done})


class MetricLogger:
    """Asynchronous, retrying ``log_metrics(step, {name: value})`` for one MLflow run.

    ``skip_through_step``: steps at or below it are dropped (already logged before a resume).
    None: ask the server (the last step of ``marker_key``) from the background thread before the
    first send, so that starting never blocks on, or fails with, an unreachable server.
    """

    def __init__(self, tracking_uri: str, run_id: str, skip_through_step: int | None = -1,
                 retry_seconds: float = 2.0, marker_key: str = MARKER_KEY) -> None:
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.skip_through_step = skip_through_step
        self.retry_seconds = retry_seconds
        self.marker_key = marker_key
        self._unsent: list[Metric] = []
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._failing = False
        self._system = None
        self._thread = threading.Thread(target=self._drain, name="mlflow-metrics", daemon=True)
        self._thread.start()

    @staticmethod
    def last_logged_step(tracking_uri: str, run_id: str, key: str = MARKER_KEY) -> int:
        """Highest step already logged for ``key`` in the run (-1 when none)."""
        return last_logged_step(MlflowClient(tracking_uri), run_id, key)

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.enqueue([Metric(k, float(v), now, step) for k, v in values.items()])

    def enqueue(self, metrics: Iterable[Metric]) -> None:
        """Queue ready-made metrics, timestamps kept (e.g. those a checkpoint carried)."""
        with self._cond:
            skip = self.skip_through_step
            self._unsent.extend(m for m in metrics if skip is None or m.step > skip)
            self._cond.notify()

    def unsent(self) -> list[Metric]:
        """Everything logged and not yet confirmed by the server, oldest first."""
        with self._cond:
            return list(self._unsent)

    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._unsent and not self._closing:
                    self._cond.wait()
                if not self._unsent and self._closing:
                    return
            if self._send_unsent():
                continue
            if self._closing and time.monotonic() >= self._deadline:
                return
            time.sleep(self.retry_seconds)

    def _send_unsent(self) -> bool:
        """Send whole steps, oldest first; False (and keep them) when the server fails."""
        try:
            if self.skip_through_step is None:
                done = last_logged_step(self.client, self.run_id, self.marker_key)
                with self._cond:
                    self.skip_through_step = done
                    self._unsent = [m for m in self._unsent if m.step > done]
            while True:
                with self._cond:
                    chunk = step_chunk(self._unsent)
                if not chunk:
                    break
                self.client.log_batch(self.run_id, metrics=chunk)
                with self._cond:
                    del self._unsent[:len(chunk)]
        except Exception as exc:  # server down, network error: keep and retry later
            if not self._failing:
                log.warning("MLflow unreachable (%s); keeping metrics and retrying every %.0fs",
                            type(exc).__name__, self.retry_seconds)
            self._failing = True
            return False
        if self._failing:
            log.warning("MLflow reachable again; metrics held back during the outage were sent")
            self._failing = False
        return True

    def start_system_metrics(self, sampling_interval: float = 10.0) -> None:
        """MLflow's CPU/memory/disk/network (and GPU) sampler, logged to the same run."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._system = SystemMetricsMonitor(self.run_id, sampling_interval=sampling_interval,
                                            resume_logging=True,
                                            tracking_uri=self.client.tracking_uri)
        self._system.start()

    def close(self, timeout: float = 30.0) -> list[int]:
        """Flush; return the steps that could not be sent within ``timeout`` seconds."""
        if self._system is not None:
            self._system.finish()
        with self._cond:
            self._deadline = time.monotonic() + max(0.0, timeout)
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout + self.retry_seconds + 5)
        with self._cond:
            return sorted({m.step for m in self._unsent})
