"""Where an encoder came from, recorded the same way on every run derived from it.

A probe run, a comparison run or a finetuning run starts from an encoder given as a
``models:/`` URI, a ``runs:/`` URI or a folder. :class:`EncoderSource` is what is known about it
(resolved by :func:`pretrain.models.source.describe_source`); this module turns it into the
derived run's tags, picks the experiment the derived run belongs in, and tags the model version
back with the derived run, so the MLflow UI links both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from pretrain.config.schema import TrackingConfig
from pretrain.tracking.runs import ensure_experiment

# Derived runs of an encoder whose source run this store does not have land here, as
# pretraining runs do by default.
DEFAULT_EXPERIMENT = TrackingConfig().experiment


@dataclass(frozen=True)
class EncoderSource:
    """An encoder's URI (or folder), a short label for it, and its run and model version when
    known."""

    uri: str
    label: str
    run_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None

    @property
    def version_ref(self) -> str | None:
        """``NAME/VERSION`` of a registered encoder, else None."""
        if self.model_name and self.model_version:
            return f"{self.model_name}/{self.model_version}"
        return None


def lineage_tags(prefix: str, source: EncoderSource) -> dict[str, str]:
    """The tags that record ``source`` on a derived run: ``<prefix>model_uri`` always,
    ``<prefix>source_run_id`` and ``<prefix>model_version`` (``NAME/VERSION``) when known."""
    tags = {f"{prefix}model_uri": source.uri}
    if source.run_id:
        tags[f"{prefix}source_run_id"] = source.run_id
    if source.version_ref:
        tags[f"{prefix}model_version"] = source.version_ref
    return tags


def derived_experiment(client: MlflowClient, tracking_uri: str, source_run_id: str | None,
                       experiment: str | None = None) -> str:
    """The experiment id for a run derived from an encoder: ``experiment`` when named (created
    if missing), else the source run's own experiment when this store has that run, else
    ``DEFAULT_EXPERIMENT``."""
    if experiment is None and source_run_id is not None:
        try:
            return client.get_run(source_run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - a run of another store: fall back to the default
            pass
    return ensure_experiment(client, experiment or DEFAULT_EXPERIMENT, tracking_uri)


def link_back(client: MlflowClient, source: EncoderSource, tag: str, run_id: str) -> None:
    """Tag the registered model version of ``source`` (if any) with ``tag = run_id``, pointing
    from the encoder to the run derived from it. ``client`` needs the registry."""
    if source.model_name and source.model_version:
        client.set_model_version_tag(source.model_name, source.model_version, tag, run_id)
