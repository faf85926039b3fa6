"""``pretrain k8s ...``: Kubernetes manifests for a run.

Register with ``app.add_typer(k8s_cli.app, name="k8s")`` in ``pretrain.cli.main``; until then
``python -m pretrain.cli.k8s render ...`` runs the same command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Kubernetes: render KubeRay jobs for a config.", no_args_is_help=True,
                  add_completion=False)


@app.callback()
def k8s() -> None:
    """Kubernetes: render KubeRay jobs for a config (see k8s/README.md)."""


@app.command("render")
def render(
    config: Annotated[Path, typer.Argument(help="YAML config (see configs/).")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="Dotted overrides, e.g. cluster.num_workers=4 "
        "cluster.storage_path=s3://bucket/runs.", show_default=False)] = None,
    image: Annotated[str, typer.Option(help="Platform image, pinned: REGISTRY/NAME:VERSION or "
                                       "NAME@sha256:DIGEST (built from docker/Dockerfile).")] = ...,
    gpus: Annotated[int, typer.Option(help="GPUs per worker pod (0: CPU pods); one per "
                                      "training worker.")] = 0,
    name: Annotated[str | None, typer.Option(help="RayJob name (default: from the run "
                                             "name).")] = None,
    namespace: Annotated[str | None, typer.Option(help="Namespace to put in the manifests "
                                                  "(default: none, kubectl's current).")] = None,
) -> None:
    """Print the ConfigMap and RayJob for CONFIG, ready for 'kubectl apply -f -'."""
    from pretrain.config import load_config
    from cluster.k8s_manifest import render_yaml

    cfg = load_config(config, overrides or [])
    typer.echo(render_yaml(cfg, image=image, gpus=gpus, name=name, namespace=namespace), nl=False)


if __name__ == "__main__":
    from pretrain.cli.errors import run_cli

    run_cli(typer.main.get_command(app))
