"""The cluster path for real, on loopback: a two-node Ray cluster (token auth, 1 CPU per node), an
MLflow server (SQLite, artifacts in S3) and an S3 store (moto). Jobs go through ``pretrain
submit``; every interrupted run must end with bitwise the uninterrupted run's encoder and each
step once in MLflow. Run alone with ``pytest -m cluster``."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import typer
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

import cluster_fixtures as cf
from pretrain.cli.errors import run_cli
from pretrain.cli.main import app
from pretrain.data.synth3d import Synth3DConfig, generate_synth3d
from pretrain.hub import pull
from pretrain.models.model_registry import VERSION_TAG
from pretrain.tracking.runs import find_run_by_name

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")]

STEPS = 36  # 48 samples / (2 workers x batch 4) = 6 steps per epoch, 6 epochs
EVERY = 4  # checkpoint interval
EXPERIMENT = "invariant-pretrain"


@dataclass
class Stack:
    services: cf.Services
    s3: cf.S3Store
    mlflow: cf.MlflowServer
    ray: cf.RayCluster
    config: Path
    token_file: Path

    def client(self) -> MlflowClient:
        return MlflowClient(self.mlflow.uri)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    services = cf.Services(root)
    try:
        s3 = cf.start_s3(services)
        mlflow = cf.start_mlflow(services, s3, wait=False)
        ray = cf.start_ray(services, services.env(**s3.env(),
                                                  RAY_TRAIN_ENABLE_STATE_TRACKING="1"))
        mlflow.wait_ready()
        shards = root / "shards"  # one machine: a local folder stands in for shared storage
        generate_synth3d(Synth3DConfig(classes=4, instances_per_class=12, views=2, size=32,
                                       shard_size=8), shards)
        config = root / "base.yaml"
        config.write_text(yaml.safe_dump({
            "data": {"path": str(shards), "image_size": 32, "batch_size": 4, "num_workers": 0,
                     "shuffle_buffer": 8},
            "encoder": {"model": "test_resnet"},
            "objective": {"vicreg": {"expander_dims": [32, 32]}},
            "deepspeed": {"zero_stage": 2},
            "cluster": {"num_workers": 2, "cpus_per_worker": 1, "max_failures": 2,
                        "storage_path": f"s3://{s3.bucket}/runs", "storage_endpoint": s3.endpoint},
            "checkpoint": {"every_steps": EVERY, "keep": 2},
            "tracking": {"uri": mlflow.uri, "experiment": EXPERIMENT, "log_every_steps": 1,
                         "system_metrics": False},
            "registry": {"name": "cluster-encoder"},
            "train": {"epochs": 6},
            "probes": {"enabled": False},
        }))
        token_file = root / "ray_token"
        token_file.write_text(ray.token)
        yield Stack(services, s3, mlflow, ray, config, token_file)
    finally:
        left = services.reap()
        cf.remove_temp_dirs(services)
        assert not left, f"processes left behind: {sorted(left)}"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``pretrain ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_cli(typer.main.get_command(app), list(args))
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def submit(stack: Stack, capsys, name: str, *extra: str) -> str:
    code, out, err = cli(capsys, "submit", str(stack.config), *extra, "--name", name,
                         "--address", stack.ray.dashboard, "--token-file", str(stack.token_file),
                         "--wait-run", "0")
    assert code == 0, err
    return next(line.split()[-1] for line in out.splitlines() if line.startswith("job id:"))


def follow(stack: Stack, capsys, job_id: str) -> tuple[int, str, str]:
    return cli(capsys, "logs", job_id, "--follow", "--address", stack.ray.dashboard,
               "--token-file", str(stack.token_file))


def run_of(stack: Stack, name: str, timeout: float = 240):
    client = stack.client()
    found = []
    cf.wait_until(lambda: found.append(_run(client, name)) or found[-1] is not None, timeout,
                  f"MLflow run {name}")
    return found[-1]


def _run(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return None if experiment is None else find_run_by_name(client, experiment.experiment_id,
                                                             name)


def last_step(stack: Stack, run_id: str) -> int:
    return max((m.step for m in stack.client().get_metric_history(run_id, "loss/total")),
               default=0)


def wait_for_step(stack: Stack, run_id: str, step: int, timeout: float = 300) -> None:
    cf.wait_until(lambda: last_step(stack, run_id) >= step, timeout, f"step {step}", poll=0.2)


def assert_each_step_once(stack: Stack, run_id: str) -> None:
    """Every key logged by the loop has steps 1..STEPS, each exactly once."""
    client = stack.client()
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("system/")]
    assert "loss/total" in keys and "lr" in keys
    for key in keys:
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(1, STEPS + 1)), key


def encoder_weights(stack: Stack, run_id: str, out: Path) -> dict[str, torch.Tensor]:
    """The encoder registered by the run, pulled back through the MLflow server (from S3)."""
    name, _, version = stack.client().get_run(run_id).data.tags[VERSION_TAG].rpartition("/")
    folder = pull(f"models:/{name}/{version}", out, tracking_uri=stack.mlflow.uri)
    return load_file(folder / "model.safetensors")


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def registered_step(stack: Stack, name: str) -> int:
    """The step of the newest checkpoint of run ``name`` whose manifest is written (0: none):
    the one a resume would start from."""
    keys = stack.s3.keys(f"runs/{name}/checkpoint_")
    return max((int(k.split("/")[2].split("_")[1]) for k in keys if k.endswith("/manifest.json")),
               default=0)


def wait_for_registered_checkpoint(stack: Stack, name: str, timeout: float = 300) -> None:
    cf.wait_until(lambda: registered_step(stack, name) > 0, timeout, f"a checkpoint of {name}",
                  poll=0.2)


def resumed_steps(log: str) -> list[int]:
    return sorted(int(line.split("resumed at step ")[1].split()[0])
                  for line in log.splitlines() if "resumed at step" in line)


def checkpoint_dirs(stack: Stack, name: str) -> set[str]:
    """Checkpoint folders in the bucket."""
    parts = [key.split("/") for key in stack.s3.keys(f"runs/{name}/checkpoint_")]
    return {p[2] for p in parts if len(p) > 3}


@pytest.fixture(scope="module")
def reference(stack, tmp_path_factory):
    """One uninterrupted run (submitted with this checkout's code and followed with the CLI):
    the weights every interrupted run must reproduce."""
    started = time.monotonic()
    with _captured() as cap:
        code, out, err = cli(cap, "submit", str(stack.config), "--name", "reference",
                             "--with-code", "--follow", "--address", stack.ray.dashboard,
                             "--token-file", str(stack.token_file))
    run = _run(stack.client(), "reference")
    print(f"[cluster] reference job: {time.monotonic() - started:.0f}s from submit to success")
    return {"code": code, "out": out, "err": err, "run": run, "seconds": time.monotonic() - started,
            "weights": encoder_weights(stack, run.info.run_id,
                                       tmp_path_factory.mktemp("ref-encoder"))}


@contextlib.contextmanager
def _captured():
    """A capsys-like reader for module-scoped fixtures (pytest's capsys is function-scoped)."""
    import io
    import sys

    class Cap:
        def __init__(self) -> None:
            self.out, self.err = io.StringIO(), io.StringIO()

        def readouterr(self):
            out, err = self.out.getvalue(), self.err.getvalue()
            self.out.seek(0), self.out.truncate(), self.err.seek(0), self.err.truncate()
            return type("Out", (), {"out": out, "err": err})

    cap = Cap()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = cap.out, cap.err
    try:
        yield cap
    finally:
        sys.stdout, sys.stderr = saved


def test_submit_follow_and_find_everything_in_mlflow_and_s3(stack, reference, capsys):
    assert reference["code"] == 0, reference["err"][-2000:]
    out, err = reference["out"], reference["err"]
    job_id = next(line.split()[-1] for line in out.splitlines() if line.startswith("job id:"))
    assert f"Ray dashboard: {stack.ray.dashboard}/#/jobs/{job_id}" in out
    run = reference["run"]
    assert f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in out
    assert f"progress: step {STEPS}/{STEPS} (100%)" in err
    assert out.rstrip().endswith(f"job {job_id} succeeded")

    # Two workers, one on each node.
    workers = [w for r in _train_runs(stack) if r["name"] == "reference"
               for w in r["attempts"][-1]["workers"]]
    assert sorted(w["world_rank"] for w in workers) == [0, 1]
    assert len({w["node_id"] for w in workers}) == 2

    client = stack.client()
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert_each_step_once(stack, run.info.run_id)
    assert client.get_run(run.info.run_id).data.params["deepspeed.zero_stage"] == "2"
    version = client.get_run(run.info.run_id).data.tags[VERSION_TAG]
    assert version.startswith("cluster-encoder/")
    # Artifacts went through the server into the bucket; checkpoints too, `keep` of them.
    assert any(k.endswith("encoder/model.safetensors") for k in stack.s3.keys("mlartifacts/"))
    assert checkpoint_dirs(stack, "reference") == {f"checkpoint_{STEPS - EVERY:09d}",
                                                   f"checkpoint_{STEPS:09d}"}

    code, out, _ = cli(capsys, "status", job_id, "--address", stack.ray.dashboard,
                       "--token-file", str(stack.token_file))
    assert code == 0 and "SUCCEEDED" in out and "reference" in out
    code, out, _ = cli(capsys, "jobs", "--address", stack.ray.dashboard,
                       "--token-file", str(stack.token_file))
    row = next(line for line in out.splitlines() if line.startswith(job_id))
    assert code == 0 and row.split()[1] == "SUCCEEDED" and row.split()[-1] == "reference"


def _train_runs(stack: Stack) -> list[dict]:
    import requests

    return requests.get(f"{stack.ray.dashboard}/api/train/v2/runs/v1",
                        headers=stack.ray.headers(), timeout=10).json()["train_runs"]


def _alive_rank0_pid(stack: Stack, name: str) -> int | None:
    for run in _train_runs(stack):
        if run["name"] == name and run["attempts"]:
            for worker in run["attempts"][-1]["workers"]:
                if worker["world_rank"] == 0 and worker.get("status") != "DEAD":
                    return worker["pid"]
    return None


def test_sigkilled_worker_is_replaced_and_the_run_ends_identical(stack, reference, capsys,
                                                                 tmp_path):
    job_id = submit(stack, capsys, "killed")
    run = run_of(stack, "killed")
    wait_for_step(stack, run.info.run_id, EVERY + 1)
    wait_for_registered_checkpoint(stack, "killed")
    pid = _alive_rank0_pid(stack, "killed")
    assert pid is not None
    registered = registered_step(stack, "killed")
    os.kill(pid, 9)  # rank 0: it also holds the MLflow logger and its unsent metrics
    killed_at = last_step(stack, run.info.run_id)
    assert killed_at < STEPS, "the run ended before the kill"

    code, out, err = follow(stack, capsys, job_id)
    assert code == 0, err[-2000:]
    # The replacement group restored the newest checkpoint with a manifest (rank 0 and rank 1).
    resumed = resumed_steps(out)
    assert len(resumed) == 2 and resumed[0] == resumed[1] >= registered
    assert_each_step_once(stack, run.info.run_id)
    assert_same_weights(encoder_weights(stack, run.info.run_id, tmp_path), reference["weights"])
    print(f"[cluster] SIGKILL rank 0 (pid {pid}) at logged step {killed_at}, registered "
          f"checkpoint {registered}; workers resumed at {resumed[0]}")


def test_stopped_job_resubmitted_resumes_and_ignores_a_half_written_checkpoint(
        stack, reference, capsys, tmp_path):
    job_id = submit(stack, capsys, "stopped")
    run = run_of(stack, "stopped")
    wait_for_step(stack, run.info.run_id, EVERY + 1)
    wait_for_registered_checkpoint(stack, "stopped")
    code, out, _ = cli(capsys, "stop", job_id, "--address", stack.ray.dashboard,
                       "--token-file", str(stack.token_file))
    assert code == 0 and "stopped" in out
    stopped_at = last_step(stack, run.info.run_id)
    assert stopped_at < STEPS, "the run ended before the stop"
    # Issue 11 item 8: the driver marks the run KILLED before Ray's SIGKILL, steps intact.
    assert stack.client().get_run(run.info.run_id).info.status == "KILLED"
    registered = registered_step(stack, "stopped")

    # What a crash in the middle of an upload leaves: a newer folder without a manifest.
    bogus = "runs/stopped/checkpoint_000000099"
    stack.s3.client().put_object(Bucket=stack.s3.bucket, Key=f"{bogus}/train_state.json",
                                 Body=b'{"step": 99, "mlflow_run_id": null}')
    stack.s3.client().put_object(Bucket=stack.s3.bucket, Key=f"{bogus}/engine/partial",
                                 Body=b"half")

    again = submit(stack, capsys, "stopped")
    code, out, err = follow(stack, capsys, again)
    assert code == 0, err[-2000:]
    assert resumed_steps(out) == [registered, registered]  # not 99, not a newer unregistered one
    assert run_of(stack, "stopped").info.run_id == run.info.run_id  # one MLflow run
    assert "checkpoint_000000099" in checkpoint_dirs(stack, "stopped")  # left alone, unused
    assert_each_step_once(stack, run.info.run_id)
    assert_same_weights(encoder_weights(stack, run.info.run_id, tmp_path), reference["weights"])
    print(f"[cluster] stopped at logged step {stopped_at}, registered checkpoint {registered}; "
          f"re-submitted job resumed at {registered}")


def test_mlflow_outage_mid_run_training_goes_on_and_metrics_arrive_later(stack, reference,
                                                                         capsys, tmp_path):
    job_id = submit(stack, capsys, "outage")
    run = run_of(stack, "outage")
    wait_for_step(stack, run.info.run_id, 3)
    down_at = time.time()
    stack.mlflow.stop(stack.services)
    time.sleep(8)  # training goes on meanwhile; restarting the server takes a while more
    stack.mlflow.start(stack.services)
    up_at = time.time()

    code, out, err = follow(stack, capsys, job_id)
    assert code == 0, err[-2000:]
    assert not resumed_steps(out)  # no restart was needed
    assert_each_step_once(stack, run.info.run_id)
    history = stack.client().get_metric_history(run.info.run_id, "loss/total")
    during = sorted(m.step for m in history if down_at * 1000 < m.timestamp < up_at * 1000)
    assert during, "no step was trained while MLflow was down"
    assert_same_weights(encoder_weights(stack, run.info.run_id, tmp_path), reference["weights"])
    by = ("the driver, from the final checkpoint" if "not sent to MLflow yet" in out
          else "rank 0's logger, on retry")
    print(f"[cluster] MLflow down for {up_at - down_at:.0f}s; steps trained meanwhile "
          f"{during[0]}..{during[-1]}, sent later by {by}; all {STEPS} steps once, none lost")


def test_clear_one_line_errors(stack, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token to fall back on
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    address = ("--address", stack.ray.dashboard)

    code, _, err = cli(capsys, "jobs", *address)
    assert code == 1 and "requires a token" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    code, _, err = cli(capsys, "jobs", *address)
    assert code == 1 and "rejected the token from $RAY_AUTH_TOKEN" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setenv("RAY_AUTH_TOKEN", stack.ray.token)  # the right one, from the environment
    code, out, _ = cli(capsys, "jobs", *address)
    assert code == 0 and out.startswith("JOB ID")

    code, _, err = cli(capsys, "status", "no-such-job", *address)
    assert code == 1 and "no job no-such-job" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "jobs", "--address", f"http://127.0.0.1:{cf.free_port()}")
    assert code == 1 and "cannot reach the Ray dashboard" in err

    # A job that fails on the cluster: the driver's own one-line error comes back.
    job_id = submit(stack, capsys, "broken", "data.path=/nonexistent/shards")
    code, _, err = follow(stack, capsys, job_id)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith(f"pretrain: error: job {job_id} failed:")
    assert "/nonexistent/shards" in err.strip().splitlines()[-1]
