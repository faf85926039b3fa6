"""A stopped job (SIGTERM to the driver) raises JobStopped, so run() can close its MLflow run."""

import os
import signal
import threading
import time

import pytest

from pretrain.run import JobStopped, sigterm_raises_job_stopped


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
