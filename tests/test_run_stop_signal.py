"""A stopped job (SIGTERM to the driver) raises JobStopped, so run() can close its MLflow run."""

import os
import signal
import threading
import time

import pytest

from pretrain.workflows.run import JobStopped, sigterm_raises_job_stopped


def test_sigterm_inside_the_block_raises_job_stopped_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(JobStopped):
        with sigterm_raises_job_stopped():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises at the next bytecode, long before this ends
    assert signal.getsignal(signal.SIGTERM) is before


def test_outside_the_main_thread_the_block_runs_unchanged():
    seen = []

    def body():
        with sigterm_raises_job_stopped():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert seen == [before]


# ------------------------------------------------------------------ with Ray and MLflow, for real

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from pretrain.workflows.run import stopped_by_sigterm  # noqa: E402


@pytest.mark.slow
def test_sigterm_interrupts_a_blocking_ray_get():
    """The mechanism behind issue 11 item 8: while the driver waits in ``ray.get`` (all of
    ``trainer.fit``), an ordinary exception from the SIGTERM handler stays pending until the call
    returns, so ``pretrain stop`` (SIGKILL 3 s after SIGTERM) left the run RUNNING. JobStopped
    is a KeyboardInterrupt, which Ray raises out of ``ray.get`` at once."""
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        @ray.remote
        class Busy:
            def work(self) -> int:
                time.sleep(60)
                return 1

        busy = Busy.remote()
        ray.get(busy.__ray_ready__.remote())
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
        started = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            with sigterm_raises_job_stopped():
                ray.get(busy.work.remote())
        assert time.monotonic() - started < 10  # not the 60 s of the call
        assert stopped_by_sigterm()
    finally:
        ray.shutdown()


def _launch(config: Path, cwd: Path) -> subprocess.Popen:
    pretrain = str(Path(sys.executable).with_name("pretrain"))
    return subprocess.Popen([pretrain, "run", str(config)], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_steps(driver: subprocess.Popen, store: str, name: str, more_than: int):
    """(client, run) once the run has logged more than ``more_than`` steps."""
    from mlflow.tracking import MlflowClient

    from pretrain.tracking.runs import find_run_by_name

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and driver.poll() is None:
        time.sleep(2)
        try:  # the driver may still be creating the store's tables
            client = MlflowClient(store)
            experiment = client.get_experiment_by_name("invariant-pretrain")
            run = experiment and find_run_by_name(client, experiment.experiment_id, name)
            if run and len(client.get_metric_history(run.info.run_id, "loss/total")) > more_than:
                return client, run
        except Exception:  # noqa: BLE001
            pass
    raise AssertionError(f"no step after {more_than} in time (driver exit code {driver.poll()})")


def _train_worker_pids(driver_pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(driver_pid).children(recursive=True)
            if "RayTrainWorker" in " ".join(p.cmdline())]


def _steps(client, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss/total"))


@pytest.mark.slow
def test_killed_worker_says_how_to_resume_and_a_stopped_run_ends_killed(tmp_path):
    """Issue 11 items 13 and 8, as Ray does them. A training worker killed (-9, no restarts
    allowed): the driver's last line says how to resume and the run is FAILED. The same config
    again resumes the run; then ``pretrain stop`` (SIGTERM to the driver, SIGKILL 3 s later)
    must leave it KILLED within those 3 s, with every step logged so far still there."""
    from pretrain.data.synth3d import Synth3DConfig, generate_synth3d

    shards = tmp_path / "shards"
    generate_synth3d(Synth3DConfig(classes=2, instances_per_class=8, views=1, size=32,
                                   shard_size=8), shards)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": "stop-me", "data": {"path": str(shards), "image_size": 32, "batch_size": 4,
                                    "num_workers": 0, "shuffle_buffer": 0},
        "encoder": {"model": "test_resnet"}, "objective": {"vicreg": {"expander_dims": [16, 16]}},
        "train": {"epochs": 500}, "checkpoint": {"every_steps": 3},
        "tracking": {"uri": store, "log_every_steps": 1, "system_metrics": False},
        "cluster": {"storage_path": str(tmp_path / "runs"), "max_failures": 0},
        "probes": {"enabled": False}}))
    hint = (f"re-run with the same config (name=stop-me) to resume from its last checkpoint in "
            f"{(tmp_path / 'runs' / 'stop-me').resolve()}")

    driver = _launch(config, tmp_path)
    try:
        client, run = _wait_for_steps(driver, store, "stop-me", more_than=4)
        workers = _train_worker_pids(driver.pid)
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        _, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    last = err.strip().splitlines()[-1]
    assert driver.returncode == 1, err[-3000:]
    assert last.startswith("pretrain: error: run stop-me failed: ") and last.endswith(hint), last
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    before = _steps(client, run)

    driver = _launch(config, tmp_path)
    try:
        client, resumed = _wait_for_steps(driver, store, "stop-me", more_than=len(before))
        assert resumed.info.run_id == run.info.run_id
        driver.send_signal(signal.SIGTERM)
        killed_by = time.monotonic() + 3  # Ray's RAY_JOB_STOP_WAIT_TIME_S default
        while (time.monotonic() < killed_by
               and client.get_run(run.info.run_id).info.status == "RUNNING"):
            time.sleep(0.2)
        logged = _steps(client, run)
        assert client.get_run(run.info.run_id).info.status == "KILLED"
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == f"pretrain: error: run stop-me stopped; {hint}"
    final = _steps(client, run)
    assert final[:len(logged)] == logged and final[:len(before)] == before  # nothing lost
    assert final == list(range(1, len(final) + 1))  # and every step once
