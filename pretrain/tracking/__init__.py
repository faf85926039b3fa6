"""MLflow tracking: where runs live, one run per job, and a non-blocking metric logger."""

from pretrain.tracking.metrics import MetricLogger
from pretrain.tracking.runs import (
    RUN_NAME_TAG,
    find_run_by_name,
    local_store_paths,
    resolve_tracking_uri,
    start_or_resume_run,
)

__all__ = ["MetricLogger", "RUN_NAME_TAG", "find_run_by_name", "local_store_paths",
           "resolve_tracking_uri", "start_or_resume_run"]
