"""Submit, watch and stop pretraining jobs on a running Ray cluster through the Ray Jobs API.

A job is ``python -m pretrain.cli.main run config.yaml`` on the cluster. Its runtime_env carries
a working_dir holding only the resolved config; the code is expected in the cluster's image
(``k8s/``), unless ``with_code`` ships this checkout's packages as ``py_modules`` too (handy while
developing against a cluster whose image is older than the code). Python dependencies are never
shipped. Every Ray failure a user can cause (unreachable address, missing or wrong token, unknown
job id) becomes a one-line :class:`JobsError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.auth import Token, auth_failure_message
from pretrain.config.load import ConfigError, config_to_yaml, refuse_secrets
from pretrain.trust.redact import redact_text, strip_userinfo
from pretrain.config.schema import RunConfig

CONFIG_NAME = "config.yaml"
CODE_PACKAGES = ("pretrain", "augment", "objectives", "cluster")
RUN_NAME_KEY = "pretrain.run_name"
EXPERIMENT_KEY = "pretrain.experiment"
TRACKING_KEY = "pretrain.tracking_uri"
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
ADDRESS_ENV = "RAY_ADDRESS"
_SDK_ADDRESS_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")


class JobsError(RuntimeError):
    """A job request that cannot be served; the message is one line for the user."""


@dataclass(frozen=True)
class Submission:
    """Everything sent to the Jobs API for one run (the working_dir is a local folder)."""

    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]


def resolve_address(option: str | None, config_address: str | None = None,
                    env: Mapping[str, str] | None = None) -> str:
    """The dashboard address: ``--address``, else ``$RAY_ADDRESS``, else ``cluster.address``;
    a bare ``host:port`` gets ``http://``."""
    env = os.environ if env is None else env
    address = option or env.get(ADDRESS_ENV) or config_address
    if not address:
        raise JobsError("no Ray cluster address: pass --address http://HEAD:8265, set "
                        f"${ADDRESS_ENV} or cluster.address")
    address = address.strip().rstrip("/")
    return address if "://" in address else f"http://{address}"


def _is_local_relative(path: str) -> bool:
    return "://" not in path and not path.startswith("pipe:") and not Path(path).is_absolute()


def job_config(cfg: RunConfig, env: Mapping[str, str] | None = None) -> RunConfig:
    """``cfg`` as the job must see it: it joins the cluster it runs on (``cluster.address``
    cleared, Ray sets ``$RAY_ADDRESS`` inside jobs) and logs to an explicit MLflow server.
    Paths relative to this machine would name a different folder inside the job: refused.
    The tracking URI loses its userinfo (the job logs in with the cluster's own
    ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``); any other credential in the config is refused,
    since the shipped config is visible in the Ray dashboard."""
    env = os.environ if env is None else env
    if _is_local_relative(cfg.cluster.storage_path):
        raise ConfigError("cluster.storage_path: a relative path names a different folder on "
                          "every node; use an absolute shared path or an s3:// URI")
    if cfg.data.path is not None and _is_local_relative(cfg.data.path):
        raise ConfigError("data.path: a relative path cannot be found by the cluster; use an "
                          "absolute path on shared storage or a URL")
    uri = cfg.tracking.uri or env.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError("tracking.uri: a cluster job needs an MLflow server reachable from "
                          "the cluster; set tracking.uri or $MLFLOW_TRACKING_URI")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_absolute():
        raise ConfigError(f"tracking.uri: {uri} is relative to the job's temporary folder")
    shipped = cfg.model_copy(update={
        "cluster": cfg.cluster.model_copy(update={"address": None}),
        "tracking": cfg.tracking.model_copy(update={"uri": strip_userinfo(uri)}),
    })
    refuse_secrets(shipped, "a Ray job's config (shown in the Ray dashboard)")
    return shipped


def code_dirs() -> list[str]:
    """The folders of this checkout's packages, for ``py_modules``."""
    import importlib

    return [str(Path(importlib.import_module(name).__file__).parent) for name in CODE_PACKAGES]


def build_submission(cfg: RunConfig, workdir: Path, *, with_code: bool = False) -> Submission:
    """Write the job's config into ``workdir`` and describe the job (``cfg`` from
    :func:`job_config`). The submission id starts with the run name, so ``pretrain jobs``
    stays readable."""
    (workdir / CONFIG_NAME).write_text(config_to_yaml(cfg))
    runtime_env: dict[str, Any] = {
        "working_dir": str(workdir),
        # Unbuffered, so that `pretrain logs --follow` sees progress as it happens.
        "env_vars": {"PYTHONUNBUFFERED": "1"},
    }
    if with_code:
        runtime_env["py_modules"] = code_dirs()
        runtime_env["excludes"] = ["__pycache__", "*.pyc"]
    return Submission(
        submission_id=f"{cfg.name}-{secrets.token_hex(4)}",
        entrypoint=f"python -m pretrain.cli.main run {CONFIG_NAME}",
        runtime_env=runtime_env,
        metadata={RUN_NAME_KEY: cfg.name, EXPERIMENT_KEY: cfg.tracking.experiment,
                  TRACKING_KEY: redact_text(cfg.tracking.uri or "")},
    )


