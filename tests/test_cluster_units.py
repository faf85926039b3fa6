"""Pieces of the cluster layer that need no cluster: token and address resolution, the job's
config and runtime_env, log parsing, and the exactly-once metric logger on a real MLflow store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from cluster.auth import Token, TokenError, auth_failure_message, resolve_token
from cluster.jobs import (CODE_PACKAGES, JobsError, build_submission, failure_reason, job_config,
                          resolve_address, run_url)
from pretrain.cli.jobs import parse_progress
from pretrain.config import load_config
from pretrain.config.load import ConfigError
from pretrain.tracking.metrics import (MetricLogger, read_unsent, send_missing, step_chunk,
                                       write_unsent)
from pretrain.train.loop import progress_line


# --- tokens -------------------------------------------------------------------------------

def test_token_sources_in_order(tmp_path):
    file_opt = tmp_path / "opt"
    file_opt.write_text("from-option\n")
    file_env = tmp_path / "env-path"
    file_env.write_text("from-path-env")
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home")
    env = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(file_env)}

    assert resolve_token(file_opt, env, home).value == "from-option"
    assert resolve_token(None, env, home).value == "from-env"
    assert resolve_token(None, {"RAY_AUTH_TOKEN_PATH": str(file_env)}, home).value == \
        "from-path-env"
    assert resolve_token(None, {}, home).value == "from-home"
    assert resolve_token(None, {}, tmp_path / "nobody") is None
    assert resolve_token(None, env, home).headers() == {"Authorization": "Bearer from-env"}


def test_unreadable_token_files_fail_with_the_path(tmp_path):
    with pytest.raises(TokenError, match="missing-file"):
        resolve_token(tmp_path / "missing-file", {}, tmp_path)
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(TokenError, match="empty"):
        resolve_token(tmp_path / "empty", {}, tmp_path)


def test_auth_messages_tell_missing_from_wrong_and_never_show_the_token():
    token = Token("s3cr3t-value", "$RAY_AUTH_TOKEN")
    wrong = auth_failure_message("http://h:8265", token, rejected=True)
    missing = auth_failure_message("http://h:8265", None, rejected=False)
    assert "rejected" in wrong and "$RAY_AUTH_TOKEN" in wrong and "s3cr3t" not in wrong
    assert "requires a token" in missing and "--token-file" in missing
    assert "\n" not in wrong + missing


# --- addresses and the job's config -------------------------------------------------------

def test_address_precedence_option_env_config():
    env = {"RAY_ADDRESS": "http://env:8265"}
    assert resolve_address("http://opt:8265/", "http://cfg:8265", env) == "http://opt:8265"
    assert resolve_address(None, "http://cfg:8265", env) == "http://env:8265"
    assert resolve_address(None, "cfg:8265", {}) == "http://cfg:8265"
    with pytest.raises(JobsError, match="--address"):
        resolve_address(None, None, {})


def _cfg(*overrides: str):
    return load_config(None, ["encoder.model=test_resnet", "data.path=/shared/data",
                              "cluster.storage_path=s3://bucket/runs", *overrides])


def test_job_config_joins_its_own_cluster_and_needs_a_tracking_server():
    cfg = _cfg("cluster.address=http://head:8265", "tracking.uri=http://mlflow:5000")
    out = job_config(cfg, env={})
    assert out.cluster.address is None and out.tracking.uri == "http://mlflow:5000"
    assert job_config(_cfg(), env={"MLFLOW_TRACKING_URI": "http://m:1"}).tracking.uri == \
        "http://m:1"
    with pytest.raises(ConfigError, match="tracking.uri"):
        job_config(_cfg(), env={})
    with pytest.raises(ConfigError, match="tracking.uri"):
        job_config(_cfg("tracking.uri=sqlite:///mlflow.db"), env={})


@pytest.mark.parametrize("override, key", [("cluster.storage_path=runs", "cluster.storage_path"),
                                           ("data.path=shards/train", "data.path")])
def test_job_config_refuses_paths_relative_to_this_machine(override, key):
    with pytest.raises(ConfigError, match=key):
        job_config(_cfg("tracking.uri=http://m:1", override), env={})


def test_submission_carries_the_resolved_config_and_optionally_the_code(tmp_path):
    cfg = job_config(_cfg("name=sub-test", "tracking.uri=http://m:1", "optim.lr=0.003"), env={})
    sub = build_submission(cfg, tmp_path)
    assert load_config(tmp_path / "config.yaml") == cfg
    assert sub.runtime_env["working_dir"] == str(tmp_path)
    assert "py_modules" not in sub.runtime_env
    assert sub.entrypoint.endswith("run config.yaml")
    assert sub.submission_id.startswith("sub-test-")
    assert sub.metadata["pretrain.run_name"] == "sub-test"
    other = build_submission(cfg, tmp_path, with_code=True)
    assert other.submission_id != sub.submission_id
    shipped = [Path(p) for p in other.runtime_env["py_modules"]]
    assert [p.name for p in shipped] == list(CODE_PACKAGES)
    assert all((p / "__init__.py").is_file() for p in shipped)


def test_failure_reason_prefers_our_one_line_error():
    ours = ("Job entrypoint command failed with exit code 2, last available logs:\n"
            "some log\npretrain: error: data.path: no shards in /x\n")
    assert failure_reason(ours) == "data.path: no shards in /x"
    trace = "Job failed\nTraceback (most recent call last):\n  File x\nValueError: bad thing\n"
    assert failure_reason(trace) == "ValueError: bad thing"
    assert failure_reason(None) == "no message from Ray"


def test_run_url_points_at_the_mlflow_ui():
    assert run_url("http://m:5000/", "3", "abc") == "http://m:5000/#/experiments/3/runs/abc"


# --- progress lines -------------------------------------------------------------------------

def test_progress_parsed_back_from_the_training_loops_own_line():
    values = {"throughput/img_per_s": 118.4, "loss/total": 21.25,
              "throughput/data_wait_frac": 0.03}
    line = "(RayTrainWorker pid=1, ip=1.2.3.4) INFO pretrain.train: " + progress_line(
        40, 120, values, images_per_step=8)
    parsed = parse_progress(line)
    assert (parsed.step, parsed.total) == (40, 120)
    assert parsed.images_per_s == pytest.approx(118, abs=0.5)
    assert parsed.loss == pytest.approx(21.25)
    # 80 steps left at 118.4/8 steps per second
    seconds = 80 / (118.4 / 8)
    assert parsed.eta == f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    assert "step 40/120 (33%)" in parsed.line()
    assert parse_progress("Checkpoint successfully created at: step 3") is None


# --- metric batching and carry-over --------------------------------------------------------

def _metrics(steps_and_counts: list[tuple[int, int]]) -> list[Metric]:
    return [Metric(f"k{i}", float(i), 1000 + step, step)
            for step, count in steps_and_counts for i in range(count)]


@pytest.mark.parametrize("layout, limit", [([(1, 3), (2, 3), (3, 3)], 7),
                                           ([(1, 2), (2, 5)], 4),
                                           ([(1, 9)], 4),
                                           ([(1, 2)], 4)])
def test_step_chunk_keeps_steps_whole(layout, limit):
    metrics = _metrics(layout)
    chunk = step_chunk(metrics, limit)
    assert chunk == metrics[:len(chunk)] and chunk
    steps = [m.step for m in metrics]
    if len(metrics) <= limit:
        assert chunk == metrics
    elif steps.count(steps[0]) > limit:  # one step alone is too big: cut at the limit
        assert len(chunk) == limit
    else:  # whole steps only, and as many as fit
        cut = len(chunk)
        assert cut <= limit and steps[cut] != steps[cut - 1]
        next_end = cut + steps.count(steps[cut])
        assert next_end > limit


def test_unsent_metrics_round_trip_with_timestamps(tmp_path):
    metrics = _metrics([(4, 2), (5, 1)])
    write_unsent(tmp_path / "u.json", metrics)
    assert read_unsent(tmp_path / "u.json") == metrics
    assert read_unsent(tmp_path / "absent.json") == []


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "a").as_uri())
    return uri, client, client.create_run(experiment).info.run_id


def _history(client, run_id, key="loss/total") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_logger_resumes_exactly_once_and_resends_carried_metrics(store):
    uri, client, run_id = store
    first = MetricLogger(uri, run_id, skip_through_step=None)
    for step in (1, 2, 3, 4):
        first.log_metrics(step, {"loss/total": float(step), "lr": 0.1})
    assert first.close() == []
    # A worker died after step 4 was sent; its last checkpoint (step 2) carried step 2 unsent
    # (really sent later), and steps 3..6 are re-run by the restored worker.
    carried = [Metric("loss/total", 2.0, 5, 2), Metric("lr", 0.1, 5, 2)]
    again = MetricLogger(uri, run_id, skip_through_step=None)
    again.enqueue(carried)
    for step in (3, 4, 5, 6):
        again.log_metrics(step, {"loss/total": float(step) + 0.5, "lr": 0.1})
    assert again.close() == []
    assert _history(client, run_id) == [1, 2, 3, 4, 5, 6]
    assert _history(client, run_id, "lr") == [1, 2, 3, 4, 5, 6]
    values = {m.step: m.value for m in client.get_metric_history(run_id, "loss/total")}
    assert values[4] == 4.0 and values[5] == 5.5  # the first run's step 4 was kept

    late = [Metric("loss/total", 7.0, 9, 7), Metric("loss/total", 5.0, 9, 5)]
    assert send_missing(uri, run_id, late) == [7]
    assert _history(client, run_id) == [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.slow
def test_logger_keeps_metrics_while_the_server_is_down_and_reports_them():
    import socket

    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logger = MetricLogger(f"http://127.0.0.1:{port}", "0" * 32, skip_through_step=-1,
                          retry_seconds=0.2)
    started = time.monotonic()
    for step in (1, 2, 3):
        logger.log_metrics(step, {"loss/total": 1.0})
    assert time.monotonic() - started < 1.0  # logging never waits for the server
    assert sorted({m.step for m in logger.unsent()}) == [1, 2, 3]
    assert logger.close(timeout=1.0) == [1, 2, 3]


# --- the driver's final checkpoint ------------------------------------------------------------

def test_final_checkpoint_is_the_newest_whose_driver_files_verify(tmp_path, caplog):
    import logging

    from test_checkpoint_store import FILES, write_checkpoint

    from cluster.storage import run_store
    from cluster.trainer import final_checkpoint
    from pretrain.train.store import checkpoint_dir_name

    cluster = load_config(None, ["encoder.model=test_resnet",
                                 f"cluster.storage_path={tmp_path / 'runs'}"]).cluster
    assert final_checkpoint(cluster, "r") is None
    store = run_store(cluster, "r")
    assert store.is_local and store.root == str(tmp_path / "runs" / "r")
    for step in (1, 2, 3):
        write_checkpoint(store, step, FILES, tmp_path)
    weights = tmp_path / "runs" / "r" / checkpoint_dir_name(3) / "encoder" / "model.safetensors"
    weights.write_bytes(bytes(reversed(weights.read_bytes())))  # same size, other bytes
    # The engine's files are not the driver's: damage there does not reject checkpoint 2.
    states = tmp_path / "runs" / "r" / checkpoint_dir_name(2) / "engine" / "mp_rank_00_model_states.pt"
    states.write_bytes(bytes(reversed(states.read_bytes()[:-1])) + b"!")
    with caplog.at_level(logging.WARNING, logger="pretrain.workflows.run"):
        found = final_checkpoint(cluster, "r")
    assert found.path == str(tmp_path / "runs" / "r" / checkpoint_dir_name(2))
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping checkpoint {checkpoint_dir_name(3)}: encoder/model.safetensors: SHA-256 does "
        "not match the manifest"]


def test_an_old_ray_checkpoint_index_is_dropped_before_ray_reads_it(tmp_path):
    from cluster.trainer import RAY_SNAPSHOT, drop_ray_snapshot

    cluster = load_config(None, ["encoder.model=test_resnet",
                                 f"cluster.storage_path={tmp_path / 'runs'}"]).cluster
    assert not drop_ray_snapshot(cluster, "r")  # no run folder yet
    snapshot = tmp_path / "runs" / "r" / RAY_SNAPSHOT
    snapshot.parent.mkdir(parents=True)
    snapshot.write_text('{"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_000000008"}]}')
    assert drop_ray_snapshot(cluster, "r") and not snapshot.exists()
