"""Offline probing of registered encoders: linked MLflow runs, PNG artifacts, comparison, CLI."""

from __future__ import annotations

import math

import mlflow.artifacts
import pytest
import typer
from mlflow.tracking import MlflowClient
from PIL import Image

from probe_encoders import export_test_encoder, register_test_encoder
from pretrain.cli.errors import run_cli
from pretrain.cli.probe import probe
from pretrain.probes.config import ProbesConfig
from pretrain.workflows.probe import compare_models, probe_model
from pretrain.probes.plots import plot_comparison, plot_invariance_profile


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_id, registered = register_test_encoder(root, uri)
    cfg = ProbesConfig(cache_dir=str(root / "cache"), max_train=24, max_test=12, pairs_train=16,
                       pairs_test=8, synth3d_size=24, mlp_steps=60)
    return root, uri, run_id, registered, cfg


def _png(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_probe_model_logs_a_run_linked_to_the_source(store, tmp_path):
    root, uri, source_run, registered, cfg = store
    result = probe_model(registered.uri, "synth3d", ["rotation", "hue", "object_rotation"], uri,
                         cfg=cfg)
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    source = client.get_run(source_run)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == source.info.experiment_id
    assert run.data.tags["pretrain.probe.source_run_id"] == source_run
    assert run.data.tags["pretrain.probe.model_version"] == f"{registered.name}/1"
    version = client.get_model_version(registered.name, "1")
    assert version.tags["pretrain.probe.run_id"] == result.run_id
    logged = run.data.metrics
    for key in ("probe/linear_top1", "probe/knn_top1", "probe/invariance/object_rotation",
                "probe/equivariance_r2_mlp/hue", "probe/health/rankme"):
        assert logged[key] == pytest.approx(result.metrics[key])
    assert not any("crop" in k for k in logged)  # only the requested transformations
    listed = {a.path for a in client.list_artifacts(result.run_id, "probes")}
    assert "probes/invariance_profile.png" in listed
    png = mlflow.artifacts.download_artifacts(run_id=result.run_id, tracking_uri=uri,
                                              artifact_path="probes/invariance_profile.png",
                                              dst_path=str(tmp_path))
    width, height = _png(png)
    assert width > 800 and height > 400


def test_compare_models_logs_one_run_with_every_model(store, tmp_path):
    root, uri, _, registered, cfg = store
    other = export_test_encoder(tmp_path / "other", seed=7)
    result = compare_models([registered.uri, str(other)], "synth3d", ["rotation"], uri, cfg=cfg)
    run = MlflowClient(uri).get_run(result.run_id)
    assert run.data.tags["pretrain.probe.compare"] == "true"
    labels = list(result.metrics)
    assert labels == [f"{registered.name}/v1", "other"]
    assert run.data.metrics["enc-test_v1/probe/invariance/rotation"] == pytest.approx(
        result.metrics[labels[0]]["probe/invariance/rotation"])
    assert "other/probe/linear_top1" in run.data.metrics
    png = mlflow.artifacts.download_artifacts(run_id=result.run_id, tracking_uri=uri,
                                              artifact_path="probes/comparison.png",
                                              dst_path=str(tmp_path))
    assert _png(png)[0] > 800


def test_plots_accept_missing_and_extreme_values(tmp_path):
    metrics = {"probe/invariance/crop": 0.8, "probe/equivariance_r2/crop": -3.0,
               "probe/invariance/light": math.nan, "probe/equivariance_r2_mlp/light": 0.5,
               "probe/linear_top1": 0.5}
    assert _png(plot_invariance_profile(metrics, tmp_path / "a.png"))[0] >= 960
    assert _png(plot_comparison({"a": metrics, "b": {"probe/invariance/hue": 1.0}},
                                tmp_path / "b.png"))[0] >= 1080


def _cli(args, capsys):
    app = typer.Typer()
    app.command()(probe)
    app.command("unused")(lambda: None)  # two commands: typer keeps 'probe' as a subcommand
    with pytest.raises(SystemExit) as exit_info:
        run_cli(typer.main.get_command(app), ["probe", *args])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_probe_cli(store, capsys):
    root, uri, source_run, registered, cfg = store
    common = ["--data", "synth3d", "--max-train", "24", "--max-test", "12", "--pairs", "8",
              "--cache-dir", cfg.cache_dir, "--tracking-uri", uri]
    code, out, _ = _cli([registered.uri, "--transforms", "rotation,flip", *common], capsys)
    assert code == 0
    assert "probe/invariance/flip" in out and f"source run {source_run}" in out
    code, _, err = _cli([registered.uri, "--transforms", "spin", *common], capsys)
    assert code == 2 and "--transforms" in err and "spin" in err
    code, _, err = _cli([registered.uri, "--compare", *common], capsys)
    assert code == 2 and "--compare needs at least two" in err


def _blocked_experiment(client, root, name: str) -> str:
    """An experiment whose artifact folder cannot be created (a file sits where its parent
    should be): params and metrics log, the first artifact upload fails."""
    blocker = root / f"{name}-blocker"
    blocker.write_text("not a folder")
    return client.create_experiment(name, artifact_location=(blocker / "artifacts").as_uri())


def test_a_probe_that_fails_inside_its_run_ends_it_failed(store):
    root, uri, _, registered, cfg = store
    client = MlflowClient(uri)
    experiment = _blocked_experiment(client, root, "probe-blocked")
    with pytest.raises(OSError):
        probe_model(registered.uri, "synth3d", ["rotation"], uri, cfg=cfg,
                    experiment="probe-blocked")
    (run,) = client.search_runs([experiment])
    assert run.info.status == "FAILED"
    assert run.data.tags["pretrain.probe.model_uri"] == registered.uri
    assert "probe/linear_top1" in run.data.metrics  # it failed inside the run, not before
    version = client.get_model_version(registered.name, "1")
    assert version.tags.get("pretrain.probe.run_id") != run.info.run_id  # no link to a failure
