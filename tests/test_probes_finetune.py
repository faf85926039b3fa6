"""Pull -> finetune -> registered classifier, its accuracy recomputed independently; the CLI and
the plain-timm example."""

from __future__ import annotations

import io
import json
import pickle
import runpy
import sys
import tarfile
from pathlib import Path

import mlflow.artifacts
import numpy as np
import pytest
import timm
import torch
import typer
from mlflow.tracking import MlflowClient
from PIL import Image

from probe_encoders import register_test_encoder, write_colour_shards
from pretrain.models.classifier import load_classifier
from pretrain.cli.errors import run_cli
from pretrain.cli.finetune import finetune as finetune_cmd
from pretrain.config.finetune import FinetuneConfig
from pretrain.workflows.finetune import finetune

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_id, registered = register_test_encoder(root, uri)
    write_colour_shards(root / "train", per_class=16, prefix="train", seed=1)
    write_colour_shards(root / "test", per_class=8, prefix="test", seed=2)
    return root, uri, run_id, registered


def _independent_accuracy(model_dir: Path, test_dir: Path) -> float:
    """Plain timm + safetensors checkpoint, images read straight from the tars with PIL."""
    config = json.loads((model_dir / "config.json").read_text())
    model = timm.create_model(config["architecture"], num_classes=config["num_classes"],
                              checkpoint_path=str(model_dir / "model.safetensors")).eval()
    mean = torch.tensor(config["pretrained_cfg"]["mean"]).view(3, 1, 1)
    std = torch.tensor(config["pretrained_cfg"]["std"]).view(3, 1, 1)
    images, labels = {}, {}
    for shard in sorted(test_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                data = tar.extractfile(member).read()
                if ext == "png":
                    array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                    images[key] = (torch.from_numpy(array.copy()).permute(2, 0, 1) / 255 - mean) / std
                else:
                    labels[key] = int(data)
    correct = 0
    with torch.no_grad():
        for key, image in images.items():
            correct += int(model(image[None]).argmax(1).item() == labels[key])
    return correct / len(images)


def test_finetune_registers_a_classifier_whose_accuracy_checks_out(setup, tmp_path, monkeypatch):
    root, uri, source_run, registered = setup

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    result = finetune(FinetuneConfig(model_uri=registered.uri, data=str(root / "train"),
                                     epochs=4, lr=3e-3, tracking_uri=uri,
                                     registry_name="colour-classifier",
                                     test_data=str(root / "test"), batch_size=16))
    monkeypatch.undo()
    assert result.num_classes == 3 and (result.train_samples, result.test_samples) == (48, 24)
    assert result.registered is not None and result.registered.uri == "models:/colour-classifier/1"
    client = MlflowClient(uri)
    version = client.get_model_version("colour-classifier", "1")
    assert version.run_id == result.run_id
    run = client.get_run(result.run_id)
    assert run.data.tags["pretrain.finetune.source_run_id"] == source_run
    assert run.data.metrics["test/accuracy"] == pytest.approx(result.test_accuracy)
    files = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source,
                                                     dst_path=str(tmp_path), tracking_uri=uri))
    recomputed = _independent_accuracy(files, root / "test")
    assert recomputed == pytest.approx(result.test_accuracy, abs=1e-9)
    assert recomputed >= 0.8  # colour classes are easy: the head really learned (chance 1/3)
    loaded = load_classifier(result.registered.uri, tracking_uri=uri)
    x = torch.randn(2, 3, 32, 32)
    plain = timm.create_model("test_resnet", num_classes=3,
                              checkpoint_path=str(files / "model.safetensors")).eval()
    torch.testing.assert_close(loaded(x), plain(x), rtol=0, atol=0)
    # The classifier folder is a timm model folder too, class names included.
    native = timm.create_model(f"local-dir:{files}", pretrained=True).eval()
    torch.testing.assert_close(native(x), plain(x), rtol=0, atol=0)
    assert native.pretrained_cfg["num_classes"] == 3
    assert "model_args" in json.loads((files / "config.json").read_text())
    assert "# colour-classifier, version 1" in version.description


def test_linear_only_keeps_the_encoder_frozen(setup, tmp_path):
    root, uri, _, registered = setup
    out = tmp_path / "clf"
    calls = []
    result = finetune(FinetuneConfig(model_uri=registered.uri, data=str(root / "train"),
                                     epochs=20, lr=1e-2, linear_only=True, tracking_uri=uri,
                                     registry_name=None, test_data=str(root / "test"),
                                     out_dir=str(out)),
                      progress=lambda *call: calls.append(call))
    per_epoch = -(-48 // 64)  # 48 train images, batch 64: one batch per epoch
    assert calls == [(e + 1, 20 * per_epoch, f"epoch {e + 1}/20") for e in range(20)]
    assert result.registered is None and result.model_dir == str(out)
    encoder = timm.create_model("test_resnet", num_classes=0)
    from pretrain.hub import load_encoder

    source = load_encoder(registered.uri, tracking_uri=uri)
    classifier = load_classifier(out)
    trained = classifier.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(trained[key], value), key
    assert set(trained) - set(encoder.state_dict()) == {"fc.weight", "fc.bias"}
    assert _independent_accuracy(out, root / "test") == pytest.approx(result.test_accuracy)


def test_finetune_cli(setup, capsys):
    root, uri, _, registered = setup
    app = typer.Typer()
    app.command()(finetune_cmd)
    app.command("unused")(lambda: None)
    args = ["finetune", registered.uri, "--data", str(root / "train"), "--test-data",
            str(root / "test"), "--epochs", "1", "--linear-only", "--registry-name", "cli-clf",
            "--tracking-uri", uri]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(typer.main.get_command(app), args)
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "test accuracy" in out and "models:/cli-clf/1" in out
    with pytest.raises(SystemExit) as exit_info:
        run_cli(typer.main.get_command(app), [*args[:-2], "--lr", "0", "--tracking-uri", uri])
    assert exit_info.value.code == 2 and "--lr" in capsys.readouterr().err


def test_plain_timm_example_runs(setup, tmp_path, monkeypatch, capsys):
    root, uri, _, registered = setup
    from pretrain.hub import pull

    encoder_dir = pull(registered.uri, tmp_path / "encoder", tracking_uri=uri)
    monkeypatch.setattr(sys, "argv", ["finetune_timm.py", str(encoder_dir),
                                      str(root / "train" / "train-{000000..000002}.tar"),
                                      str(root / "test" / "test-{000000..000001}.tar"), "3"])
    runpy.run_path(str(REPO / "examples" / "finetune_timm.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "test accuracy" in out and "on 24 images" in out


def test_a_finetune_that_fails_inside_its_run_ends_it_failed(setup, tmp_path):
    root, uri, source_run, registered = setup
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the classifier folder's parent should be")
    with pytest.raises(OSError):
        finetune(FinetuneConfig(model_uri=registered.uri, data=str(root / "train"),
                                test_data=str(root / "test"), linear_only=True,
                                tracking_uri=uri, experiment="ft-blocked", registry_name=None,
                                out_dir=str(blocker / "classifier")))
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ft-blocked").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["pretrain.finetune.source_run_id"] == source_run
    assert {"train/loss", "test/accuracy"} <= set(run.data.metrics)  # trained inside the run
