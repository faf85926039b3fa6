"""``pretrain submit | status | logs | stop | jobs``: run and watch jobs on a Ray cluster.

Thin layer over :mod:`cluster.jobs`; Ray and MLflow are imported only when a command runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from pretrain.cli.errors import fail

AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="Ray dashboard URL, e.g. http://HEAD:8265 (default: $RAY_ADDRESS).",
    show_default=False)]
TokenFileOpt = Annotated[Path | None, typer.Option(
    "--token-file", help="File with the cluster's Ray auth token (default: $RAY_AUTH_TOKEN, "
    "$RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).", show_default=False)]
JobArg = Annotated[str, typer.Argument(help="Job id, as printed by 'pretrain submit'.")]

# The loop's rank-0 line (pretrain.train.loop.progress_line), wherever Ray's prefix puts it.
_PROGRESS = re.compile(r"step (\d+)/(\d+) \| loss (\S+) \| ([\d.]+) img/s \| wait (\d+)% \| "
                       r"ETA (\S+)")
_FOLLOW_EXIT = {"SUCCEEDED": 0}


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float
    images_per_s: float
    eta: str

    def line(self) -> str:
        pct = 100 * self.step / max(self.total, 1)
        return (f"progress: step {self.step}/{self.total} ({pct:.0f}%) | "
                f"{self.images_per_s:.0f} img/s | loss {self.loss:.4g} | ETA {self.eta}")


def parse_progress(line: str) -> Progress | None:
    """The training progress in one log line, or None when the line is something else."""
    match = _PROGRESS.search(line)
    if match is None:
        return None
    step, total, loss, rate, _, eta = match.groups()
    try:
        loss_value = float(loss)
    except ValueError:
        loss_value = float("nan")
    return Progress(int(step), int(total), loss_value, float(rate), eta)


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    from cluster.auth import TokenError
    from cluster.jobs import JobsError

    try:
        yield
    except (JobsError, TokenError) as exc:
        fail(str(exc), 1)


def _client(address: str | None, token_file: Path | None, config_address: str | None = None):
    import logging

    import ray.job_submission  # noqa: F401  (its import sets its loggers to INFO; undone below)

    from cluster.auth import resolve_token
    from cluster.jobs import JobsClient, resolve_address

    # Ray's SDK narrates uploads and websocket closes at INFO; we print what matters ourselves.
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return JobsClient(resolve_address(address, config_address), resolve_token(token_file))


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _check_outcome(job_id: str, status: str, message: str | None) -> None:
    """One line and exit code 1 for a job that failed or was stopped."""
    from cluster.jobs import failure_reason

    if status == "FAILED":
        fail(f"job {job_id} failed: {failure_reason(message)}", 1)
    if status == "STOPPED":
        fail(f"job {job_id} was stopped", 1)


def _follow(client, job_id: str) -> None:
    """Print the job's logs until it ends, with a progress line; exit 1 unless it succeeded."""
    live = sys.stderr.isatty()
    bar = task = None
    with contextlib.ExitStack() as stack:
        if live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as Bar

            bar = stack.enter_context(Bar(TextColumn("{task.description}"), BarColumn(),
                                          MofNCompleteColumn(), console=Console(stderr=True)))
            task = bar.add_task("training", total=None)
        try:
            for line in client.follow(job_id):
                typer.echo(line)
                progress = parse_progress(line)
                if progress is None:
                    continue
                if bar is not None:
                    bar.update(task, completed=progress.step, total=progress.total,
                               description=progress.line().removeprefix("progress: "))
                else:
                    typer.echo(progress.line(), err=True)
        except KeyboardInterrupt:
            fail(f"stopped following; job {job_id} goes on (pretrain stop {job_id} ends it)", 130)
    info = client.info(job_id)
    status = str(info.status)
    if status not in _FOLLOW_EXIT:
        # The log stream can close before Ray records the final state.
        status = client.wait(job_id, timeout=30)
        info = client.info(job_id)
    _check_outcome(job_id, status, info.message)
    typer.echo(f"job {job_id} {status.lower()}")


def _wait_for_run(client, job_id: str, cfg, seconds: float) -> str | None:
    """Poll MLflow for the job's run until it exists, the job ends, or ``seconds`` pass."""
    from cluster.jobs import TERMINAL, find_run_url

    # This machine's own URI (with its credentials, if any), not the stripped one the job gets.
    uri = cfg.tracking.uri or os.environ["MLFLOW_TRACKING_URI"]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            url = find_run_url(uri, cfg.tracking.experiment, cfg.name)
        except Exception as exc:  # server not reachable from this machine: say so, go on
            typer.echo(f"MLflow run:    not reachable from here ({type(exc).__name__})")
            return None
        if url is not None:
            return url
        info = client.info(job_id)
        if str(info.status) in TERMINAL:
            _check_outcome(job_id, str(info.status), info.message)
            return None
        time.sleep(2.0)
    return None


