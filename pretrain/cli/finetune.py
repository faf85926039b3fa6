"""``pretrain finetune``: from a registered encoder to a registered classifier.

Register with ``app.command()(finetune)`` in ``pretrain.cli.main``. Every option is a key of
``pretrain.config.finetune.FinetuneConfig`` (defaults live there, and the help shows them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pretrain.config.finetune import default_of

# Options whose name is not their config key.
OPTION_KEYS = {"out": "out_dir"}


def finetune(
    ctx: typer.Context,
    model_uri: Annotated[str, typer.Argument(help="Encoder: models:/NAME@ALIAS, "
                                             "models:/NAME/VERSION, runs:/RUN_ID/encoder or a "
                                             "folder.")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="KEY=VALUE settings of the finetuning config, e.g. epochs=5 linear_only=true; they "
        "win over --config and the options.", show_default=False)] = None,
    data: Annotated[str | None, typer.Option(help="Labeled shards: a folder (train-*/test-* "
                                             "files are split by name, else every 5th sample "
                                             "is test), a pattern, or 'cifar10' "
                                             "($PRETRAIN_CIFAR10_DIR). Required unless "
                                             "--config gives 'data'.",
                                             show_default=False)] = None,
    test_data: Annotated[str | None, typer.Option(help="Separate test shards.",
                                                  show_default=False)] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the train split.")]
        = default_of("epochs"),
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (> 0, cosine decay).")]
        = default_of("lr"),
    linear_only: Annotated[bool, typer.Option("--linear-only", help="Freeze the encoder; "
                                              "train only the head.")] = False,
    batch_size: Annotated[int, typer.Option()] = default_of("batch_size"),
    weight_decay: Annotated[float, typer.Option()] = default_of("weight_decay"),
    max_train: Annotated[int | None, typer.Option(help="Train images at most.",
                                                  show_default=False)] = None,
    max_test: Annotated[int | None, typer.Option(help="Test images at most.",
                                                 show_default=False)] = None,
    registry_name: Annotated[str, typer.Option(help="Registered model name of the "
                                               "classifier.")] = default_of("registry_name"),
    alias: Annotated[str | None, typer.Option(help="Alias for the new version.",
                                              show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(help="Also keep the classifier files here.",
                                             show_default=False)] = None,
    seed: Annotated[int, typer.Option()] = default_of("seed"),
    device: Annotated[str | None, typer.Option(help="cpu, cuda (default: cuda if "
                                               "available).", show_default=False)] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default: the "
                                                   "source run's).", show_default=False)] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.",
                                                     show_default=False)] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="YAML file of settings, keyed by the options' names with _ "
        "(test_data, linear_only, out_dir for --out, ...); options and KEY=VALUE win over it.",
        show_default=False)] = None,
) -> None:
    """Add a classification head to an encoder, train it on labeled shards, report test
    accuracy and register the classifier (safetensors + config.json) as its own model. Settings:
    the defaults shown, then --config, then the options given, then KEY=VALUE."""
    from typer._click.core import ParameterSource

    from pretrain.cli.progress import progress_bar
    from pretrain.workflows.finetune import finetune as run_finetune

    options = {"data": data, "test_data": test_data, "epochs": epochs, "lr": lr,
               "linear_only": linear_only, "batch_size": batch_size,
               "weight_decay": weight_decay, "max_train": max_train, "max_test": max_test,
               "registry_name": registry_name, "alias": alias, "out": out, "seed": seed,
               "device": device, "experiment": experiment, "tracking_uri": tracking_uri}
    # Only options given on the command line override --config (a default would mask it).
    given = {name: value for name, value in options.items()
             if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)}
    cfg = finetune_config(model_uri, config, overrides or [], given)
    with progress_bar("finetuning") as update:
        result = run_finetune(cfg, progress=update)
    typer.echo(f"test accuracy {100 * result.test_accuracy:.2f}% on {result.test_samples} images "
               f"({result.num_classes} classes, {result.train_samples} train images, "
               f"{result.seconds:.0f}s)")
    typer.echo(f"MLflow run {result.run_id}")
    if result.registered is not None:
        typer.echo(f"registered {result.registered.uri}; load it with\n"
                   f"    from pretrain.models.classifier import load_classifier\n"
                   f'    model = load_classifier("{result.registered.uri}")')


def finetune_config(model_uri: str, path: Path | None, overrides: list[str],
                    options: dict[str, Any]):
    """The validated ``FinetuneConfig`` of a command line (``options``: those given). A bad
    value becomes a ``ConfigError`` naming the option that gave it, else its config key."""
    from pretrain.config.finetune import load_finetune_config
    from pretrain.config.load import ConfigError, parse_override

    values = {OPTION_KEYS.get(name, name): value for name, value in options.items()}
    try:
        return load_finetune_config(path, overrides, model_uri=model_uri, **values)
    except ConfigError as exc:
        key, sep, message = str(exc).partition(": ")
        overridden = {".".join(parse_override(item)[0]) for item in overrides if "=" in item}
        by_option = {OPTION_KEYS.get(name, name): name for name in options}
        if sep and key in values and key not in overridden:
            raise ConfigError(f"--{by_option[key].replace('_', '-')}: {message}") from None
        if key == "data" and message.startswith("Field required"):
            raise ConfigError("--data: required (or 'data' in --config, or data=...)") from None
        raise
