"""Export -> MLflow registry -> pull -> load, without unpickling, and plain timm reads the files."""

import pickle

import pytest
import timm
import torch

from pretrain.encoder import build_encoder
from pretrain.export import ExportError, read_config, write_encoder
from pretrain.hub import load_encoder, pull
from pretrain.registry import log_and_register
from pretrain.tracking.runs import ensure_experiment


@pytest.fixture()
def trained_encoder():
    torch.manual_seed(3)
    encoder, info = build_encoder("test_resnet", 32)
    with torch.no_grad():  # make the weights differ from any fresh init
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    for m in encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    return encoder.eval(), info


def _forbid_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_files_round_trip_and_checksum(tmp_path, trained_encoder, monkeypatch):
    encoder, info = trained_encoder
    out = write_encoder(encoder, info, tmp_path / "enc", objective="vicreg", data="synth3d",
                        run_id="r1", step=7)
    config = read_config(out)
    assert config["architecture"] == "test_resnet"
    assert config["num_features"] == encoder.num_features
    assert config["input_size"] == [3, 32, 32] and config["step"] == 7
    x = torch.randn(2, 3, 32, 32)
    _forbid_unpickling(monkeypatch)
    loaded = load_encoder(out)
    assert not loaded.training
    torch.testing.assert_close(loaded(x), encoder(x), rtol=0, atol=0)
    monkeypatch.undo()
    plain = timm.create_model("test_resnet", pretrained=False, num_classes=0,
                              checkpoint_path=str(out / "model.safetensors")).eval()
    torch.testing.assert_close(plain(x), encoder(x), rtol=0, atol=0)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ExportError, match="SHA-256"):
        load_encoder(out)


def test_register_pull_and_load_from_the_registry(tmp_path, trained_encoder, monkeypatch):
    from mlflow.tracking import MlflowClient

    encoder, info = trained_encoder
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = ensure_experiment(client, "t", uri)
    run_id = client.create_run(exp).info.run_id
    files = write_encoder(encoder, info, tmp_path / "enc", objective="vicreg", data="d",
                          run_id=run_id)
    first = log_and_register(uri, run_id, files, "enc-test", alias="best")
    second = log_and_register(uri, run_id, files, "enc-test")
    assert (first.version, second.version) == ("1", "2")
    assert first.uri == "models:/enc-test@best"
    assert second.uri == "models:/enc-test/latest"
    assert str(client.get_model_version_by_alias("enc-test", "best").version) == "1"
    pulled = pull("models:/enc-test@best", tmp_path / "pulled", tracking_uri=uri)
    assert (pulled / "model.safetensors").read_bytes() == (files / "model.safetensors").read_bytes()
    x = torch.randn(3, 3, 32, 32)
    _forbid_unpickling(monkeypatch)
    loaded = load_encoder("models:/enc-test@latest", tracking_uri=uri)
    torch.testing.assert_close(loaded(x), encoder(x), rtol=0, atol=0)
