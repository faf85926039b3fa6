"""``pretrain probe``: measure what an encoder ignores and keeps; log it as an MLflow run.

Register with ``app.command()(probe)`` in ``pretrain.cli.main``.
"""

from __future__ import annotations

from typing import Annotated

import typer

ModelsArg = Annotated[list[str], typer.Argument(
    help="Encoder(s): models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/encoder or a folder "
    "with model.safetensors + config.json. Several with --compare.", show_default=False)]


def probe_config(data: str, transforms: list[str] | None, **overrides):
    """A validated ``ProbesConfig``; a bad value becomes a ``ConfigError`` naming the option."""
    from pydantic import ValidationError

    from pretrain.config.load import ConfigError, describe_validation_error
    from pretrain.probes.config import ProbesConfig

    values = {k: v for k, v in overrides.items() if v is not None}
    names = [t.strip() for item in transforms or [] for t in item.split(",") if t.strip()]
    if names:
        values["transforms"] = names
    try:
        return ProbesConfig(data=data, **values)
    except ValidationError as exc:
        key, _, message = describe_validation_error(exc).partition(": ")
        raise ConfigError(f"--{key.split('.')[0].replace('_', '-')}: {message}") from None


def probe(
    model_uris: ModelsArg,
    data: Annotated[str, typer.Option(help="Probe data: 'synth3d' (held-out rendered objects, "
                                      "3D transformations included), 'cifar10', or a shard "
                                      "folder/pattern.")] = "synth3d",
    transforms: Annotated[list[str] | None, typer.Option(
        help="Transformations to probe (repeat or comma-separate), e.g. crop,hue,object_rotation. "
        "Default: all that the data supports.")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Probe every MODEL_URI on the same "
                                          "set and log one comparison run.")] = False,
    max_train: Annotated[int | None, typer.Option(help="Probe-train images at most.")] = None,
    max_test: Annotated[int | None, typer.Option(help="Probe-test images at most.")] = None,
    pairs: Annotated[int | None, typer.Option(help="Images transformed per T and split.")] = None,
    cache_dir: Annotated[str | None, typer.Option(help="Where the synth3d probe set is "
                                                  "rendered.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if "
                                               "available).")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default: the "
                                                   "source run's).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Probe encoders: linear/kNN accuracy, invariance and equivariance per transformation,
    health. Logs a new MLflow run (metrics + invariance-profile PNG) linked to the source."""
    from pretrain.cli.progress import progress_bar
    from pretrain.workflows.probe import compare_models, probe_model

    if compare and len(model_uris) < 2:
        raise typer.BadParameter("--compare needs at least two MODEL_URIs", param_hint="MODEL_URIS")
    if not compare and len(model_uris) != 1:
        raise typer.BadParameter("give one MODEL_URI, or several with --compare",
                                 param_hint="MODEL_URIS")
    cfg = probe_config(data, transforms, max_train=max_train, max_test=max_test,
                       pairs_train=pairs, pairs_test=pairs, cache_dir=cache_dir)
    if compare:
        with progress_bar("probing") as update:
            result = compare_models(model_uris, data, None, tracking_uri, cfg=cfg,
                                    experiment=experiment, device=device, progress=update)
        for label, metrics in result.metrics.items():
            typer.echo(f"\n{label}")
            typer.echo(format_metrics(metrics))
        typer.echo(f"\ncomparison run {result.run_id}: {', '.join(result.artifacts)}")
        return
    with progress_bar("probing") as update:
        single = probe_model(model_uris[0], data, None, tracking_uri, cfg=cfg,
                             experiment=experiment, device=device, progress=update)
    typer.echo(format_metrics(single.metrics))
    link = f" (source run {single.source.run_id})" if single.source.run_id else ""
    typer.echo(f"\nprobe run {single.run_id}{link}: {', '.join(single.artifacts)}")


def format_metrics(metrics: dict[str, float]) -> str:
    """One ``name  value`` line per metric, names aligned."""
    width = max((len(k) for k in metrics), default=0)
    return "\n".join(f"{k:<{width}}  {v:8.4f}" for k, v in metrics.items())
