"""Export -> MLflow registry -> pull -> load: timm opens the folder by itself, nothing is unpickled,
the registry's SHA-256 record is what counts, and a failed pull leaves the good copy alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from pretrain.models.encoder import build_encoder
from pretrain.models.folder import ExportError, read_config, write_encoder
from pretrain.hub import load_encoder, pull
from pretrain.models.model_registry import log_and_register
from pretrain.tracking.runs import ensure_experiment

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def _perturbed(model: str, stem: str = "timm"):
    torch.manual_seed(3)
    encoder, info = build_encoder(model, 32, stem=stem)
    with torch.no_grad():  # make the weights differ from any fresh init
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    for m in encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    return encoder.eval(), info


@pytest.fixture()
def trained_encoder():
    return _perturbed("test_resnet")


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """One real SQLite MLflow store for this module (creating one costs seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(uri)
    return uri, client, ensure_experiment(client, "t", uri)


@pytest.fixture()
def store(database, request):
    """A fresh run (so a fresh artifact folder) in the module's store, and a model name of
    this test's own: (tracking uri, client, run id, model name)."""
    uri, client, experiment = database
    run_id = client.create_run(experiment, run_name="pretrain-a").info.run_id
    return uri, client, run_id, f"enc-{request.node.name.removeprefix('test_')[:40]}"


def _registered(store, tmp_path, encoder, info, alias="best", metrics=None):
    uri, client, run_id, name = store
    files = write_encoder(encoder, info, tmp_path / "enc", objective="vicreg", data="synth3d",
                          run_id=run_id, step=7)
    return files, log_and_register(uri, run_id, files, name, alias=alias, metrics=metrics)


def _artifact_dir(client, name, version) -> Path:
    """The registered version's folder in the (local) artifact store: what an attacker with
    write access to the store can change."""
    source = client.get_model_version(name, version).source
    return Path(source.removeprefix("file://"))


class Payload:
    """A pickle that creates ``marker`` when unpickled: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(path: Path, marker: Path) -> None:
    torch.save({"conv1.weight": Payload(marker)}, str(path))


def test_the_planted_payload_runs_when_unpickled(tmp_path):
    """Control for the tests below: the payload is live, so 'no marker' means 'no unpickling'."""
    marker = tmp_path / "ran"
    _plant(tmp_path / "payload.pt", marker)
    assert not marker.exists()
    torch.load(str(tmp_path / "payload.pt"), weights_only=False)
    assert marker.exists()


def test_files_round_trip_and_checksum(tmp_path, trained_encoder):
    encoder, info = trained_encoder
    out = write_encoder(encoder, info, tmp_path / "enc", objective="vicreg", data="synth3d",
                        run_id="r1", step=7)
    config = read_config(out)
    assert config.architecture == "test_resnet" and config.num_classes == 0
    assert config.num_features == encoder.num_features
    assert config.input_size == (3, 32, 32) and config.provenance["step"] == 7
    x = torch.randn(2, 3, 32, 32)
    loaded = load_encoder(out)
    assert not loaded.training
    torch.testing.assert_close(loaded(x), encoder(x), rtol=0, atol=0)
    plain = timm.create_model("test_resnet", pretrained=False, num_classes=0,
                              checkpoint_path=str(out / "model.safetensors")).eval()
    torch.testing.assert_close(plain(x), encoder(x), rtol=0, atol=0)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ExportError, match="SHA-256"):
        load_encoder(out)


def test_timm_local_dir_loads_the_folder_and_finetunes(tmp_path, trained_encoder):
    """timm's own ``local-dir:`` loader reads config.json and the weights: outputs equal
    load_encoder's, and ``num_classes=N`` gives a fresh head that trains."""
    encoder, info = trained_encoder
    out = write_encoder(encoder, info, tmp_path / "enc", objective="vicreg", data="synth3d",
                        run_id="r1")
    x = torch.randn(4, 3, 32, 32)
    ours = load_encoder(out)
    plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    torch.testing.assert_close(plain(x), ours(x), rtol=0, atol=0)
    assert tuple(plain.pretrained_cfg["input_size"]) == (3, 32, 32)
    assert tuple(plain.pretrained_cfg["mean"]) == tuple(info.mean)

    torch.manual_seed(0)
    clf = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=5)
    assert clf.get_classifier().out_features == 5
    clf.eval()
    torch.testing.assert_close(clf.forward_head(clf.forward_features(x), pre_logits=True),
                               ours(x), rtol=0, atol=0)  # backbone weights came from the folder
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 5
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    clf.train()
    losses = []
    for _ in range(10):
        loss = F.cross_entropy(clf(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_config_records_portable_data_spec_and_fingerprint(tmp_path, trained_encoder):
    from pretrain.data.synth3d import Synth3DConfig, generate_synth3d

    encoder, info = trained_encoder
    gen = Synth3DConfig(classes=2, instances_per_class=2, views=1, size=16, shard_size=2)
    data = tmp_path / "cache" / "synth3d-abc"
    generate_synth3d(gen, data, progress=lambda done, total: None)
    out = write_encoder(encoder, info, tmp_path / "enc", objective="vicreg", data=str(data),
                        run_id="r1")
    text = (out / "config.json").read_text()
    assert str(tmp_path) not in text  # no path of the training machine
    recorded = read_config(out).provenance["data"]
    assert recorded["spec"] == {"source": "synth3d", "settings": gen.model_dump(mode="json")}
    assert recorded["samples"] == 4 and recorded["fingerprint"].startswith("sha256:")

    # The same shards elsewhere give the same fingerprint; one shard fewer changes it.
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(data, moved)
    again = write_encoder(encoder, info, tmp_path / "enc2", objective="vicreg", data=str(moved),
                          run_id="r1")
    assert read_config(again).provenance["data"]["fingerprint"] == recorded["fingerprint"]
    shards = sorted(CIFAR.glob("train-*.tar"))[:2]
    if len(shards) == 2:
        one, two = tmp_path / "one", tmp_path / "two"
        for folder, picked in ((one, shards), (two, shards[:1])):
            folder.mkdir()
            for shard in picked:
                (folder / shard.name).symlink_to(shard)
        fa = write_encoder(encoder, info, tmp_path / "fa", objective="v", data=str(one),
                           run_id=None)
        fb = write_encoder(encoder, info, tmp_path / "fb", objective="v", data=str(two),
                           run_id=None)
        pa, pb = (read_config(f).provenance["data"] for f in (fa, fb))
        assert pa["spec"] == {"source": str(one)} and pa["fingerprint"] != pb["fingerprint"]


def test_cifar_stem_is_carried_through_export_and_load(tmp_path):
    encoder, info = _perturbed("resnet18", stem="cifar")
    out = write_encoder(encoder, info, tmp_path / "enc", objective="vicreg", data="synth3d",
                        run_id="r1")
    assert read_config(out).stem == "cifar"
    loaded = load_encoder(out)
    assert loaded.conv1.kernel_size == (3, 3) and isinstance(loaded.maxpool, torch.nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), encoder(x), rtol=0, atol=0)


def test_register_pull_and_load_from_the_registry(tmp_path, store, trained_encoder):
    uri, client, run_id, name = store
    encoder, info = trained_encoder
    files = write_encoder(encoder, info, tmp_path / "enc", objective="vicreg", data="d",
                          run_id=run_id)
    first = log_and_register(uri, run_id, files, name, alias="best")
    second = log_and_register(uri, run_id, files, name)
    assert (first.version, second.version) == ("1", "2")
    assert first.uri == f"models:/{name}@best"
    assert second.uri == f"models:/{name}/latest"
    assert str(client.get_model_version_by_alias(name, "best").version) == "1"
    pulled = pull(f"models:/{name}@best", tmp_path / "pulled", tracking_uri=uri)
    assert (pulled / "model.safetensors").read_bytes() == (files / "model.safetensors").read_bytes()
    x = torch.randn(3, 3, 32, 32)
    loaded = load_encoder(f"models:/{name}@latest", tracking_uri=uri)
    torch.testing.assert_close(loaded(x), encoder(x), rtol=0, atol=0)
    plain = timm.create_model(f"local-dir:{pulled}", pretrained=True).eval()
    torch.testing.assert_close(plain(x), loaded(x), rtol=0, atol=0)


def test_registry_records_sha256_and_refuses_files_replaced_with_their_checksum(
        tmp_path, store, trained_encoder):
    """Issue 11 item 3: weights replaced in the artifact store together with config.json's
    checksum pass the folder's own check, but not the registry's record."""
    uri, client, _, name = store
    encoder, info = trained_encoder
    files, registered = _registered(store, tmp_path, encoder, info)
    tags = client.get_model_version(name, registered.version).tags
    from pretrain.models.folder import sha256_file

    assert tags["pretrain.sha256"] == sha256_file(files / "model.safetensors")
    assert tags["pretrain.sha256.config"] == sha256_file(files / "config.json")

    other, other_info = _perturbed("test_resnet")
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1)
    forged = write_encoder(other, other_info, tmp_path / "forged", objective="vicreg",
                           data="synth3d", run_id=None)
    assert read_config(forged).sha256 != tags["pretrain.sha256"]  # self-consistent, but other
    stored = _artifact_dir(client, name, registered.version)
    for file in ("model.safetensors", "config.json"):
        shutil.copyfile(forged / file, stored / file)
    with pytest.raises(ExportError, match="registry's record"):
        pull(f"models:/{name}@best", tmp_path / "pulled", tracking_uri=uri)
    with pytest.raises(ExportError, match="registry's record"):
        load_encoder(f"models:/{name}/1", tracking_uri=uri)
    assert not (tmp_path / "pulled" / "model.safetensors").exists()


