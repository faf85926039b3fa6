"""The one place MLflow runs open and close, and where a derived run records its encoder's
source: a real SQLite MLflow store, real runs, real registered versions."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from probe_encoders import export_test_encoder, register_test_encoder
from pretrain.models.source import describe_source
from pretrain.tracking.context import ending_run, mlflow_run
from pretrain.tracking.lineage import (
    DEFAULT_EXPERIMENT,
    EncoderSource,
    derived_experiment,
    lineage_tags,
    link_back,
)
from pretrain.tracking.runs import ensure_experiment, start_or_resume_run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("lineage")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_id, registered = register_test_encoder(root, uri)
    return root, uri, run_id, registered


def test_mlflow_run_ends_with_the_blocks_outcome(store):
    _, uri, _, _ = store
    client = MlflowClient(uri)
    experiment = ensure_experiment(client, "outcomes", uri)
    with mlflow_run(client, experiment, run_name="fine", tags={"k": "v"}) as fine:
        assert client.get_run(fine).info.status == "RUNNING"
    with pytest.raises(ValueError, match="boom"):
        with mlflow_run(client, experiment, run_name="broken") as broken:
            raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt):
        with mlflow_run(client, experiment, run_name="stopped") as stopped:
            raise KeyboardInterrupt
    statuses = {client.get_run(r).info.run_name: client.get_run(r).info.status
                for r in (fine, broken, stopped)}
    assert statuses == {"fine": "FINISHED", "broken": "FAILED", "stopped": "KILLED"}
    assert client.get_run(fine).data.tags["k"] == "v"


def test_ending_run_closes_a_resumed_run(store):
    _, uri, _, _ = store
    run_id, resumed = start_or_resume_run(uri, "jobs", "job-a", {"a": "1"}, "a: 1\n")
    assert not resumed
    with pytest.raises(RuntimeError):
        with ending_run(uri, run_id):
            raise RuntimeError("worker died")
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FAILED"
    again, resumed = start_or_resume_run(uri, "jobs", "job-a", {"a": "1"}, "a: 1\n")
    assert (again, resumed) == (run_id, True)
    assert client.get_run(run_id).info.status == "RUNNING"
    with ending_run(client, run_id) as inside:
        assert inside == run_id
    assert client.get_run(run_id).info.status == "FINISHED"


def test_sources_are_described_and_recorded_on_the_derived_run(store, tmp_path):
    _, uri, source_run, registered = store
    client = MlflowClient(uri, registry_uri=uri)
    by_model = describe_source(registered.uri, uri)
    assert by_model == EncoderSource(registered.uri, f"{registered.name}/v1", source_run,
                                     registered.name, "1")
    assert describe_source(f"runs:/{source_run}/encoder", uri) == EncoderSource(
        f"runs:/{source_run}/encoder", f"run {source_run[:8]}", source_run)
    folder = export_test_encoder(tmp_path / "plain", seed=3, run_id=None)
    assert describe_source(folder, uri) == EncoderSource(str(folder), "plain")

    assert lineage_tags("x.", by_model) == {"x.model_uri": registered.uri,
                                            "x.source_run_id": source_run,
                                            "x.model_version": f"{registered.name}/1"}
    assert lineage_tags("x.", describe_source(folder, uri)) == {"x.model_uri": str(folder)}

    # The derived run lives beside its source run, unless an experiment is named; a run this
    # store does not know (another store's) falls back to the default experiment.
    source_experiment = client.get_run(source_run).info.experiment_id
    assert derived_experiment(client, uri, source_run) == source_experiment
    named = derived_experiment(client, uri, source_run, "elsewhere")
    assert client.get_experiment(named).name == "elsewhere"
    unknown = derived_experiment(client, uri, "0" * 32)
    assert client.get_experiment(unknown).name == DEFAULT_EXPERIMENT

    with mlflow_run(client, source_experiment, run_name="derived",
                    tags=lineage_tags("x.", by_model)) as derived:
        pass
    link_back(client, by_model, "x.run_id", derived)
    assert client.get_model_version(registered.name, "1").tags["x.run_id"] == derived
    link_back(client, describe_source(folder, uri), "x.run_id", "never")  # no version: no-op
    assert client.get_model_version(registered.name, "1").tags["x.run_id"] == derived
