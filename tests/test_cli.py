"""The ``pretrain`` command as a user meets it: help everywhere, one-line errors, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PRETRAIN = [str(Path(sys.executable).with_name("pretrain"))]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(PRETRAIN + list(args), capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("command", [
    [], ["run"], ["data"], ["data", "synth3d"], ["data", "import"], ["data", "inspect"],
    ["export"], ["pull"], ["bench"], ["ui"], ["probe"], ["finetune"], ["k8s"], ["k8s", "render"],
    ["submit"], ["status"], ["logs"], ["stop"], ["jobs"],
])
def test_help_on_every_command(command):
    result = cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def _one_line_usage_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pretrain: error:")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_config_key_names_the_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  batch_sise: 3\n")
    _one_line_usage_error(cli("run", str(config)), "data.batch_sise", "unknown key")


def test_bad_override_value_and_unknown_model(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    _one_line_usage_error(cli("run", str(config), "optim.lr=-1"), "optim.lr")
    _one_line_usage_error(cli("run", str(config), "encoder.model=resnet_nope"), "encoder.model")
    _one_line_usage_error(cli("run", str(tmp_path / "missing.yaml")), "missing.yaml")


def test_missing_data_path_named(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  path: {tmp_path / 'nowhere'}\n")
    _one_line_usage_error(cli("run", str(config), cwd=tmp_path), str(tmp_path / "nowhere"))


def test_unknown_option_and_bad_number():
    _one_line_usage_error(cli("data", "synth3d", "--out", "x", "--bogus"), "--bogus")
    _one_line_usage_error(cli("data", "synth3d", "--out", "x", "--classes", "many"), "classes")
    _one_line_usage_error(cli("data", "synth3d", "--out", "x", "--classes", "0"), "--classes")


def test_inspect_missing_and_pull_bad_uri(tmp_path):
    _one_line_usage_error(cli("data", "inspect", str(tmp_path / "none")), str(tmp_path / "none"))
    result = cli("pull", "models:/nothing@here", "--out", str(tmp_path / "o"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    assert result.returncode != 0
    assert len([l for l in result.stderr.splitlines() if l.startswith("pretrain: error:")]) == 1
    assert "Traceback" not in result.stderr


def test_ui_without_a_store_says_so(tmp_path):
    _one_line_usage_error(cli("ui", cwd=tmp_path), "no MLflow store")


def test_synth3d_import_inspect_round_trip(tmp_path):
    out = tmp_path / "shards"
    result = cli("data", "synth3d", "--out", str(out), "--classes", "3", "--instances-per-class",
                 "2", "--views", "2", "--size", "16", "--shard-size", "4")
    assert result.returncode == 0, result.stderr
    assert "views/s" in result.stdout
    report = cli("data", "inspect", str(out))
    assert report.returncode == 0, report.stderr
    # 3 classes x 2 instances, every one read and listed in the index
    assert "samples:       6 read; index/scan lists 6\n" in report.stdout, report.stdout
    assert "classes:       0 (box): 2, 1 (ellipsoid): 2, 2 (cylinder): 2\n" in report.stdout
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
    imported = cli("data", "import", str(tmp_path / "images"), "--out", str(tmp_path / "imp"))
    assert imported.returncode == 0, imported.stderr
    assert len(list((tmp_path / "imp").glob("*.tar"))) == 1
    # one line per stage on stderr, with the per-file progress (bar or lines with an ETA)
    assert f"found 3 files (1 classes) in {tmp_path / 'images'}" in imported.stderr
    assert "wrote 1 shard(s) and index.json" in imported.stderr
    assert "wrote 3 images (1 classes) in 1 shard(s)" in imported.stdout


def test_inspect_with_no_readable_sample_exits_2(tmp_path):
    from pretrain.data.writer import ShardSetWriter

    with ShardSetWriter(tmp_path / "bad", shard_size=4) as writer:
        for i in range(3):
            writer.write(f"s{i}", {"png": b"not a png"})
    result = cli("data", "inspect", str(tmp_path / "bad"))
    assert "unreadable:    3 (100.00%)" in result.stdout  # the report is still printed
    _one_line_usage_error(result, "no readable sample (3 read, 3 unreadable")


def _image_set(tmp_path: Path) -> Path:
    """A tiny imported shard set of plain images (no latents)."""
    from PIL import Image

    from pretrain.data.importer import import_image_folder

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(folder / f"{i}.png")
    return import_image_folder(folder, tmp_path / "shards").out_dir


@pytest.mark.parametrize("overrides, needles", [
    # the recipe makes no view pairs: caught while the config is validated
    (["objective.name=sie", "augment.recipe=vicreg"], ["augment.recipe", "sie", "pair"]),
    # latent actions from views cut out of one image
    (["objective.name=sie"], ["augment.source", "objective.sie.action=augment"]),
    # seq-JEPA's rotation actions need latents that image data does not have
    (["objective.name=seq_jepa", "augment.source=distinct", "data.views=4"],
     ["objective.seq_jepa.action", "quaternion"]),
])
def test_objective_recipe_data_mismatch_stops_before_anything_starts(
        tmp_path, monkeypatch, overrides, needles):
    # Issue 11 item 9: these ran into 6 tracebacks after 76-83 s of Ray start-up.
    import ray

    from pretrain.config import ConfigError, load_config
    from pretrain.workflows.run import run

    shards = _image_set(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", no_ray)
    with pytest.raises(ConfigError) as caught:
        run(load_config(None, [f"data.path={shards}", "data.batch_size=2", *overrides]))
    for needle in needles:
        assert needle in str(caught.value)
    assert list(work.iterdir()) == []  # no MLflow store or run, no probe data rendered


def test_objective_data_mismatch_is_one_line_exit_2(tmp_path):
    shards = _image_set(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  path: {shards}\n  batch_size: 2\n")
    result = cli("run", str(config), "objective.name=seq_jepa", "augment.source=distinct",
                 "data.views=4", cwd=tmp_path)
    _one_line_usage_error(result, "objective.seq_jepa.action", "quaternion")