def test_failed_pull_leaves_the_good_local_copy_untouched(tmp_path, store, trained_encoder):
    """Issue 11 item 5."""
    uri, client, _, name = store
    encoder, info = trained_encoder
    _, registered = _registered(store, tmp_path, encoder, info)
    out = pull(f"models:/{name}/1", tmp_path / "out", tracking_uri=uri)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"model.safetensors", "config.json", "README.md"}
    weights = _artifact_dir(client, name, registered.version) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\1" * 8)
    with pytest.raises(ExportError, match="SHA-256"):
        pull(f"models:/{name}/1", out, tracking_uri=uri)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.pull-")] == []
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(timm.create_model(f"local-dir:{out}", pretrained=True).eval()(x),
                               encoder(x), rtol=0, atol=0)


def test_planted_pickles_never_run(tmp_path, store, trained_encoder):
    """Pinned guarantee (issue 11): a real payload pickle placed where a loader could pick it up
    never runs: beside the weights in the artifact store (pull copies only known files, timm's
    local-dir prefers model.safetensors), instead of the weights (safetensors refuses it), and
    named by a config.json (model_args allow-list)."""
    uri, client, _, name = store
    encoder, info = trained_encoder
    files, registered = _registered(store, tmp_path, encoder, info)
    marker = tmp_path / "payload-ran"
    stored = _artifact_dir(client, name, registered.version)
    _plant(stored / "pytorch_model.bin", marker)
    _plant(stored / "model.pth", marker)
    pulled = pull(f"models:/{name}/1", tmp_path / "pulled", tracking_uri=uri)
    assert sorted(p.name for p in pulled.iterdir()) == ["README.md", "config.json",
                                                        "model.safetensors"]
    load_encoder(f"models:/{name}/1", tracking_uri=uri)
    for file in ("pytorch_model.bin", "model.pth"):  # even in the folder itself
        _plant(pulled / file, marker)
    load_encoder(pulled)
    timm.create_model(f"local-dir:{pulled}", pretrained=True)
    assert not marker.exists()

    # The weights themselves replaced by the payload, config.json's checksum updated to match.
    folder = tmp_path / "replaced"
    shutil.copytree(files, folder)
    _plant(folder / "model.safetensors", marker)
    config = json.loads((folder / "config.json").read_text())
    from pretrain.models.folder import sha256_file

    config["invariant_pretrain"]["sha256"] = sha256_file(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="not a safetensors file"):
        load_encoder(folder)

    # A config.json that points timm at the payload through model arguments.
    for args in ({"pretrained_cfg_overlay": {"file": str(tmp_path / "payload.pt")}},
                 {"checkpoint_path": str(tmp_path / "payload.pt")},
                 {"global_pool": str(tmp_path / "payload.pt")}):
        _plant(tmp_path / "payload.pt", marker)
        bad = tmp_path / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(files, bad)
        config = json.loads((bad / "config.json").read_text())
        config["model_args"] = args
        (bad / "config.json").write_text(json.dumps(config))
        with pytest.raises(ExportError, match="model_args"):
            load_encoder(bad)
    assert not marker.exists()


