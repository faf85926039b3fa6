"""Log probe results into an MLflow run: the metrics, the invariance-profile PNG and a JSON copy
(:func:`log_probe_results`, used by the end-of-run probe pass and by ``pretrain probe``), and the
artifact names other modules read back (``PROFILE_PNG``).

Probing an encoder after the fact, in a run of its own (``probe_model``, ``compare_models``), is
a use case: :mod:`pretrain.workflows.probe`.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pretrain.probes.features import REPRESENTATION
from pretrain.probes.plots import plot_invariance_profile

PROFILE_PNG = "probes/invariance_profile.png"


def metric_batch(metrics: dict[str, float], step: int, prefix: str = "") -> list[Metric]:
    """``metrics`` as MLflow metrics at ``step``, keys prefixed with ``prefix``."""
    # NaN (e.g. invariance of a collapsed encoder) is not logged: MLflow stores it, but charts
    # and comparisons of NaN mislead; the JSON artifact keeps every value.
    now = int(time.time() * 1000)
    return [Metric(f"{prefix}{k}", float(v), now, step) for k, v in metrics.items()
            if not math.isnan(v)]


def log_probe_results(tracking_uri: str, run_id: str, metrics: dict[str, float], *,
                      step: int = 0, title: str = "Invariance profile", subtitle: str = ""
                      ) -> list[str]:
    """Log ``metrics`` at ``step`` plus the invariance-profile PNG and a JSON copy of the metrics
    into an existing run (also what the end-of-run probe pass can call). Returns artifact paths."""
    client = MlflowClient(tracking_uri)
    batch = metric_batch(metrics, step)
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start:start + 1000])
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_invariance_profile(metrics, Path(tmp) / Path(PROFILE_PNG).name, title=title,
                                      subtitle=subtitle)
        client.log_artifact(run_id, str(png), str(Path(PROFILE_PNG).parent))
    metrics_json = f"probes/metrics_step{step}.json"
    client.log_dict(run_id, {"step": step, "representation": REPRESENTATION,
                             "metrics": metrics}, metrics_json)
    return [PROFILE_PNG, metrics_json]