def submit(
    config: Annotated[Path, typer.Argument(help="YAML config (see configs/).")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="Dotted overrides, e.g. data.batch_size=128.", show_default=False)] = None,
    address: AddressOpt = None,
    name: Annotated[str | None, typer.Option(help="Run name (re-using one resumes that run).",
                                             show_default=False)] = None,
    token_file: TokenFileOpt = None,
    with_code: Annotated[bool, typer.Option(
        "--with-code", help="Ship this checkout's packages too (when the cluster image lacks "
        "them or is older).")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Then follow the logs to the end.")
                      ] = False,
    wait_run: Annotated[float, typer.Option(help="Seconds to wait for the MLflow run URL "
                                            "(0: do not wait).")] = 120.0,
) -> None:
    """Submit CONFIG as a Ray job on a running cluster; print the job id and where to watch."""
    from pretrain.config import load_config

    cfg = load_config(config, [*(overrides or []), *([f"name={name}"] if name else [])])
    # Our own retry loop polls MLflow; its HTTP client must not retry for minutes on its own.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from cluster.jobs import job_config

    job_config(cfg)  # config problems (relative paths, credentials) before contacting the cluster
    with _one_line_errors():
        client = _client(address, token_file, cfg.cluster.address)
        job_id = client.submit(cfg, with_code=with_code)
        typer.echo(f"job id:        {job_id}")
        typer.echo(f"Ray dashboard: {client.dashboard_url(job_id)}")
        if wait_run > 0:
            url = _wait_for_run(client, job_id, cfg, wait_run)
            if url is not None:
                typer.echo(f"MLflow run:    {url}")
        typer.echo(f"follow it:     pretrain logs {job_id} --follow")
        if follow:
            _follow(client, job_id)


def status(job_id: JobArg, address: AddressOpt = None, token_file: TokenFileOpt = None) -> None:
    """State of a job; exit code 1 when it failed or was stopped."""
    from cluster.jobs import RUN_NAME_KEY

    with _one_line_errors():
        client = _client(address, token_file)
        info = client.info(job_id)
        meta = info.metadata or {}
        typer.echo(f"job:       {job_id}\nstate:     {info.status}\n"
                   f"run name:  {meta.get(RUN_NAME_KEY, '-')}\n"
                   f"started:   {_when(info.start_time)}\nended:     {_when(info.end_time)}\n"
                   f"dashboard: {client.dashboard_url(job_id)}")
        _check_outcome(job_id, str(info.status), info.message)


def logs(job_id: JobArg,
         follow: Annotated[bool, typer.Option("--follow", "-f",
                                              help="Keep printing until the job ends.")] = False,
         address: AddressOpt = None, token_file: TokenFileOpt = None) -> None:
    """Print a job's logs (with --follow: until it ends, with a progress line)."""
    with _one_line_errors():
        client = _client(address, token_file)
        if follow:
            _follow(client, job_id)
        else:
            typer.echo(client.logs(job_id), nl=False)


def stop(job_id: JobArg, address: AddressOpt = None, token_file: TokenFileOpt = None,
         wait: Annotated[float, typer.Option(help="Seconds to wait until it has stopped.")
                         ] = 60.0) -> None:
    """Stop a job; re-submitting the same run name later resumes from its last checkpoint."""
    with _one_line_errors():
        client = _client(address, token_file)
        if not client.stop(job_id):
            typer.echo(f"job {job_id} had already ended ({client.info(job_id).status})")
            return
        final = client.wait(job_id, timeout=wait) if wait > 0 else "stopping"
        typer.echo(f"job {job_id}: {str(final).lower()}")


def jobs(address: AddressOpt = None, token_file: TokenFileOpt = None,
         limit: Annotated[int, typer.Option(help="Show at most this many (newest first).")] = 20
         ) -> None:
    """Table of recent jobs: id, state, start time, run name."""
    from cluster.jobs import RUN_NAME_KEY

    with _one_line_errors():
        found = _client(address, token_file).jobs()[:limit]
    rows = [(j.submission_id or j.job_id or "-", str(j.status), _when(j.start_time),
             (j.metadata or {}).get(RUN_NAME_KEY, "-")) for j in found]
    header = ("JOB ID", "STATE", "STARTED", "RUN NAME")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