def test_allowed_model_args_still_load(tmp_path):
    torch.manual_seed(0)
    encoder, info = build_encoder("test_resnet", 32, {"drop_rate": 0.1, "global_pool": "max"})
    out = write_encoder(encoder.eval(), info, tmp_path / "enc", objective="v", data="d",
                        run_id=None)
    loaded = load_encoder(out)
    assert loaded.drop_rate == 0.1
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), encoder(x), rtol=0, atol=0)


def test_experiment_is_tagged_as_model_training(database):
    uri, client, _ = database
    created = ensure_experiment(client, "new", uri)
    assert client.get_experiment(created).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    older = client.create_experiment("older")  # made before the tag existed
    assert "mlflow.experimentKind" not in client.get_experiment(older).tags
    assert ensure_experiment(client, "older", uri) == older
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    ensure_experiment(client, "chosen", uri)
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_model_card_is_the_version_description_and_the_folder_readme(
        tmp_path, store, trained_encoder):
    uri, client, run_id, name = store
    encoder, info = trained_encoder
    metrics = {"probe/linear_top1": 0.4125, "probe/knn_top1": 0.375,
               "probe/health/rankme": 61.25, "probe/invariance/crop": 0.83,
               "probe/equivariance_r2/crop": 0.12, "probe/equivariance_r2_mlp/crop": 0.25,
               "probe/invariance/object_rotation": 0.91,
               "probe/equivariance_r2/object_rotation": -0.07,
               "probe/equivariance_r2_mlp/object_rotation": 0.05}
    _, registered = _registered(store, tmp_path, encoder, info, metrics=metrics)
    card = client.get_model_version(name, registered.version).description
    assert card.startswith(f"# {name}, version 1")
    assert "**vicreg**" in card and "step 7" in card and "`test_resnet`" in card
    assert "| crop | 0.83 | 0.12 | 0.25 |" in card
    assert "| object_rotation | 0.91 | -0.07 | 0.05 |" in card
    assert "| linear probe top-1 | 41.2% |" in card and "| kNN top-1 | 37.5% |" in card
    assert f'load_encoder("models:/{name}/1")' in card
    assert 'timm.create_model("local-dir:enc/", pretrained=True)' in card
    assert 'timm.create_model("test_resnet", num_classes=0, checkpoint_path=' in card
    experiment = client.get_run(run_id).info.experiment_id
    link = f"#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning"
    assert f"[pretrain-a]({link})" in card
    pulled = pull(registered.uri, tmp_path / "pulled", tracking_uri=uri)
    assert (pulled / "README.md").read_text() == card


