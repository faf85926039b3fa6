"""Shared fixtures. Tests that start Ray, DeepSpeed engines or MLflow are marked ``slow``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"


@pytest.fixture()
def in_tmp_cwd(tmp_path, monkeypatch):
    """Run in an empty working directory (the default MLflow store and caches land there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


@pytest.fixture()
def one_thread():
    """One torch thread: small probe ops run far slower with two threads contending on 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
