"""Real services on loopback for the cluster tests: an S3-compatible store (moto's server), an
MLflow server (SQLite + S3 artifacts) and a two-node Ray cluster with token authentication.

Every service runs in its own session (``start_new_session``); teardown finds each process of
those sessions, their descendants, and anything carrying this suite's marker variable, and
kills them by pid. ``ray stop`` is never used: it would kill every Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

VENV_BIN = Path(sys.executable).parent
MARKER_ENV = "PRETRAIN_TEST_SERVICES"
S3_KEY, S3_SECRET, S3_REGION = "pretrain-test-key", "pretrain-test-secret", "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(poll)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    return requests.get(url, headers=headers, timeout=3).status_code < 500


@dataclass
class Services:
    """Processes started by this suite; :meth:`reap` kills all of them by pid."""

    root: Path
    marker: str = field(default_factory=lambda: secrets.token_hex(8))
    sessions: dict[str, subprocess.Popen] = field(default_factory=dict)
    temp_dirs: list[Path] = field(default_factory=list)  # removed after reaping

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                   **{MARKER_ENV: self.marker})
        env.update(extra)
        return env

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.sessions[name] = proc
        return proc

    def pids(self, names: list[str] | None = None) -> set[int]:
        """Our processes: members of our sessions, their descendants, and (unless ``names``
        narrows it down) anything that inherited our marker variable."""
        sids = {p.pid for n, p in self.sessions.items() if names is None or n in names}
        parents: dict[int, int] = {}
        ours: set[int] = set()
        for proc in psutil.process_iter(["pid", "ppid"]):
            parents[proc.pid] = proc.info["ppid"]
            try:
                if os.getsid(proc.pid) in sids:
                    ours.add(proc.pid)
                elif names is None and proc.environ().get(MARKER_ENV) == self.marker:
                    ours.add(proc.pid)
            except (OSError, psutil.Error):
                continue
        grew = True
        while grew:
            grew = False
            for pid, ppid in parents.items():
                if pid not in ours and ppid in ours:
                    ours.add(pid)
                    grew = True
        ours.discard(os.getpid())
        return ours

    def stop(self, name: str, grace: float = 10.0) -> None:
        """Stop one service and everything it started (SIGTERM, then SIGKILL), by pid."""
        _terminate(self.pids([name]), grace)
        self.sessions.pop(name).wait(timeout=grace)

    def reap(self, grace: float = 15.0) -> set[int]:
        """Stop everything; returns the pids that were still alive afterwards (none, we hope)."""
        for name in list(self.sessions):
            try:
                self.sessions[name].send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.pids():
            for proc in self.sessions.values():
                proc.poll()  # reap exited leaders, or their zombies count as alive
            time.sleep(0.5)
        _terminate(self.pids(), 5.0)
        for proc in self.sessions.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.sessions.clear()
        return self.pids()


def _terminate(pids: set[int], grace: float) -> None:
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=5)


@dataclass
class S3Store:
    endpoint: str
    bucket: str

    def env(self) -> dict[str, str]:
        """What every S3 client needs; keys only ever travel through the environment."""
        return {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                "AWS_DEFAULT_REGION": S3_REGION, "MLFLOW_S3_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEY,
                            aws_secret_access_key=S3_SECRET, region_name=S3_REGION)

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def start_s3(services: Services, bucket: str = "pretrain") -> S3Store:
    port = free_port()
    services.start("moto", [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                   services.env())
    store = S3Store(f"http://127.0.0.1:{port}", bucket)
    wait_until(lambda: http_ok(f"{store.endpoint}/moto-api/"), 60, "moto S3 server")
    store.client().create_bucket(Bucket=bucket)
    return store


@dataclass
class MlflowServer:
    uri: str
    port: int
    argv: list[str]
    env: dict[str, str]

    def start(self, services: Services, wait: bool = True) -> None:
        services.start("mlflow", self.argv, self.env)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 180) -> None:
        wait_until(lambda: http_ok(f"{self.uri}/health"), timeout, "MLflow server")

    def stop(self, services: Services) -> None:
        services.stop("mlflow")


def start_mlflow(services: Services, s3: S3Store, wait: bool = True) -> MlflowServer:
    """``mlflow server``: SQLite backend, artifacts proxied to ``s3://<bucket>/mlartifacts``
    (``wait=False``: return at once, call ``wait_ready`` later)."""
    port = free_port()
    argv = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{services.root / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{s3.bucket}/mlartifacts"]
    server = MlflowServer(f"http://127.0.0.1:{port}", port, argv, services.env(**s3.env()))
    server.start(services, wait=wait)
    return server


@dataclass
class RayCluster:
    dashboard: str  # http://127.0.0.1:PORT, what `pretrain submit --address` takes
    gcs: str  # 127.0.0.1:PORT, what joining nodes take
    token: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def alive_nodes(self) -> int:
        reply = requests.get(f"{self.dashboard}/nodes?view=summary", headers=self.headers(),
                             timeout=5).json()
        return sum(1 for node in reply["data"]["summary"] if node["raylet"]["state"] == "ALIVE")

    def train_workers(self) -> list[dict]:
        """Ray Train's record of the workers of the newest attempt of the newest run, with world
        rank and pid (the dashboard's Train API)."""
        reply = requests.get(f"{self.dashboard}/api/train/v2/runs", headers=self.headers(),
                             timeout=10).json()
        runs = sorted(reply.get("train_runs", []), key=lambda r: r.get("start_time_ns") or 0)
        if not runs or not runs[-1].get("attempts"):
            return []
        return runs[-1]["attempts"][-1].get("workers", [])


def _ray_node_args(tmp: Path) -> list[str]:
    ports = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
             "--runtime-env-agent-port")
    args = [arg for flag in ports for arg in (flag, str(free_port()))]
    return [*args, "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--temp-dir", str(tmp),
            "--object-store-memory", str(100 * 2**20), "--min-worker-port", "0",
            "--max-worker-port", "0", "--disable-usage-stats", "--block"]


