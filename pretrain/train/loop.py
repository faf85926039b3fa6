"""The per-worker training loop: data -> augment -> objective -> DeepSpeed, with checkpoints and
rank-0 MLflow metrics. Independent of Ray: ``cluster/`` supplies the rank, device and the run's
checkpoint store.

Determinism: data order is a function of (seed, epoch, rank) and augmentation randomness of
(seed, step, rank), so resuming at step s replays exactly what an uninterrupted run would do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from augment.pipeline import ViewAugmenter
from objectives.registry import build_objective
from pretrain.config.schema import RunConfig
from pretrain.data.gpu_decode import resolve_gpu_decode
from pretrain.data.reader import EndlessLoader, make_endless_loader
from pretrain.models.folder import write_encoder
from pretrain.train import checkpoint, resume
from pretrain.train.engine import build_engine
from pretrain.train.plan import TrainingPlan, plan_training
from pretrain.train.resources import cpu_split
from pretrain.train.step import RunningMeans, StepHealth, run_step
from pretrain.train.store import CheckpointStore
from pretrain.models.encoder import EncoderInfo, build_encoder

log = logging.getLogger("pretrain.train")


@dataclass(frozen=True)
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device


def build_model(cfg: RunConfig):
    """Encoder + objective with weights initialised from ``cfg.seed`` (same on every rank)."""
    torch.manual_seed(cfg.seed)
    encoder, info = build_encoder(cfg.encoder.model, cfg.data.image_size, cfg.encoder.kwargs,
                                  stem=cfg.encoder.stem)
    objective = build_objective(cfg.objective.name, cfg.objective.settings(), encoder,
                                info.num_features)
    return objective, info


def build_augmenter(cfg: RunConfig, info: EncoderInfo) -> ViewAugmenter:
    """The view augmenter of ``cfg`` for an encoder described by ``info`` (its normalisation)."""
    return ViewAugmenter(cfg.augment, mean=info.mean, std=info.std,
                         output_size=cfg.data.image_size)


def fit(cfg: RunConfig, ctx: WorkerContext, store: CheckpointStore, *, tracking_uri: str | None,
        run_id: str | None) -> int:
    """Train until ``plan.stop_step``, resuming from the newest checkpoint in ``store`` that
    verifies; returns the final step. Rank 0 logs to ``run_id``."""
    plan = plan_training(cfg, ctx.world_size)
    objective, info = build_model(cfg)
    engine = build_engine(objective, cfg, total_steps=plan.total_steps,
                          world_size=ctx.world_size, device=ctx.device)
    augmenter = build_augmenter(cfg, info)
    state = checkpoint.TrainState(mlflow_run_id=run_id)
    carried = []
    with resume.newest_loadable(store, rank=ctx.rank, world_size=ctx.world_size,
                                device=ctx.device) as found:
        if found is not None:
            state = checkpoint.load(engine, found.path)
            log.info("rank %d resumed at step %d from %s", ctx.rank, state.step, found.name)
            carried = _read_unsent(found.path, ctx.rank)
    metrics = _rank0_metrics(tracking_uri, run_id, ctx.rank, cfg.tracking.system_metrics)
    if metrics is not None:
        metrics.enqueue(carried)  # metrics the checkpoint took along unsent: send them now
    prober = None
    if ctx.rank == 0 and cfg.probes.every_steps > 0:
        from pretrain.probes.features import Preprocess
        from pretrain.probes.hooks import OnlineProber

        prober = OnlineProber(cfg.probes, Preprocess.from_info(info), ctx.device)
    state.loader_workers = _loader_workers(cfg, ctx, state.loader_workers)
    try:
        _train(cfg, ctx, plan, engine, augmenter, state, store, info, metrics, prober)
    finally:
        if metrics is not None and (lost := metrics.close()):
            log.warning("steps %s not sent to MLflow yet; the last checkpoint carries them",
                        lost)
    return state.step


def _train(cfg, ctx, plan: TrainingPlan, engine, augmenter, state, store, info, metrics,
           prober) -> None:
    running = RunningMeans()
    window = _Window()
    step_health = StepHealth(int(getattr(engine, "skipped_steps", 0)))  # restored on resume
    started = time.perf_counter()
    if state.step >= plan.stop_step:
        return
    with open_loader(cfg, ctx, plan, start_step=state.step,
                     loader_workers=state.loader_workers) as loader:
        for batch, waited in timed_batches(loader):
            epoch = batch.epoch
            if epoch * plan.steps_per_epoch + batch.index != state.step:
                raise RuntimeError(f"the loader served epoch {epoch} batch {batch.index} at step "
                                   f"{state.step} ({plan.steps_per_epoch} steps per epoch)")
            batch = batch.to(ctx.device)
            out = run_step(engine, augmenter, batch, seed=cfg.seed, step=state.step,
                           rank=ctx.rank, total_steps=plan.total_steps)
            state.step += 1
            running.add({"loss/total": out.loss, **{f"loss/{k}": v for k, v in out.terms.items()}})
            window.add(waited, batch)
            last = state.step == plan.stop_step
            if state.step % cfg.tracking.log_every_steps == 0 or last:
                values = {**running.pop(), **window.pop(ctx, batch_size=cfg.data.batch_size),
                          "lr": engine.get_lr()[0], "epoch": float(epoch)}
                values.update(step_health.check(engine, state.step, values["loss/total"]))
                if metrics is not None:
                    metrics.log_metrics(state.step, values)
                if ctx.rank == 0:
                    log.info(progress_line(state.step, plan.stop_step, values,
                                           cfg.data.batch_size * ctx.world_size))
            # At the last step the full end-of-run suite follows, so the light pass is skipped.
            if prober is not None and prober.due(state.step) and not (
                    last and cfg.probes.enabled):
                probe_values = prober.run(engine.module.encoder, engine.module.probe_features())
                probe_values["probe/online_time_frac"] = prober.seconds / (
                    time.perf_counter() - started)
                log.info("step %d probes: linear %.3f, %.0f%% of training time on probes",
                         state.step, probe_values.get("probe/linear_top1", float("nan")),
                         100 * probe_values["probe/online_time_frac"])
                if metrics is not None:
                    metrics.log_metrics(state.step, probe_values)
            if state.step % cfg.checkpoint.every_steps == 0 or last:
                _checkpoint(engine, state, store, info, cfg, ctx, metrics)
            if last:
                break  # the loader is endless: the run's plan decides where it stops


def progress_line(step: int, stop: int, values: dict[str, float], images_per_step: float) -> str:
    """``step 40/120 | loss 21.3 | 118 img/s | wait 3% | ETA 1m05s``."""
    rate = values.get("throughput/img_per_s", 0.0)
    steps_per_s = rate / max(images_per_step, 1.0)
    eta = (stop - step) / steps_per_s if steps_per_s > 0 else float("nan")
    eta_text = f"{int(eta // 60)}m{int(eta % 60):02d}s" if eta == eta else "?"
    return (f"step {step}/{stop} | loss {values.get('loss/total', float('nan')):.4g} | "
            f"{rate:.0f} img/s | wait {100 * values.get('throughput/data_wait_frac', 0):.0f}% | "
            f"ETA {eta_text}")


def _loader_workers(cfg: RunConfig, ctx: WorkerContext, started_with: int | None) -> int:
    """This worker's loader processes: the count the run started with when its checkpoint
    records one (the data order depends on it), else ``cpu_split``'s."""
    derived = cpu_split(cfg, accelerated=ctx.device.type != "cpu").loader_workers
    if started_with is not None and started_with != derived:
        # Torch's threads stay as the worker set them for the derived count: bitwise resume on
        # the CPU needs the same thread count too, and the difference is a few processes.
        log.warning("rank %d: resuming with the %d loader process(es) the run started with, not "
                    "%d, so that the data order stays the same", ctx.rank, started_with, derived)
        return started_with
    return derived


