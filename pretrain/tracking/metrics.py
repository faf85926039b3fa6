"""Rank-0 metric logging that never stalls training.

Metrics go through a queue to a background thread that sends them in batches. When the tracking
server is unreachable the thread keeps the batch and retries, so metrics of an outage reach the
server once it is back; whatever is still unsent at ``close(timeout)`` is returned to the caller
(and written to the run as a list of unlogged steps when possible).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

log = logging.getLogger("pretrain.tracking")
_BATCH_LIMIT = 1000  # MLflow accepts at most 1000 metrics per log_batch


class MetricLogger:
    """Asynchronous, retrying ``log_metrics(step, {name: value})`` for one MLflow run.

    ``skip_through_step``: steps at or below it are dropped (already logged before a resume), so
    each step appears once in the run's history.
    """

    def __init__(self, tracking_uri: str, run_id: str, skip_through_step: int = -1,
                 retry_seconds: float = 2.0) -> None:
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.skip_through_step = skip_through_step
        self.retry_seconds = retry_seconds
        self._queue: queue.Queue[list[Metric] | None] = queue.Queue()
        self._pending: list[Metric] = []
        self._lock = threading.Lock()
        self._deadline = float("inf")
        self._system = None
        self._thread = threading.Thread(target=self._drain, name="mlflow-metrics", daemon=True)
        self._thread.start()

    @staticmethod
    def last_logged_step(tracking_uri: str, run_id: str, key: str) -> int:
        """Highest step already logged for ``key`` in the run (-1 when none)."""
        history = MlflowClient(tracking_uri).get_metric_history(run_id, key)
        return max((m.step for m in history), default=-1)

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        if step <= self.skip_through_step:
            return
        now = int(time.time() * 1000)
        self._queue.put([Metric(k, float(v), now, step) for k, v in values.items()])

    def _drain(self) -> None:
        stopping = False
        while True:
            if not stopping:
                wait = None if not self._pending else self.retry_seconds
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    item = []
                while item is not None:
                    with self._lock:
                        self._pending.extend(item)
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                stopping = item is None
            if self._send_pending():
                if stopping:
                    return
            elif stopping:
                if time.monotonic() >= self._deadline:
                    return
                time.sleep(self.retry_seconds)

    def _send_pending(self) -> bool:
        """Send pending metrics in chunks; False (and keep them) when the server fails."""
        while True:
            with self._lock:
                chunk = self._pending[:_BATCH_LIMIT]
            if not chunk:
                return True
            try:
                self.client.log_batch(self.run_id, metrics=chunk)
            except Exception as exc:  # server down, network error: keep and retry later
                log.warning("MLflow unreachable (%s); %d metrics kept for retry",
                            type(exc).__name__, len(self._pending))
                return False
            with self._lock:
                del self._pending[:len(chunk)]

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
        self._deadline = time.monotonic() + max(0.0, timeout)
        self._queue.put(None)
        self._thread.join(timeout + self.retry_seconds + 5)
        with self._lock:
            return sorted({m.step for m in self._pending})
