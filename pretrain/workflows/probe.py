"""``pretrain probe``: probe any exported encoder after the fact and log the result as its own
MLflow run.

    from pretrain.workflows.probe import probe_model, compare_models
    probe_model("models:/invariant-encoder@latest", data="synth3d")
    compare_models(["models:/invariant-encoder/1", "models:/invariant-encoder/2"])

A probe run lives in the source run's experiment (when the source run is in this store) and is
tagged with the source run id and model version, so the MLflow UI links the two; the model
version gets a ``pretrain.probe.run_id`` tag pointing back (both recorded by
:mod:`pretrain.tracking.lineage`; the run opens and closes in :mod:`pretrain.tracking.context`).
Encoders are loaded with ``pretrain.hub.load_encoder`` (safetensors, never unpickled).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from pretrain.models.loading import load_encoder
from pretrain.models.source import describe_source
from pretrain.probes.config import ProbesConfig
from pretrain.probes.features import REPRESENTATION, Preprocess
from pretrain.probes.report import log_probe_results, metric_batch
from pretrain.probes.plots import plot_comparison
from pretrain.probes.probeset import ProbeSet, load_probe_set
from pretrain.probes.suite import run_probe_suite
from pretrain.progress import Progress, progress_lines
from pretrain.tracking.context import mlflow_run
from pretrain.tracking.lineage import EncoderSource, derived_experiment, lineage_tags, link_back
from pretrain.tracking.runs import resolve_tracking_uri

TAG = "pretrain.probe."
COMPARISON_PNG = "probes/comparison.png"
COMPARISON_JSON = "probes/comparison.json"


@dataclass(frozen=True)
class ProbeResult:
    """The probe run and what it logged (artifact paths are relative to the run's root)."""

    run_id: str
    metrics: dict[str, float]
    artifacts: list[str]
    source: EncoderSource


@dataclass(frozen=True)
class CompareResult:
    run_id: str
    metrics: dict[str, dict[str, float]]  # label -> probe metrics
    artifacts: list[str]
    sources: list[EncoderSource]


def metric_label(label: str) -> str:
    """``label`` with only characters MLflow allows in metric keys (for compare runs)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "model"


def _params(cfg: ProbesConfig, probe_set: ProbeSet) -> list[Param]:
    values = {f"probe.{k}": json.dumps(v) if isinstance(v, list) else str(v)
              for k, v in cfg.model_dump(mode="json").items()}
    values |= {"probe.set.train": str(int(probe_set.train.sum())),
               "probe.set.test": str(int((~probe_set.train).sum())),
               "probe.set.image_size": str(probe_set.images.shape[-1])}
    return [Param(k, v[:6000]) for k, v in values.items()]


def _prepare_cfg(cfg: ProbesConfig | None, data: str, transforms: Sequence[str] | None
                 ) -> ProbesConfig:
    values = (cfg or ProbesConfig()).model_dump()
    values["data"] = data
    if transforms:
        values["transforms"] = list(transforms)
    return ProbesConfig.model_validate(values)


def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def probe_model(model_uri_or_dir: str | Path, data: str = "synth3d",
                transforms: list[str] | None = None, tracking_uri: str | None = None, *,
                cfg: ProbesConfig | None = None, experiment: str | None = None,
                device: str | None = None, progress: Progress | None = None) -> ProbeResult:
    """Run the probe suite on one encoder and log a new MLflow run tagged with its source.

    ``data`` is a preset (``synth3d``, ``cifar10``) or a shard folder/pattern; ``transforms``
    overrides ``cfg.transforms``."""
    uri = resolve_tracking_uri(tracking_uri)
    cfg = _prepare_cfg(cfg, data, transforms)
    source = describe_source(model_uri_or_dir, uri)
    encoder = load_encoder(model_uri_or_dir, tracking_uri=uri).to(_device(device))
    probe_set = load_probe_set(cfg.data, cfg)
    metrics = run_probe_suite(encoder, probe_set, cfg, _device(device), progress=progress)
    client = MlflowClient(uri, registry_uri=uri)
    tags = {**lineage_tags(TAG, source), f"{TAG}data": cfg.data,
            f"{TAG}representation": REPRESENTATION,
            "mlflow.note.content": f"Probe of `{source.uri}` on `{cfg.data}`"
            + (f" (source run `{source.run_id}`)" if source.run_id else "")}
    with mlflow_run(client, derived_experiment(client, uri, source.run_id, experiment),
                    run_name=f"probe {source.label}", tags=tags) as run_id:
        client.log_batch(run_id, params=_params(cfg, probe_set))
        artifacts = log_probe_results(uri, run_id, metrics, title=f"Invariance profile: "
                                      f"{source.label}", subtitle=f"probe data: {cfg.data}")
    link_back(client, source, f"{TAG}run_id", run_id)
    return ProbeResult(run_id=run_id, metrics=metrics, artifacts=artifacts, source=source)


def compare_models(uris: Sequence[str | Path], data: str = "synth3d",
                   transforms: list[str] | None = None, tracking_uri: str | None = None, *,
                   labels: Sequence[str] | None = None, cfg: ProbesConfig | None = None,
                   experiment: str | None = None, device: str | None = None,
                   progress: Progress | None = None) -> CompareResult:
    """Probe several encoders on the same probe set and log one comparison run: metrics as
    ``<label>/probe/...``, the comparison PNG and a JSON table."""
    if len(uris) < 2:
        raise ValueError("compare_models needs at least two encoders")
    uri = resolve_tracking_uri(tracking_uri)
    cfg = _prepare_cfg(cfg, data, transforms)
    sources = [describe_source(u, uri) for u in uris]
    names = list(labels) if labels else [s.label for s in sources]
    if len(set(names)) != len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    probe_set = load_probe_set(cfg.data, cfg)
    results: dict[str, dict[str, float]] = {}
    for i, (name, src) in enumerate(zip(names, sources)):
        encoder = load_encoder(src.uri, tracking_uri=uri).to(_device(device))

        def step(done: int, total: int, stage: str = "", i: int = i, name: str = name) -> None:
            if progress is not None:
                progress(i * total + done, len(sources) * total, f"{name}: {stage}")

        results[name] = run_probe_suite(encoder, probe_set, cfg, _device(device), progress=step)
    client = MlflowClient(uri)
    tags = {f"{TAG}compare": "true", f"{TAG}data": cfg.data,
            f"{TAG}models": json.dumps([s.uri for s in sources]),
            f"{TAG}representation": REPRESENTATION}
    first_run = next((s.run_id for s in sources if s.run_id), None)
    with mlflow_run(client, derived_experiment(client, uri, first_run, experiment),
                    run_name=f"probe comparison ({len(sources)} models)", tags=tags) as run_id:
        params = _params(cfg, probe_set) + [Param(f"model.{i}", f"{n} = {s.uri}"[:6000])
                                            for i, (n, s) in enumerate(zip(names, sources))]
        client.log_batch(run_id, params=params[:100])
        batch = [m for name, metrics in results.items()
                 for m in metric_batch(metrics, 0, f"{metric_label(name)}/")]
        for start in range(0, len(batch), 1000):
            client.log_batch(run_id, metrics=batch[start:start + 1000])
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_comparison(results, Path(tmp) / Path(COMPARISON_PNG).name,
                                  title=f"Invariance profiles compared (probe data: {cfg.data})")
            client.log_artifact(run_id, str(png), str(Path(COMPARISON_PNG).parent))
        client.log_dict(run_id, {"representation": REPRESENTATION, "models": {
            n: {"uri": s.uri, "run_id": s.run_id, "metrics": results[n]}
            for n, s in zip(names, sources)}}, COMPARISON_JSON)
    return CompareResult(run_id=run_id, metrics=results,
                         artifacts=[COMPARISON_PNG, COMPARISON_JSON], sources=sources)


def end_of_run_probes(cfg: ProbesConfig, encoder_dir: str | Path, tracking_uri: str, run_id: str,
                      step: int) -> dict[str, float]:
    """The full suite on the exported encoder (loaded like a user would), logged to the run at
    ``step`` with the invariance-profile PNG."""
    encoder = load_encoder(encoder_dir)
    device = _device(None)
    probe_set = load_probe_set(cfg.data, cfg)
    metrics = run_probe_suite(encoder, probe_set, cfg, device, preprocess=Preprocess.of(encoder),
                              progress=progress_lines(f"probe suite (step {step})"))
    log_probe_results(tracking_uri, run_id, metrics, step=step,
                      subtitle=f"step {step}, probe data {cfg.data}")
    return metrics

