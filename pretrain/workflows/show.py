"""``pretrain show RUN_OR_MODEL_URI``: a run's headline figures and invariance profile in the
terminal, and where its profile PNG is.

    from pretrain.workflows.show import show_run, format_view
    print(format_view(show_run("models:/invariant-encoder/latest")))

The source is a run id, a run name (``name=`` of ``pretrain run``), ``runs:/RUN_ID/...``, or
``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` (its training run is shown). Figures are the
run's latest ``probe/...`` metrics: for a training run, the end-of-run probe suite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from mlflow.tracking import MlflowClient

from pretrain.models.folder import ExportError
from pretrain.probes.report import PROFILE_PNG
from pretrain.probes.profile import (
    HEADLINE_LABELS,
    ProfileRow,
    format_headline,
    headline,
    profile_rows,
    profile_text,
)
from pretrain.models.model_registry import VERSION_TAG
from pretrain.tracking.runs import RUN_NAME_TAG, resolve_tracking_uri

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class RunView:
    run_id: str
    run_name: str
    status: str
    experiment: str
    model: str | None
    headline: dict[str, float]
    rows: list[ProfileRow] = field(default_factory=list)
    png: Path | None = None


def _find_run(client: MlflowClient, source: str):
    from mlflow.exceptions import MlflowException

    from pretrain.models.loading import model_version

    model = None
    if source.startswith("models:/"):
        mv = model_version(client, source)
        if not mv.run_id:
            raise ExportError(f"{source}: version {mv.version} has no run")
        run_id, model = mv.run_id, f"models:/{mv.name}/{mv.version}"
    elif source.startswith("runs:/"):
        run_id = source.removeprefix("runs:/").split("/", 1)[0]
    elif _RUN_ID.match(source):
        run_id = source
    else:  # a run name: the newest run of that name (``pretrain run``'s tag, else MLflow's)
        ids = [e.experiment_id for e in client.search_experiments()]
        runs = []
        for query in (f"tags.`{RUN_NAME_TAG}` = '{source}'", f"attributes.run_name = '{source}'"):
            if ids and "'" not in source and not runs:
                runs = client.search_runs(ids, filter_string=query, max_results=1,
                                          order_by=["attributes.start_time DESC"])
        if not runs:
            raise ExportError(f"{source}: no run with that name, and not a run id or model URI")
        run_id = runs[0].info.run_id
    try:
        return client.get_run(run_id), model
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ExportError(f"{source}: no such run") from None
        raise


def _profile_png(run, tracking_uri: str, download_dir: Path) -> Path | None:
    """The profile PNG on disk: in place for a local artifact store, else downloaded."""
    artifact_uri = run.info.artifact_uri
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        path = Path(url2pathname(parsed.path)) / PROFILE_PNG
        return path if path.is_file() else None
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    target = download_dir / run.info.run_id
    try:
        return Path(mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path=PROFILE_PNG, dst_path=str(target),
            tracking_uri=tracking_uri))
    except (MlflowException, OSError):
        return None


def show_run(source: str, tracking_uri: str | None = None,
             download_dir: str | Path = ".pretrain/show") -> RunView:
    """Headline figures, profile rows and the profile PNG of a run (or a model's run)."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri, registry_uri=uri)
    run, model = _find_run(client, source)
    if model is None and run.data.tags.get(VERSION_TAG):
        model = f"models:/{run.data.tags[VERSION_TAG]}"  # the version this run registered
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("probe/")}
    experiment = client.get_experiment(run.info.experiment_id).name
    return RunView(run_id=run.info.run_id, run_name=run.info.run_name or "", status=run.info.status,
                   experiment=experiment, model=model, headline=headline(metrics),
                   rows=profile_rows(metrics), png=_profile_png(run, uri, Path(download_dir)))


def format_view(view: RunView) -> str:
    lines = [f"run {view.run_name} ({view.run_id}), {view.status}, experiment {view.experiment}"]
    if view.model:
        lines.append(f"model {view.model}")
    if not view.headline and not view.rows:
        lines.append("no probe results logged in this run")
    if view.headline:
        lines.append("")
        width = max(len(HEADLINE_LABELS[k]) for k in view.headline)
        lines += [f"{HEADLINE_LABELS[k]:<{width}}  {format_headline(v, k):>7}"
                  for k, v in view.headline.items()]
    if view.rows:
        lines += ["", profile_text(view.rows)]
    lines.append("")
    lines.append(f"invariance profile: {view.png}" if view.png else
                 "invariance profile: no PNG logged in this run")
    return "\n".join(lines)
