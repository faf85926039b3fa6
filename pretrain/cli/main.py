"""``pretrain``: train, make data, export/pull encoders, benchmark, open the UI."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer

from pretrain.cli import data as data_cli
from pretrain.cli import k8s as k8s_cli
from pretrain.cli import jobs as jobs_cli
from pretrain.cli.errors import run_cli
from pretrain.cli.finetune import finetune
from pretrain.cli.probe import probe

app = typer.Typer(help="Self-supervised pretraining with chosen, measured invariances.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(data_cli.app, name="data")
app.add_typer(k8s_cli.app, name="k8s")
app.command()(probe)
app.command()(finetune)

ConfigArg = Annotated[Path, typer.Argument(help="YAML config (see configs/).")]
OverridesArg = Annotated[list[str] | None, typer.Argument(
    help="Dotted overrides, e.g. data.batch_size=128 optim.lr=2e-3.", show_default=False)]


@app.command()
def run(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Train CONFIG (re-running the same name resumes), then register the encoder."""
    from pretrain.cli.report import print_run_summary
    from pretrain.config import load_config
    from pretrain.run import run as run_job

    cfg = load_config(config, overrides or [])
    print_run_summary(run_job(cfg))


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a pretraining run.")],
    name: Annotated[str | None, typer.Option(help="Registered model name "
                                             "(default: the run's registry.name).")] = None,
    alias: Annotated[str | None, typer.Option(help="Extra alias besides 'latest'.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Export a run's latest checkpointed encoder and register it as a new model version."""
    from pretrain.exporting import export_run

    registered = export_run(run_id, name=name, alias=alias, tracking_uri=tracking_uri)
    typer.echo(f"registered {registered.name} version {registered.version}: {registered.uri}")


@app.command()
def pull(
    model_uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION "
                                             "or runs:/RUN_ID/encoder.")],
    out: Annotated[Path, typer.Option(help="Folder to write model.safetensors + config.json.")],
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Download an encoder's files and verify their checksum."""
    from pretrain.hub import pull as pull_files
    from pretrain.tracking import resolve_tracking_uri

    path = pull_files(model_uri, out, tracking_uri=resolve_tracking_uri(tracking_uri))
    typer.echo(f"wrote {path / 'model.safetensors'} and {path / 'config.json'} (checksum ok)")


@app.command()
def bench(config: ConfigArg, overrides: OverridesArg = None,
          steps: Annotated[int, typer.Option(help="Timed steps per mode.")] = 20,
          warmup: Annotated[int, typer.Option(help="Untimed steps first.")] = 3) -> None:
    """Throughput: plain PyTorch vs DeepSpeed compute-only vs end-to-end (shards->step)."""
    from pretrain.bench import format_bench, run_bench
    from pretrain.config import load_config

    cfg = load_config(config, overrides or [])
    typer.echo(format_bench(run_bench(cfg, steps=steps, warmup=warmup)))


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port for the MLflow UI.")] = 5000,
       tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None
       ) -> None:
    """Open the MLflow UI on the local store (mlflow.db in this folder)."""
    from pretrain.tracking import local_store_paths, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    store = local_store_paths(uri)
    if store is None:
        raise typer.BadParameter(f"{uri} is a server: open it in a browser",
                                 param_hint="--tracking-uri")
    db, artifacts = store
    if not db.is_file():
        raise FileNotFoundError(f"no MLflow store at {db}: run 'pretrain run' here first")
    typer.echo(f"MLflow UI on http://127.0.0.1:{port} (Ctrl-C to stop)")
    subprocess.run(["mlflow", "ui", "--backend-store-uri", uri, "--default-artifact-root",
                    artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(port)], check=False)


app.command()(jobs_cli.submit)
app.command()(jobs_cli.status)
app.command()(jobs_cli.logs)
app.command()(jobs_cli.stop)
app.command()(jobs_cli.jobs)


def main() -> None:
    run_cli(typer.main.get_command(app))


if __name__ == "__main__":
    main()