def failure_reason(message: str | None) -> str:
    """One line out of Ray's failure message: our CLI's own ``pretrain: error:`` line when the
    driver printed one, else the last line (a traceback's exception), else the first."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if not lines:
        return "no message from Ray"
    ours = [line for line in lines if line.startswith("pretrain: error:")]
    if ours:
        return ours[-1].removeprefix("pretrain: error:").strip()
    return lines[-1] if len(lines) > 1 else lines[0]


@contextlib.contextmanager
def _without_env(names: tuple[str, ...]) -> Iterator[None]:
    """Ray's SDK lets ``$RAY_ADDRESS`` override an explicit address; we decide precedence."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class JobsClient:
    """The Ray Jobs API of one cluster, with one-line errors."""

    def __init__(self, address: str, token: Token | None = None) -> None:
        from ray.job_submission import JobSubmissionClient

        self.address = address
        self.token = token
        with self._errors(), _without_env(_SDK_ADDRESS_ENV):
            self._client = JobSubmissionClient(address, headers=token.headers() if token else None)

    @contextlib.contextmanager
    def _errors(self, job_id: str | None = None) -> Iterator[None]:
        try:
            yield
        except JobsError:
            raise
        except Exception as exc:
            translated = self._translate(exc, job_id)
            if translated is None:
                raise
            raise translated from None

    def _translate(self, exc: Exception, job_id: str | None) -> JobsError | None:
        import aiohttp
        import requests
        from ray.exceptions import AuthenticationError

        status = getattr(exc, "status", None)
        text = str(getattr(exc, "message", None) or exc)
        if isinstance(exc, AuthenticationError) or status in (401, 403):
            rejected = status == 403 or text.startswith("Authentication failed")
            return JobsError(auth_failure_message(self.address, self.token, rejected))
        if isinstance(exc, (ConnectionError, requests.ConnectionError, requests.Timeout,
                            aiohttp.ClientConnectionError)):
            return JobsError(f"cannot reach the Ray dashboard at {self.address} (is the cluster "
                             f"up? check --address / ${ADDRESS_ENV})")
        if job_id and (status == 404 or "status code 404" in text):
            return JobsError(f"no job {job_id} on the Ray cluster at {self.address}")
        if isinstance(exc, RuntimeError) and text.startswith("Request failed"):
            return JobsError(f"Ray Jobs API at {self.address}: {text.splitlines()[0]}")
        return None

    def dashboard_url(self, job_id: str) -> str:
        return f"{self.address}/#/jobs/{job_id}"

    def submit(self, cfg: RunConfig, *, with_code: bool = False) -> str:
        """Submit ``cfg`` (checked with :func:`job_config`); returns the job id."""
        cfg = job_config(cfg)
        with tempfile.TemporaryDirectory(prefix="pretrain-job-") as tmp:
            sub = build_submission(cfg, Path(tmp), with_code=with_code)
            with self._errors():
                return self._client.submit_job(
                    entrypoint=sub.entrypoint, runtime_env=sub.runtime_env,
                    metadata=sub.metadata, submission_id=sub.submission_id)

    def info(self, job_id: str):
        """Ray's ``JobDetails`` (status, message, start/end time in ms, metadata)."""
        with self._errors(job_id):
            return self._client.get_job_info(job_id)

    def jobs(self) -> list:
        """All jobs the cluster knows, newest first."""
        with self._errors():
            found = self._client.list_jobs()
        return sorted(found, key=lambda j: j.start_time or 0, reverse=True)

    def stop(self, job_id: str) -> bool:
        """Ask Ray to stop the job; False when it had already ended."""
        with self._errors(job_id):
            return self._client.stop_job(job_id)

    def logs(self, job_id: str) -> str:
        with self._errors(job_id):
            return self._client.get_job_logs(job_id)

    def follow(self, job_id: str) -> Iterator[str]:
        """The job's log lines from the start, as they come, until the job ends."""
        self.info(job_id)  # unknown ids fail here with a clear line, not in the websocket
        loop = asyncio.new_event_loop()
        chunks = self._client.tail_job_logs(job_id)
        partial = ""
        try:
            while True:
                with self._errors(job_id):
                    try:
                        chunk = loop.run_until_complete(chunks.__anext__())
                    except StopAsyncIteration:
                        break
                *lines, partial = (partial + chunk).split("\n")
                yield from lines
            if partial:
                yield partial
        finally:
            loop.run_until_complete(chunks.aclose())
            loop.close()

    def wait(self, job_id: str, timeout: float, poll: float = 1.0) -> str:
        """Block until the job ends (or ``timeout`` seconds pass); returns its status."""
        deadline = time.monotonic() + timeout
        while True:
            status = str(self.info(job_id).status)
            if status in TERMINAL or time.monotonic() >= deadline:
                return status
            time.sleep(poll)


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run (servers); the run id and store otherwise (no credentials)."""
    tracking_uri = strip_userinfo(tracking_uri)
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"run {run_id} in {tracking_uri}"


def find_run_url(tracking_uri: str, experiment: str, run_name: str) -> str | None:
    """The URL of the MLflow run a job with ``run_name`` logs to, once it exists."""
    from mlflow.tracking import MlflowClient

    from pretrain.tracking.runs import find_run_by_name

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    run = find_run_by_name(client, found.experiment_id, run_name)
    return None if run is None else run_url(tracking_uri, found.experiment_id, run.info.run_id)
