"""What ``pretrain run`` prints at the end: where things are and how to use them."""

from __future__ import annotations

import typer

from pretrain.trust.redact import redact_text
from pretrain.models.model_registry import MODEL_TRAINING_VIEW
from pretrain.workflows.run import RunSummary
from pretrain.tracking.runs import local_store_paths, ui_command


def print_run_summary(summary: RunSummary) -> None:
    lines = [
        "",
        f"run {summary.run_name}: {summary.final_step}/{summary.plan.total_steps} steps, "
        f"wall time {summary.seconds:.0f}s ({summary.seconds / 60:.1f} min)",
    ]
    store = local_store_paths(summary.tracking_uri)
    if store is not None:
        lines.append(f"MLflow store:    {store[0]} (artifacts in {store[1]})")
    else:
        lines.append(f"MLflow server:   {redact_text(summary.tracking_uri)}")
    lines.append(f"MLflow UI:       {redact_text(ui_command(summary.tracking_uri))}")
    if store is not None:  # the model-training view, not MLflow 3's default GenAI one
        lines.append(f"                 then open http://127.0.0.1:5000/#/experiments?"
                     f"{MODEL_TRAINING_VIEW}")
    lines.append(f"MLflow run id:   {summary.run_id}")
    if summary.registered is not None:
        lines += [
            f"Registered model: {summary.registered.uri} (version {summary.registered.version})",
            "Load it in Python:",
            "    from pretrain.hub import load_encoder",
            f'    encoder = load_encoder("{summary.registered.uri}")',
        ]
    typer.echo("\n".join(lines))