def test_headline_tags_only():
    from pretrain.probes.profile import headline_tags

    metrics = {"probe/linear_top1": 0.5, "probe/knn_top1": 0.25, "probe/health/rankme": 9.0,
               "probe/health/collapsed_frac": 0.0, "probe/health/neg_cos": 0.1,
               "probe/invariance/crop": 0.8, "probe/equivariance_r2/crop": 0.1,
               "probe/equivariance_r2_mlp/crop": 0.2, "probe/seconds": 3.0}
    assert headline_tags(metrics) == {"probe/linear_top1": "0.5000", "probe/knn_top1": "0.2500",
                                     "probe/health/rankme": "9.0000",
                                     "probe/health/collapsed_frac": "0.0000"}


def _cli(*args: str) -> tuple[int, str]:
    """``pretrain ARGS`` in this process (real CLI wiring, exit code and stderr)."""
    import contextlib
    import io

    import typer

    from pretrain.cli.errors import run_cli
    from pretrain.cli.main import app

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        run_cli(typer.main.get_command(app), list(args))
    return exit_info.value.code, err.getvalue()


def test_cli_unknown_version_alias_and_out_file_exit_2_with_one_line(
        tmp_path, store, trained_encoder):
    """Issue 11 item 13 (hub parts)."""
    uri, _, _, name = store
    encoder, info = trained_encoder
    _registered(store, tmp_path, encoder, info)
    cases = [(["pull", f"models:/{name}/9", "--out", str(tmp_path / "a")], f"{name}/9"),
             (["pull", f"models:/{name}@nope", "--out", str(tmp_path / "a")], "nope"),
             (["pull", "models:/no-such-model/1", "--out", str(tmp_path / "a")], "no-such-model")]
    (tmp_path / "file").write_text("not a folder")
    cases.append((["pull", f"models:/{name}/1", "--out", str(tmp_path / "file")], "is a file"))
    for args, needle in cases:
        code, err = _cli(*args, "--tracking-uri", uri)
        assert code == 2, (args, err)
        assert err.count("\n") == 1 and err.startswith("pretrain: error:") and needle in err
    assert (tmp_path / "file").read_text() == "not a folder"


def test_cli_unknown_timm_model_in_config_is_one_line(tmp_path, trained_encoder):
    encoder, info = trained_encoder
    out = write_encoder(encoder, info, tmp_path / "enc", objective="v", data="d", run_id=None)
    config = json.loads((out / "config.json").read_text())
    config["architecture"] = "resnet_that_does_not_exist"
    (out / "config.json").write_text(json.dumps(config))
    code, err = _cli("probe", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    assert code == 2 and err.count("\n") == 1
    assert "unknown timm model 'resnet_that_does_not_exist'" in err