def open_loader(cfg: RunConfig, ctx: WorkerContext, plan: TrainingPlan, *,
                start_step: int = 0, loader_workers: int | None = None) -> EndlessLoader:
    """The run's one persistent loader for this worker, from global step ``start_step`` on (see
    ``pretrain.data.reader.make_endless_loader``), with ``cfg``'s data settings and the loader
    processes of ``pretrain.train.resources.cpu_split`` unless ``loader_workers`` says. With ``data.gpu_decode`` on a CUDA
    device the batches hold undecoded JPEGs that ``batch.to(device)`` decodes there. Close it
    (or use ``with``)."""
    if loader_workers is None:
        loader_workers = cpu_split(cfg, accelerated=ctx.device.type != "cpu").loader_workers
    return make_endless_loader(
        plan.urls, plan.counts, world_size=ctx.world_size, rank=ctx.rank,
        batch_size=cfg.data.batch_size, num_workers=loader_workers,
        image_size=cfg.data.image_size, views=cfg.data.views, seed=cfg.seed,
        start_step=start_step, shuffle_buffer=cfg.data.shuffle_buffer,
        max_skip_frac=cfg.data.max_skip_frac, pin_memory=ctx.device.type == "cuda",
        keep_encoded=resolve_gpu_decode(cfg.data.gpu_decode, ctx.device))


