"""FinetuneConfig: defaults in code, YAML + options + key=value in that order, one-line errors
naming the key (or the option that gave it), exit code 2 from the CLI."""

from __future__ import annotations

import pytest
import typer

from pretrain.cli.errors import run_cli
from pretrain.cli.finetune import finetune as finetune_cmd
from pretrain.cli.finetune import finetune_config
from pretrain.config.finetune import FinetuneConfig, load_finetune_config
from pretrain.config.load import ConfigError


def test_defaults_live_in_the_class():
    cfg = FinetuneConfig(model_uri="models:/m/1", data="shards")
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.linear_only) == (1, 1e-3, 64, False)
    assert cfg.registry_name == "finetuned-classifier" and cfg.out_dir is None


def test_yaml_then_values_then_overrides(tmp_path):
    path = tmp_path / "ft.yaml"
    path.write_text("model_uri: models:/enc@champion\ndata: shards/train\nepochs: 3\nlr: 0.01\n"
                    "linear_only: true\n")
    cfg = load_finetune_config(path, ["lr=0.5", "registry_name=null"], epochs=5)
    assert cfg.model_uri == "models:/enc@champion" and cfg.data == "shards/train"
    assert (cfg.epochs, cfg.lr, cfg.linear_only) == (5, 0.5, True)
    assert cfg.registry_name is None  # an override can switch registration off


@pytest.mark.parametrize("yaml_text, overrides, message", [
    ("model_uri: m\ndata: d\nepoch: 3\n", [], "epoch: unknown key"),
    ("model_uri: m\ndata: d\n", ["lr=0"], "lr: Input should be greater than 0"),
    ("model_uri: m\ndata: d\n", ["batch_size=many"], "batch_size: Input should be a valid "
                                                     "integer"),
    ("model_uri: m\n", [], "data: Field required"),
    ("model_uri: m\ndata: [unclosed\n", [], "not valid YAML"),
])
def test_a_bad_setting_is_one_line_naming_its_key(tmp_path, yaml_text, overrides, message):
    path = tmp_path / "ft.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_finetune_config(path, overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_options_map_onto_the_config():
    cfg = finetune_config("models:/m/1", None, [], {
        "data": "d", "test_data": "t", "epochs": 2, "out": "keep", "linear_only": True})
    assert (cfg.data, cfg.test_data, cfg.epochs, cfg.out_dir, cfg.linear_only) == (
        "d", "t", 2, "keep", True)
    with pytest.raises(ConfigError, match="^--max-train: "):
        finetune_config("m", None, [], {"data": "d", "max_train": 0})
    with pytest.raises(ConfigError, match="^max_train: "):  # the override gave it, not the option
        finetune_config("m", None, ["max_train=0"], {"data": "d", "max_train": 5})


def _cli(args, capsys):
    app = typer.Typer()
    app.command()(finetune_cmd)
    app.command("unused")(lambda: None)  # two commands: typer keeps 'finetune' a subcommand
    with pytest.raises(SystemExit) as exit_info:
        run_cli(typer.main.get_command(app), ["finetune", *args])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_cli_reads_config_and_overrides_with_one_line_errors(tmp_path, capsys, in_tmp_cwd):
    path = tmp_path / "ft.yaml"
    path.write_text("data: shards\n")
    code, _, err = _cli(["missing-encoder", "--config", str(path), "epoch=3"], capsys)
    assert code == 2 and err.strip() == "pretrain: error: epoch: unknown key"
    path.write_text("data: shards\nlr: -1\n")
    # The file's bad lr is reported by its key: --lr's default does not mask the file.
    code, _, err = _cli(["missing-encoder", "--config", str(path)], capsys)
    assert code == 2 and err.strip() == "pretrain: error: lr: Input should be greater than 0"
    # Given on the command line, --lr wins over the file; the next problem is the encoder.
    code, _, err = _cli(["missing-encoder", "--config", str(path), "--lr", "0.1"], capsys)
    assert code == 2 and "missing-encoder: expected config.json and model.safetensors" in err
    code, _, err = _cli(["missing-encoder"], capsys)
    assert code == 2 and "--data: required" in err
    assert len(err.strip().splitlines()) == 1
