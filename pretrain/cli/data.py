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
    image_format: Annotated[str, typer.Option(
        "--format", metavar="[png|jpeg]",
        help="png: lossless views. jpeg: views as JPEG (--quality), several times faster to "
             "decode at 224 px, e.g. --size 256 --format jpeg.")] = "png",
    quality: Annotated[int, typer.Option(help="JPEG quality (1-95) with --format jpeg.")] = 90,
) -> None:
    """Render synthetic 3D objects (rotation, hue and light known per view) into shards."""
    from pretrain.data.synth3d import Synth3DConfig, generate_synth3d

    if image_format not in ("png", "jpeg"):
        raise typer.BadParameter(f"{image_format!r} is not one of png, jpeg", param_hint="--format")
    if not 1 <= quality <= 95:
        raise typer.BadParameter("must be in 1..95", param_hint="--quality")
    cfg = _validated(Synth3DConfig, classes=classes, instances_per_class=instances_per_class,
                     views=views, size=size, seed=seed, shard_size=shard_size,
                     image_format=image_format, jpeg_quality=quality)
    with progress_bar("rendering objects") as update:
        report = generate_synth3d(cfg, out, progress=update)
    typer.echo(f"wrote {report.samples} objects ({report.views} views) to {report.out_dir} "
               f"in {report.seconds:.1f}s ({report.views_per_s:.0f} views/s)")


@app.command("import")
def import_folder(
    image_folder: Annotated[Path, typer.Argument(help="Folder of images: one subfolder per "
                                                 "class, or a flat unlabeled folder.")],
    out: Annotated[Path, typer.Option(help="Output folder for the shards.")],
    shard_size: Annotated[int, typer.Option(help="Samples per shard.")] = 1000,
    image_format: Annotated[str, typer.Option(
        "--format", metavar="[keep|jpeg|png]",
        help="keep: JPEG and PNG files byte for byte, other formats as PNG. jpeg: every image as "
             "an RGB baseline JPEG, ImageNet-style (shorter side at most --short-side, 256 by "
             "default); the fast choice for 224 px training and the one data.gpu_decode needs. "
             "png: every image as PNG (lossless, slower to decode).")] = "keep",
    short_side: Annotated[int | None, typer.Option(
        help="Resize so the shorter side is at most this many pixels (aspect ratio kept, never "
             "enlarged). Default: 256 with --format jpeg, sizes kept otherwise; 0 keeps sizes.",
        show_default=False)] = None,
    quality: Annotated[int | None, typer.Option(
        help="JPEG quality (1-95) of the images that are re-encoded as JPEG. Default: 90 with "
             "--format jpeg, 95 for JPEGs resized under --format keep.",
        show_default=False)] = None,
) -> None:
    """Write an image folder as webdataset shards (with index.json).

    ImageNet-style, for 224 px training: --format jpeg (= --short-side 256 --quality 90).
    """
    from pretrain.data.importer import IMAGE_FORMATS, Encoding, import_image_folder

    if shard_size < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--shard-size")
    if image_format not in IMAGE_FORMATS:
        raise typer.BadParameter(f"{image_format!r} is not one of {', '.join(IMAGE_FORMATS)}",
                                 param_hint="--format")
    if short_side is not None and short_side != 0 and short_side < 8:
        raise typer.BadParameter("must be >= 8 px, or 0 to keep sizes", param_hint="--short-side")
    if quality is not None and not 1 <= quality <= 95:
        raise typer.BadParameter("must be in 1..95", param_hint="--quality")
    encoding = Encoding.for_format(image_format, short_side, quality)

    def stage(line: str) -> None:
        typer.echo(line, err=True)

    with progress_bar("importing images") as update:
        report = import_image_folder(image_folder, out, shard_size=shard_size, progress=update,
                                     stage=stage, encoding=encoding)
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
