"""Checkpoint storage: local paths and s3:// against a real S3-compatible server (moto, started
on loopback by the test), with credentials only from the environment; checkpoint folders on S3
(manifest, verified download, pruning)."""

from __future__ import annotations


import pyarrow.fs as pafs
import pytest

import cluster_fixtures as cf
from cluster.storage import resolve_storage, run_store, run_uri, store_at
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


def test_checkpoint_store_on_s3_verifies_what_it_downloads(s3_env, tmp_path):
    from test_checkpoint_store import FILES, newest_with_reasons, write_checkpoint

    from pretrain.train.store import checkpoint_dir_name

    store = run_store(_cluster("cluster.storage_path=s3://ckpts/ckpt-runs",
                               f"cluster.storage_endpoint={s3_env.endpoint}"), "r1")
    assert store.root == "ckpts/ckpt-runs/r1" and not store.is_local
    assert store_at("s3://ckpts/ckpt-runs/r1", s3_env.endpoint).root == store.root
    for step in (1, 2, 3):
        write_checkpoint(store, step, FILES, tmp_path)
    write_checkpoint(store, 4, FILES, tmp_path, publish=False)
    keys = s3_env.keys("ckpt-runs/r1/")
    assert f"ckpt-runs/r1/{checkpoint_dir_name(3)}/manifest.json" in keys
    assert f"ckpt-runs/r1/{checkpoint_dir_name(4)}/manifest.json" not in keys

    # Replace a file of checkpoint 3 behind the store's back (same size, other bytes).
    states = "engine/mp_rank_00_model_states.pt"
    s3_env.client().put_object(Bucket="ckpts", Key=f"ckpt-runs/r1/{checkpoint_dir_name(3)}/{states}",
                               Body=b"x" * len(FILES[states]))
    name, reasons = newest_with_reasons(store)
    assert name == checkpoint_dir_name(2)
    assert reasons == [f"{checkpoint_dir_name(4)}: no manifest (incomplete checkpoint)",
                       f"{checkpoint_dir_name(3)}: {states}: SHA-256 does not match the manifest"]
    # Remote files come down to a temporary folder, only those asked for, and verified there.
    with store.open_checked(checkpoint_dir_name(3), ("encoder/",)) as local:
        assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) \
            == ["encoder/config.json", "encoder/model.safetensors"]
        assert (local / "encoder/model.safetensors").read_bytes() == FILES["encoder/model.safetensors"]
    assert not local.exists()

    # Pruning checks sizes only (no download): with keep=2 the good checkpoint 2 survives.
    assert store.prune(keep=2) == [checkpoint_dir_name(1)]
    assert sorted({k.split("/")[2] for k in s3_env.keys("ckpt-runs/r1/")} - {""}) == [
        checkpoint_dir_name(s) for s in (2, 3, 4)]
