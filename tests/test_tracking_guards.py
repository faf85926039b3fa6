"""Issue 11, items 2, 7 and 11: no secret reaches MLflow or a job, a run name keeps its config,
and an unreachable MLflow server is one line within seconds. Real MLflow (SQLite) stores, real
sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from cluster.jobs import TRACKING_KEY, build_submission, job_config
from pretrain.config import ConfigError, config_to_yaml, flatten, load_config
from pretrain.trust.redact import redact, redact_text, strip_userinfo
from pretrain.tracking.reachable import TrackingUnreachable, check_reachable
from pretrain.tracking.runs import start_or_resume_run

SECRETS = ("tracking.uri=https://alice:PASS1@mlflow.example.com",
           # (userinfo in cluster.storage_* never gets this far: validation refuses it)
           "deepspeed.extra.comet.url=http://KEY2:SECRET2@comet.example.com",
           "data.path=https://data.example.com/train-{000..009}.tar?token=TOKEN3&part=1",
           "deepspeed.extra.monitor.api_key=APIKEY4",
           "deepspeed.extra.comet.project=visible")
LEAKS = ("PASS1", "KEY2", "SECRET2", "TOKEN3", "APIKEY4")


# ---------------------------------------------------------------- the one redaction function


@pytest.mark.parametrize("text, expected", [
    ("https://user:pw@host:5000/x", "https://***@host:5000/x"),
    ("s3://AKIA:abc@bucket/prefix", "s3://***@bucket/prefix"),
    ("http://host/a.tar?token=t0k&x=1", "http://host/a.tar?token=***&x=1"),
    ("http://h/a?X-Amz-Signature=ab12&X-Amz-Credential=AK%2F1&v=2",
     "http://h/a?X-Amz-Signature=***&X-Amz-Credential=***&v=2"),
    ("pipe:curl -s -H 'Authorization: Bearer abc.def' https://u:p@h/s.tar",
     "pipe:curl -s -H 'Authorization: Bearer ***' https://***@h/s.tar"),
    ("/data/shards/train-{000..009}.tar", "/data/shards/train-{000..009}.tar"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("user@example.com", "user@example.com"),  # not a URI: no scheme
    # A raw "@" in the password: the userinfo ends at the authority's last "@", as urllib reads it.
    ("https://alice:p@ss@host/x", "https://***@host/x"),
    ("https://host/a@b/c", "https://host/a@b/c"),  # "@" in the path is no userinfo
    ("pipe:curl -s -u user:pw https://h/s.tar", "pipe:curl -s -u *** https://h/s.tar"),
    ("pipe:curl --user='user:pw' https://h/s.tar", "pipe:curl --user='***' https://h/s.tar"),
])
def test_redact_text_known_answers(text, expected):
    assert redact_text(text) == expected


def test_redact_tree_hides_secret_named_keys_whole():
    tree = {"a": {"api_key": "k", "Password": {"x": 1}, "sessionToken": ["t"], "n_tokens": 0,
                  "name": "ok", "empty_secret": None},
            "b": [1, "https://u:p@h"]}
    assert redact(tree) == {"a": {"api_key": "***", "Password": "***", "sessionToken": "***",
                                  "n_tokens": 0, "name": "ok", "empty_secret": None},
                            "b": [1, "https://***@h"]}
    assert strip_userinfo("https://u:p@h:1/x") == "https://h:1/x"
    assert strip_userinfo("https://u:p@ss@h:1/x") == "https://h:1/x"


# ---------------------------------------------------------------- MLflow params and config.yaml


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    return f"sqlite:///{db}"


def _start(store: str, cfg, allow: bool = False) -> tuple[str, bool]:
    return start_or_resume_run(store, "guards", cfg.name, flatten(cfg), config_to_yaml(cfg),
                               allow_config_change=allow)


def test_no_secret_reaches_params_or_the_config_artifact(store, tmp_path):
    # Issue 11 item 2: all four appeared verbatim in params and in config.yaml.
    cfg = load_config(None, ["name=secrets", *SECRETS])
    run_id, resumed = _start(store, cfg)
    assert not resumed
    client = MlflowClient(store)
    params = client.get_run(run_id).data.params
    stored = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path)))
                            .read_text())
    text = repr(params) + repr(stored)
    for leak in LEAKS:
        assert leak not in text, leak
    assert params["tracking.uri"] == "https://***@mlflow.example.com"
    assert params["data.path"] == ("https://data.example.com/train-{000..009}.tar?token=***"
                                   "&part=1")
    assert params["deepspeed.extra.monitor.api_key"] == "***"
    assert params["deepspeed.extra.comet.project"] == "visible"
    assert stored["deepspeed"]["extra"]["comet"]["url"] == "http://***@comet.example.com"


# ---------------------------------------------------------------- a run name keeps its config


def test_resume_refuses_a_changed_config_and_names_the_keys(store):
    # Issue 11 item 7: a run name silently kept its first config (objective.name=sie in the
    # params, vicreg in the registered version).
    first = load_config(None, ["name=keeps", "objective.name=simclr"])
    run_id, _ = _start(store, first)
    changed = load_config(None, ["name=keeps", "objective.name=vicreg", "optim.lr=0.5"])
    with pytest.raises(ConfigError) as caught:
        _start(store, changed)
    message = str(caught.value)
    assert "objective.name (simclr -> vicreg)" in message
    assert "optim.lr (0.001 -> 0.5)" in message
    assert "--allow-config-change" in message
    assert "\n" not in message
    # What resume allows: the stop step, logging, probes, registry.
    allowed = load_config(None, ["name=keeps", "objective.name=simclr", "train.max_steps=3",
                                 "tracking.log_every_steps=1", "probes.enabled=false",
                                 "registry.alias=best"])
    assert _start(store, allowed) == (run_id, True)
    # The explicit flag resumes anyway and records what changed.
    assert _start(store, changed, allow=True) == (run_id, True)
    tags = MlflowClient(store).get_run(run_id).data.tags
    assert "objective.name (simclr -> vicreg)" in tags["pretrain.config_changed"]


def test_generated_data_in_another_cache_folder_is_no_change():
    from pretrain.tracking.runs import config_changes, refused_changes

    stored = {"data.path": "/a/.pretrain/data/synth3d-0123456789", "optim.lr": "0.001"}
    moved = {"data.path": "/b/.pretrain/data/synth3d-0123456789", "optim.lr": "0.001",
             "new.setting": "1"}
    assert config_changes(stored, moved) == {}
    other = {"data.path": "/a/.pretrain/data/synth3d-9999999999", "optim.lr": "0.001"}
    assert refused_changes(config_changes(stored, other)) == ["data.path"]
    assert refused_changes(config_changes({"data.path": "/x/imported"},
                                          {"data.path": "/y/imported"})) == ["data.path"]


# ---------------------------------------------------------------- unreachable MLflow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connection_is_one_line_at_once():
    port = _free_port()
    started = time.monotonic()
    with pytest.raises(TrackingUnreachable) as caught:
        check_reachable(f"http://bob:PW@127.0.0.1:{port}")
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert message.startswith(f"MLflow server http://***@127.0.0.1:{port} is not reachable")
    assert "PW" not in message and "\n" not in message


def test_silent_server_is_one_line_after_the_timeout():
    # Issue 11 item 11: a server that never answers took 1,220 s before one line.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts connections; nobody ever answers
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(TrackingUnreachable, match="no answer within 2 s"):
            check_reachable(f"http://127.0.0.1:{port}", timeout=2.0)
        assert 1.5 < time.monotonic() - started < 5
    check_reachable("sqlite:////nonexistent/mlflow.db")  # local stores are not checked


def test_cli_run_against_a_dead_server_is_one_line_exit_1(tmp_path):
    # Issue 11 item 11: a refused connection took 256 s (MLflow's retries) before one line.
    port = _free_port()
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    pretrain = str(Path(sys.executable).with_name("pretrain"))
    result = subprocess.run([pretrain, "run", str(config), f"tracking.uri=http://127.0.0.1:{port}"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith(
        f"pretrain: error: MLflow server http://127.0.0.1:{port} is not reachable ("), lines
    assert list(tmp_path.iterdir()) == [config]  # checked first: no data generated, no store


# ---------------------------------------------------------------- what a Ray job carries


def test_submit_ships_no_credentials(tmp_path):
    # Issue 11 item 2: submit copied $MLFLOW_TRACKING_URI, password included, into the shipped
    # config and the job metadata.
    env = {"MLFLOW_TRACKING_URI": "https://carol:PW5@mlflow.example.com:5000"}
    cfg = load_config(None, ["name=job", "data.path=/shared/data",
                             "cluster.storage_path=s3://bucket/runs"])
    shipped = job_config(cfg, env=env)
    assert shipped.tracking.uri == "https://mlflow.example.com:5000"
    submission = build_submission(shipped, tmp_path)
    assert "PW5" not in (tmp_path / "config.yaml").read_text()
    assert "PW5" not in repr(submission)
    assert submission.metadata[TRACKING_KEY] == "https://mlflow.example.com:5000"
    with pytest.raises(ConfigError, match=r"^data\.path: holds a credential"):
        job_config(load_config(None, ["data.path=https://h/s.tar?token=x",
                                      "cluster.storage_path=s3://b/r"]), env=env)


def test_cli_submit_refuses_a_credential_before_contacting_any_cluster(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    pretrain = str(Path(sys.executable).with_name("pretrain"))
    port = _free_port()  # nothing listens there: the refusal must come first
    result = subprocess.run(
        [pretrain, "submit", str(config), "data.path=/shared/data", "cluster.storage_path=s3://b/r",
         "deepspeed.extra.monitor.api_key=APIKEY6", "--address", f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "MLFLOW_TRACKING_URI": "https://u:PW@mlflow.example.com"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(
        "pretrain: error: deepspeed.extra.monitor.api_key: holds a credential"), lines
    assert "APIKEY6" not in result.stderr and "PW" not in result.stderr


@pytest.mark.slow
def test_real_mlflow_server_passes_the_check_and_gets_no_credential(tmp_path):
    """Against a real ``mlflow server``: the reachability check passes (also with userinfo in
    the URI, which the probe leaves out), and a run created through the server with credentials
    in its config stores none of them."""
    port = _free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", (tmp_path / "artifacts").as_uri()],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                check_reachable(uri, timeout=2.0)
                break
            except TrackingUnreachable:
                assert time.monotonic() < deadline and server.poll() is None, "server never up"
                time.sleep(1)
        check_reachable(f"http://someone:PW@127.0.0.1:{port}")
        cfg = load_config(None, ["name=via-server", *SECRETS])
        run_id, _ = start_or_resume_run(uri, "guards", cfg.name, flatten(cfg), config_to_yaml(cfg))
        client = MlflowClient(uri)
        params = client.get_run(run_id).data.params
        stored = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text()
        for leak in LEAKS:
            assert leak not in repr(params) + stored, leak
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
