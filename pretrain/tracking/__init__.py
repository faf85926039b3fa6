"""MLflow tracking: where runs live, the one place runs are opened and closed, where a derived
run's encoder came from, and a non-blocking metric logger."""

from pretrain.tracking.context import ending_run, mlflow_run
from pretrain.tracking.lineage import EncoderSource, derived_experiment, lineage_tags, link_back
from pretrain.tracking.metrics import MetricLogger
from pretrain.tracking.runs import (
    RUN_NAME_TAG,
    find_run_by_name,
    local_store_paths,
    resolve_tracking_uri,
    start_or_resume_run,
)

__all__ = ["EncoderSource", "MetricLogger", "RUN_NAME_TAG", "derived_experiment", "ending_run",
           "find_run_by_name", "lineage_tags", "link_back", "local_store_paths", "mlflow_run",
           "resolve_tracking_uri", "start_or_resume_run"]
