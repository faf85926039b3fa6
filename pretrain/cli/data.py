"""``pretrain data ...``: generate, import and inspect shard sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pretrain.cli.progress import progress_bar

app = typer.Typer(help="Make and inspect webdataset shard sets.", no_args_is_help=True,
                  add_completion=False)


@app.command("synth3d")
def synth3d(
    out: Annotated[Path, typer.Option(help="Output folder for the shards.")],
    classes: Annotated[int, typer.Option(help="Shape classes (at most the number of shapes).")] = 12,
    instances_per_class: Annotated[int, typer.Option(help="Objects per class.")] = 50,
    views: Annotated[int, typer.Option(help="Rendered views per object.")] = 4,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same shards.")] = 0,
    shard_size: Annotated[int, typer.Option(help="Objects per shard.")] = 200,
) -> None:
    """Render synthetic 3D objects (rotation, hue and light known per view) into shards."""
    from pretrain.data.synth3d import Synth3DConfig, generate_synth3d

    cfg = _validated(Synth3DConfig, classes=classes, instances_per_class=instances_per_class,
                     views=views, size=size, seed=seed, shard_size=shard_size)
    with progress_bar("rendering objects") as update:
        report = generate_synth3d(cfg, out, progress=update)
    typer.echo(f"wrote {report.samples} objects x {report.views} views to {report.out_dir} "
               f"in {report.seconds:.1f}s ({report.views_per_s:.0f} views/s)")


@app.command("import")
def import_folder(
    image_folder: Annotated[Path, typer.Argument(help="Folder of images: one subfolder per "
                                                 "class, or a flat unlabeled folder.")],
    out: Annotated[Path, typer.Option(help="Output folder for the shards.")],
    shard_size: Annotated[int, typer.Option(help="Samples per shard.")] = 1000,
) -> None:
    """Write an image folder as webdataset shards (with index.json)."""
    from pretrain.data.importer import import_image_folder

    if shard_size < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--shard-size")

    def stage(line: str) -> None:
        typer.echo(line, err=True)

    with progress_bar("importing images") as update:
        report = import_image_folder(image_folder, out, shard_size=shard_size, progress=update,
                                     stage=stage)
    labels = f"{len(report.classes)} classes" if report.classes else "unlabeled"
    typer.echo(f"wrote {report.samples} images ({labels}) in {report.shards} shard(s) to "
               f"{report.out_dir}; {report.reencoded} re-encoded, {report.unreadable} unreadable")
    for path, reason in report.unreadable_files:
        typer.echo(f"  skipped {path}: {reason}")


@app.command("inspect")
def inspect(
    source: Annotated[str, typer.Argument(help="Shard folder or URL pattern, e.g. "
                                          "'data/train-{000000..000009}.tar'.")],
    max_samples: Annotated[int | None, typer.Option(help="Stop after this many samples.")] = None,
) -> None:
    """Count samples, keys and classes; list unreadable samples. Exit code 2 when no sample
    could be read."""
    from pretrain.data.errors import DataError
    from pretrain.data.inspect import format_report, inspect_shards

    report = inspect_shards(source, max_samples=max_samples)
    typer.echo(format_report(report))
    if report.samples == report.unreadable:
        raise DataError(f"{source}: no readable sample ({report.samples} read, "
                        f"{report.unreadable} unreadable, {len(report.broken_shards)} broken "
                        "shard(s))")


def _validated(model, **values):
    from pydantic import ValidationError

    from pretrain.config.load import ConfigError, describe_validation_error

    try:
        return model(**values)
    except ValidationError as exc:
        key, _, message = describe_validation_error(exc).partition(": ")
        raise ConfigError(f"--{key.replace('_', '-')}: {message}") from None
