"""``pretrain finetune``: from a registered encoder to a registered classifier.

Register with ``app.command()(finetune)`` in ``pretrain.cli.main``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def finetune(
    model_uri: Annotated[str, typer.Argument(help="Encoder: models:/NAME@ALIAS, "
                                             "models:/NAME/VERSION, runs:/RUN_ID/encoder or a "
                                             "folder.")],
    data: Annotated[str, typer.Option(help="Labeled shards: a folder (train-*/test-* files are "
                                      "split by name, else every 5th sample is test), a "
                                      "pattern, or 'cifar10'.")],
    test_data: Annotated[str | None, typer.Option(help="Separate test shards.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the train split.")] = 1,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (> 0, "
                                      "cosine decay).")] = 1e-3,
    linear_only: Annotated[bool, typer.Option("--linear-only", help="Freeze the encoder; "
                                              "train only the head.")] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    weight_decay: Annotated[float, typer.Option(min=0.0)] = 1e-4,
    max_train: Annotated[int | None, typer.Option(min=1, help="Train images at most.")] = None,
    max_test: Annotated[int | None, typer.Option(min=1, help="Test images at most.")] = None,
    registry_name: Annotated[str, typer.Option(help="Registered model name of the classifier.")]
        = "finetuned-classifier",
    alias: Annotated[str | None, typer.Option(help="Alias for the new version.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also keep the classifier files here.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda (default: cuda if "
                                               "available).")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default: the "
                                                   "source run's).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Add a classification head to an encoder, train it on labeled shards, report test
    accuracy and register the classifier (safetensors + config.json) as its own model."""
    from pretrain.cli.progress import progress_bar
    from pretrain.finetune import finetune as run_finetune

    if lr <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--lr")
    with progress_bar("finetuning") as update:
        result = run_finetune(model_uri, data, epochs, lr, linear_only, tracking_uri,
                              registry_name, test_data=test_data, batch_size=batch_size,
                              weight_decay=weight_decay, max_train=max_train, max_test=max_test,
                              device=device, seed=seed, experiment=experiment, alias=alias,
                              out_dir=out, progress=update)
    typer.echo(f"test accuracy {100 * result.test_accuracy:.2f}% on {result.test_samples} images "
               f"({result.num_classes} classes, {result.train_samples} train images, "
               f"{result.seconds:.0f}s)")
    typer.echo(f"MLflow run {result.run_id}")
    if result.registered is not None:
        typer.echo(f"registered {result.registered.uri}; load it with\n"
                   f"    from pretrain.classifier import load_classifier\n"
                   f'    model = load_classifier("{result.registered.uri}")')