def start_ray(services: Services, env: dict[str, str]) -> RayCluster:
    """Head (dashboard on) plus one joined node, 1 CPU each, token authentication on. Each node
    gets its own short temp dir (Ray's socket paths must stay under 108 characters)."""
    token = secrets.token_hex(16)
    gcs_port, dash_port = free_port(), free_port()
    # RAY_ADDRESS: Ray's own helpers (e.g. Train's placement-group cleaner) otherwise look for
    # "the" local cluster and fail when other Ray instances run on this machine.
    env = dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               RAY_DEDUP_LOGS="0", RAY_ADDRESS=f"127.0.0.1:{gcs_port}")
    ray_bin = str(VENV_BIN / "ray")
    head_tmp = Path(tempfile.mkdtemp(prefix="prh-"))
    node_tmp = Path(tempfile.mkdtemp(prefix="prn-"))
    services.temp_dirs += [head_tmp, node_tmp]
    services.start("ray-head", [ray_bin, "start", "--head", "--port", str(gcs_port),
                                "--dashboard-host", "127.0.0.1", "--dashboard-port",
                                str(dash_port), "--include-dashboard", "true",
                                "--ray-client-server-port", str(free_port()),
                                *_ray_node_args(head_tmp)], env)
    cluster = RayCluster(f"http://127.0.0.1:{dash_port}", f"127.0.0.1:{gcs_port}", token)
    wait_until(lambda: cluster.alive_nodes() >= 1, 120, "Ray head")
    services.start("ray-node", [ray_bin, "start", "--address", cluster.gcs,
                                *_ray_node_args(node_tmp)], env)
    wait_until(lambda: cluster.alive_nodes() >= 2, 120, "second Ray node")
    return cluster


def remove_temp_dirs(services: Services) -> None:
    for path in services.temp_dirs:
        shutil.rmtree(path, ignore_errors=True)
