"""Checkpoint storage: local paths and s3:// against a real S3-compatible server (moto, started
on loopback by the test), with credentials only from the environment."""

from __future__ import annotations


import pyarrow.fs as pafs
import pytest

import cluster_fixtures as cf
from cluster.storage import resolve_storage, run_uri
from pretrain.config import load_config
from pretrain.config.load import ConfigError


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    services = cf.Services(tmp_path_factory.mktemp("s3"))
    try:
        yield cf.start_s3(services, bucket="ckpts")
    finally:
        left = services.reap()
        assert not left, f"processes left behind: {sorted(left)}"


@pytest.fixture()
def s3_env(s3, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    return s3


def _cluster(*overrides: str):
    return load_config(None, ["encoder.model=test_resnet", *overrides]).cluster


def test_local_storage_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = resolve_storage(_cluster("cluster.storage_path=runs/here"))
    assert storage.filesystem is None
    assert storage.path == storage.uri == str(tmp_path / "runs" / "here")
    assert run_uri(_cluster("cluster.storage_path=runs"), "r1") == str(tmp_path / "runs" / "r1")


def _round_trip(storage, name: str) -> bytes:
    fs = storage.filesystem
    with fs.open_output_stream(storage.join(name, "probe.bin")) as out:
        out.write(b"checkpoint bytes")
    with fs.open_input_stream(storage.join(name, "probe.bin")) as src:
        return src.read()


def test_s3_storage_with_configured_endpoint(s3_env):
    storage = resolve_storage(_cluster("cluster.storage_path=s3://ckpts/runs/",
                                       f"cluster.storage_endpoint={s3_env.endpoint}"))
    assert isinstance(storage.filesystem, pafs.S3FileSystem)
    assert storage.path == "ckpts/runs" and storage.uri == "s3://ckpts/runs"
    assert _round_trip(storage, "configured") == b"checkpoint bytes"
    # Seen from an independent client: the object is really in the bucket.
    assert "runs/configured/probe.bin" in s3_env.keys("runs/")


def test_s3_endpoint_from_the_environment(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint)
    storage = resolve_storage(_cluster("cluster.storage_path=s3://ckpts/env"))
    assert _round_trip(storage, "from-env") == b"checkpoint bytes"
    assert "env/from-env/probe.bin" in s3_env.keys("env/")


def test_config_cannot_carry_credentials_and_checks_the_endpoint():
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["encoder.model=test_resnet", "cluster.aws_secret_access_key=x"])
    with pytest.raises(ConfigError, match="storage_endpoint"):
        load_config(None, ["encoder.model=test_resnet", "cluster.storage_endpoint=minio:9000"])
    with pytest.raises(ValueError, match="no bucket"):
        resolve_storage(_cluster("cluster.storage_path=s3://"))
