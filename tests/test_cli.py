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
    assert "6" in report.stdout  # 3 classes x 2 instances
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
    imported = cli("data", "import", str(tmp_path / "images"), "--out", str(tmp_path / "imp"))
    assert imported.returncode == 0, imported.stderr
    assert len(list((tmp_path / "imp").glob("*.tar"))) == 1