def endless_batches(cfg: RunConfig, ctx: WorkerContext, plan: TrainingPlan) -> Iterator:
    """``(batch, seconds waited)`` over epoch after epoch, in a real run's data order (for
    benchmarks that train for a time budget instead of a step count); the loader's processes
    stop when the generator is closed or collected."""
    with open_loader(cfg, ctx, plan) as loader:
        yield from timed_batches(loader)


def timed_batches(batches: Iterator) -> Iterator:
    """Yield (batch, seconds spent waiting for it)."""
    while True:
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        yield batch, time.perf_counter() - start


class _Window:
    """Throughput, input-wait share and skipped samples over one logging interval."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.waited = 0.0
        self.steps = 0
        self.skipped = 0

    def add(self, waited: float, batch) -> None:
        self.waited += waited
        self.steps += 1
        self.skipped = batch.skipped

    def pop(self, ctx: WorkerContext, batch_size: int) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        skipped = torch.tensor([float(self.skipped)], device=ctx.device)
        if dist.is_initialized() and ctx.world_size > 1:
            dist.all_reduce(skipped)  # every rank logs at the same steps, so this never hangs
        values = {
            "throughput/img_per_s": self.steps * batch_size * ctx.world_size / elapsed,
            "throughput/data_wait_frac": self.waited / elapsed,
            "data/skipped": float(skipped.item()),
        }
        self.__init__()
        return values


def _checkpoint(engine, state, store: CheckpointStore, info, cfg: RunConfig, ctx: WorkerContext,
                metrics=None) -> None:
    def extras(out: Path) -> None:
        if ctx.rank == 0:
            write_encoder(engine.module.encoder, info, out / checkpoint.ENCODER_DIR,
                          objective=cfg.objective.name, data=cfg.data.path or "synth3d",
                          run_id=state.mlflow_run_id, step=state.step)
        if metrics is not None:
            # Steps up to here are never re-run after a restore, so their unsent metrics must
            # travel with the checkpoint or they would be lost with this process.
            from pretrain.tracking.metrics import UNSENT_FILE, write_unsent

            write_unsent(out / UNSENT_FILE, metrics.unsent())

    resume.save(store, engine, state, rank=ctx.rank, world_size=ctx.world_size,
                device=ctx.device, keep=cfg.checkpoint.keep, extras=extras)


def _read_unsent(restored: Path, rank: int) -> list:
    if rank != 0:
        return []
    from pretrain.tracking.metrics import UNSENT_FILE, read_unsent

    return read_unsent(restored / UNSENT_FILE)


def _rank0_metrics(tracking_uri: str | None, run_id: str | None, rank: int, system_metrics: bool):
    if rank != 0 or tracking_uri is None or run_id is None:
        return None
    from pretrain.tracking.metrics import MetricLogger

    # skip_through_step=None: the logger asks MLflow for the last logged step itself, in the
    # background, so a restart during a tracking-server outage still trains.
    logger = MetricLogger(tracking_uri, run_id, skip_through_step=None)
    if system_metrics:
        logger.start_system_metrics()
    return logger
