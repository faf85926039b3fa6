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
def run(config: ConfigArg, overrides: OverridesArg = None,
        allow_config_change: Annotated[bool, typer.Option(
            "--allow-config-change", help="Resume a run of the same name even though its config "
            "differs in more than max_steps, logging, probes or registry settings.")] = False,
        ) -> None:
    """Train CONFIG (re-running the same name resumes), then register the encoder."""
    from pretrain.cli.errors import STOPPED_EXIT, fail
    from pretrain.cli.report import print_run_summary
    from pretrain.config import load_config
    from pretrain.workflows.run import JobStopped
    from pretrain.workflows.run import run as run_job

    cfg = load_config(config, overrides or [])
    try:
        summary = run_job(cfg, allow_config_change=allow_config_change)
    except JobStopped as exc:  # a KeyboardInterrupt, which typer would turn into a silent 130
        fail(str(exc), STOPPED_EXIT)
    print_run_summary(summary)


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a pretraining run.")],
    name: Annotated[str | None, typer.Option(help="Registered model name "
                                             "(default: the run's registry.name).")] = None,
    alias: Annotated[str | None, typer.Option(help="Extra alias besides 'latest'.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Export a run's latest checkpointed encoder and register it as a new model version."""
    from pretrain.workflows.export_run import export_run

    registered = export_run(run_id, name=name, alias=alias, tracking_uri=tracking_uri)
    typer.echo(f"registered {registered.name} version {registered.version}: {registered.uri}")


@app.command()
def pull(
    model_uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION "
                                             "or runs:/RUN_ID/encoder.")],
    out: Annotated[Path, typer.Option(help="Folder to write model.safetensors, config.json "
                                      "(timm's format) and README.md (the model card) into.")],
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Download an encoder's files, verify them against the registry's SHA-256 record, then
    move them into --out (a failed pull leaves --out as it was). timm opens the folder with
    timm.create_model("local-dir:OUT", pretrained=True)."""
    from pretrain.models.loading import pull as pull_files
    from pretrain.tracking import resolve_tracking_uri

    path = pull_files(model_uri, out, tracking_uri=resolve_tracking_uri(tracking_uri))
    written = [str(path / f) for f in ("model.safetensors", "config.json", "README.md")
               if (path / f).is_file()]
    typer.echo(f"wrote {', '.join(written)} (checksums ok)\n"
               f'load with timm: timm.create_model("local-dir:{path}", pretrained=True)')


@app.command()
def show(
    source: Annotated[str, typer.Argument(help="Run id, run name, runs:/RUN_ID, "
                                          "models:/NAME@ALIAS or models:/NAME/VERSION.")],
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Show a run's (or a model version's run's) headline probe figures, its invariance
    profile as a table, and the path of the profile PNG."""
    from pretrain.workflows.show import format_view, show_run

    typer.echo(format_view(show_run(source, tracking_uri=tracking_uri)))


@app.command()
def bench(config: ConfigArg, overrides: OverridesArg = None,
          steps: Annotated[int, typer.Option(min=1, help="Timed steps per mode and round.")] = 30,
          warmup: Annotated[int, typer.Option(min=0, help="Untimed steps before each timed "
                                              "window.")] = 3,
          repeats: Annotated[int, typer.Option(min=1, help="Rounds of every mode; each figure "
                                               "is the median over them.")] = 3,
          profile: Annotated[Path | None, typer.Option(
              file_okay=False, help="Also profile a few end-to-end steps: write a Chrome trace "
              "(DIR/trace.json), print the top operators and, on CUDA, the device syncs.",
              metavar="DIR")] = None) -> None:
    """Where a training step's time goes, part by part, on one device (no Ray).

    Each figure is the median over --repeats rounds, with its spread (min -
    max). The modes run interleaved in rounds (plain, compute-only, end-to-end,
    augmentation, loader), so drift and warm-up hit them alike, and every
    loader window crosses an epoch boundary. The figures:

    - augmentation alone: samples/s of the augmenter on a batch on the device
    - loader alone: samples/s per loader worker, nothing else running; and
      the wait (ms) for the first batch after the epoch boundary
    - plain PyTorch: img/s of a bare AdamW loop on views resident on the device
    - DeepSpeed compute-only: img/s of the engine on the same resident views
    - DeepSpeed end-to-end: img/s of the training loop's own step: shards ->
      decode -> device -> augment -> engine step -> the objective's step end
    - end-to-end / compute-only: per round; 1.0 means the input costs nothing
    - data-wait fraction: share of end-to-end time spent waiting for a batch
    """
    from pretrain.config import load_config
    from pretrain.workflows.bench import format_bench, run_bench

    cfg = load_config(config, overrides or [])
    typer.echo(format_bench(run_bench(cfg, steps=steps, warmup=warmup, repeats=repeats,
                                      profile=profile)))


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port for the MLflow UI.")] = 5000,
       tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None
       ) -> None:
    """Open the MLflow UI on the local store (mlflow.db in this folder)."""
    from pretrain.models.model_registry import MODEL_TRAINING_VIEW
    from pretrain.tracking import local_store_paths, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    store = local_store_paths(uri)
    if store is None:
        raise typer.BadParameter(f"{uri} is a server: open it in a browser",
                                 param_hint="--tracking-uri")
    db, artifacts = store
    if not db.is_file():
        raise FileNotFoundError(f"no MLflow store at {db}: run 'pretrain run' here first")
    # MLflow 3.17's UI opens in its GenAI view unless told otherwise (per browser, or by this
    # query parameter); the experiments' kind tag alone does not switch it.
    typer.echo(f"MLflow UI on http://127.0.0.1:{port}/#/experiments?{MODEL_TRAINING_VIEW} "
               "(Ctrl-C to stop)")
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
