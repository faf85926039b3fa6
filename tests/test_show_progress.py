"""``pretrain show`` and the progress lines of long commands."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import pytest
import typer

from pretrain.progress import progress_lines
from tests.probe_encoders import register_test_encoder


def test_progress_lines_are_throttled_and_give_an_eta():
    now = [100.0]
    out = io.StringIO()
    update = progress_lines("render", every_s=5.0, stream=out, clock=lambda: now[0])
    for t, done in ((110.0, 1), (112.0, 2), (113.0, 3), (120.0, 3), (121.0, 4)):
        now[0] = t
        update(done, 4, "shard" if done == 3 else "")
    assert out.getvalue().splitlines() == [
        "render: 1/4 (25%), 10s elapsed, ETA 30s",  # 10 s for 1 of 4: 30 s to go
        "render: 3/4 (75%) shard, 20s elapsed, ETA 7s",  # 112 and 113 fell inside 5 s
        "render: 4/4 (100%), 21s elapsed, done",  # the last one always prints
    ]


def test_synth3d_generation_prints_progress_without_a_callback(tmp_path, capsys):
    from pretrain.data.synth3d import Synth3DConfig, generate_synth3d

    generate_synth3d(Synth3DConfig(classes=2, instances_per_class=2, views=1, size=16,
                                   render_batch_views=2), tmp_path / "set")
    err = capsys.readouterr().err.splitlines()
    assert err and err[-1].startswith("synth3d set: rendering objects: 4/4 (100%)")
    assert err[-1].endswith("done")


def _cli(*args: str) -> tuple[int, str, str]:
    from pretrain.cli.errors import run_cli
    from pretrain.cli.main import app

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            pytest.raises(SystemExit) as exit_info:
        run_cli(typer.main.get_command(app), list(args))
    return exit_info.value.code, out.getvalue(), err.getvalue()


def test_show_prints_the_profile_table_and_the_png_path(tmp_path):
    from mlflow.tracking import MlflowClient

    from pretrain.probes.report import log_probe_results

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    metrics = {"probe/linear_top1": 0.4125, "probe/knn_top1": 0.375, "probe/health/rankme": 61.25,
               "probe/invariance/crop": 0.83, "probe/equivariance_r2/crop": 0.12,
               "probe/equivariance_r2_mlp/crop": 0.25, "probe/invariance/hue": math.nan,
               "probe/equivariance_r2/hue": -0.5}
    run_id, registered = register_test_encoder(tmp_path, uri, name="shown")
    log_probe_results(uri, run_id, metrics, step=5)
    code, out, _ = _cli("show", "models:/shown/1", "--tracking-uri", uri)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"run pretrain ({run_id}), RUNNING, experiment pretraining")
    assert "model models:/shown/1" in lines
    assert "linear probe top-1         41.2%" in lines
    assert "kNN top-1                  37.5%" in lines
    assert "crop                  0.83       0.12    0.25" in lines
    assert "hue                    n/a      -0.50     n/a" in lines  # NaN is not logged
    png = Path(lines[-1].removeprefix("invariance profile: "))
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.name == "invariance_profile.png" and run_id in str(png)
    for source in (run_id, "pretrain", f"runs:/{run_id}/encoder"):
        assert _cli("show", source, "--tracking-uri", uri)[1] == out
    MlflowClient(uri).set_terminated(run_id)
    for source in ("no-such-run", "0" * 32, "models:/shown/7"):
        code, _, err = _cli("show", source, "--tracking-uri", uri)
        assert code == 2 and err.count("\n") == 1, (source, err)


def test_mlflow_run_ends_with_the_blocks_outcome(tmp_path):
    from mlflow.tracking import MlflowClient

    from pretrain.tracking.context import mlflow_run
    from pretrain.tracking.runs import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = ensure_experiment(client, "ctx", uri)
    ids = {}
    with mlflow_run(client, experiment, run_name="ok", tags={"k": "v"}) as ids["ok"]:
        assert client.get_run(ids["ok"]).info.status == "RUNNING"
    for name, error in (("failed", ValueError("boom")), ("killed", KeyboardInterrupt())):
        with pytest.raises(type(error)):
            with mlflow_run(client, experiment, run_name=name) as ids[name]:
                raise error
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"ok": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
    assert client.get_run(ids["ok"]).data.tags["k"] == "v"
