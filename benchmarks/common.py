"""Shared by the benchmark scripts: train an objective in-process for a step or wall-clock budget,
and describe the machine, the command and the results as markdown.

Training uses the platform's own pieces (``pretrain.train.loop.build_model`` / ``endless_batches``,
``pretrain.train.engine.build_engine`` and the loop's training step
``pretrain.train.step.run_step``) with the DeepSpeed engine at world size 1, without Ray or
MLflow, so a budget buys the same steps a ``pretrain run`` would take, minus orchestration.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from augment.pipeline import ViewAugmenter
from pretrain.config.schema import RunConfig
from pretrain.models.encoder import EncoderInfo
from pretrain.train.distributed import single_process_group as _single_process_group
from pretrain.train.engine import build_engine
from pretrain.train.loop import WorkerContext, build_augmenter, build_model, endless_batches
from pretrain.train.plan import plan_training
from pretrain.train.seeding import generator_for
from pretrain.train.step import make_views, run_step

log = logging.getLogger("benchmarks")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TrainResult:
    """A budget-limited training run.

    Attributes:
        objective: the trained objective module (``objective.encoder`` is the backbone).
        info: the encoder's description (input size, mean/std) for preprocessing probes.
        steps: optimizer steps taken; ``planned_steps`` is the LR-schedule length the
            calibration predicted would fit the budget.
        samples: samples consumed by those steps (``steps x batch``; a sample may hold several
            views, e.g. renderings of one object).
        seconds: wall time from the start of the call (calibration and engine set-up included)
            to the end of the last step; ``step_seconds`` the calibrated time per step.
        data_wait_frac: share of the training loop spent waiting for the next batch.
        last_loss: loss of the last step.
    """

    objective: nn.Module
    info: EncoderInfo
    steps: int
    planned_steps: int
    samples: int
    seconds: float
    step_seconds: float
    data_wait_frac: float
    last_loss: float


def save_result(result: TrainResult, directory: Path, name: str) -> None:
    """Keep a trained run for re-probing without retraining: the objective's weights as
    ``name.safetensors`` (never a pickle) and the run's figures as ``name.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in result.objective.state_dict().items()}
    save_file(state, str(directory / f"{name}.safetensors"))
    meta = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
            if f.name not in ("objective", "info")}
    (directory / f"{name}.json").write_text(json.dumps(meta, indent=1))


def load_result(cfg: RunConfig, directory: Path, name: str,
                device: torch.device | None = None) -> TrainResult:
    """A run kept by ``save_result``: the objective of ``cfg`` with the saved weights."""
    objective, info = build_model(cfg)
    objective.load_state_dict(load_file(str(directory / f"{name}.safetensors")))
    meta = json.loads((directory / f"{name}.json").read_text())
    return TrainResult(objective=objective.to(device or default_device()), info=info, **meta)


def default_device() -> torch.device:
    """The GPU when there is one (timings then are not a CPU budget), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def single_process_group(device: torch.device | None = None):
    """A 1-process group (DeepSpeed needs one) for the block, destroyed after if created here."""
    device = device or default_device()
    return _single_process_group("nccl" if device.type == "cuda" else "gloo")


def calibrate_step_seconds(objective: nn.Module, augmenter: ViewAugmenter, batches: Iterator,
                           device: torch.device, seed: int, steps: int = 2) -> float:
    """Seconds per step (wait for data + augment + forward + backward) on a throwaway copy of
    ``objective``, over ``steps`` steps after one untimed step that pays one-off costs. The
    optimizer update is left out (a few percent of a step), so the estimate is slightly low and
    a run may stop at its deadline a little before its planned step count."""
    trial = copy.deepcopy(objective).to(device).train()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        batch, _ = next(batches)
        views = make_views(augmenter, batch.to(device), generator_for(seed, "calibrate", i))
        trial(views).loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / max(steps, 1)


def train_for(cfg: RunConfig, seconds: float | None = None, *, steps: int | None = None,
              device: torch.device | None = None, calibration_steps: int = 2) -> TrainResult:
    """Train ``cfg`` (data already prepared, see ``pretrain.workflows.prepare_data``) with the
    DeepSpeed engine at world size 1, for exactly ``steps`` optimizer steps or, given ``seconds``
    instead, until that much wall time has passed (at least one step). A step budget makes a run
    a function of its seed alone, however loaded the machine is; a time budget plans the LR
    schedule (and any EMA schedule) over the steps a calibration predicts will fit, so a run
    ends near the bottom of its cosine, as a real run would."""
    if (seconds is None) == (steps is None):
        raise ValueError("train_for needs exactly one of seconds and steps")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    started = time.perf_counter()
    deadline = None if seconds is None else started + seconds
    device = device or default_device()
    ctx = WorkerContext(rank=0, world_size=1, device=device)
    plan = plan_training(cfg, 1)
    objective, info = build_model(cfg)
    augmenter = build_augmenter(cfg, info)
    batches = endless_batches(cfg, ctx, plan)
    try:
        with single_process_group(device):
            if steps is None:
                # Calibrate on a stream of its own, so that training starts at the run's first
                # batch, in a real run's data order.
                calibration = endless_batches(cfg, ctx, plan)
                try:
                    step_s = calibrate_step_seconds(objective, augmenter, calibration, device,
                                                    cfg.seed, calibration_steps)
                finally:
                    calibration.close()
                planned = max(1, int((deadline - time.perf_counter()) / step_s))
                log.info("%s: %.2f s/step calibrated, %d steps planned in %.0f s",
                         cfg.objective.name, step_s, planned, seconds)
            else:
                step_s, planned = float("nan"), steps
            engine = build_engine(objective, cfg, total_steps=planned, world_size=1,
                                  device=device)
            step, waited, loop_start, out = 0, 0.0, time.perf_counter(), None
            while step < planned and (step == 0 or deadline is None
                                      or time.perf_counter() < deadline):
                batch, wait = next(batches)
                waited += wait
                # The training loop's own step (same seeding), so runs are reproducible.
                out = run_step(engine, augmenter, batch.to(device), seed=cfg.seed, step=step,
                               rank=0, total_steps=planned)
                step += 1
                if step % 25 == 0 or step == planned:  # progress on long runs
                    log.info("%s: step %d/%d, loss %.4g, %.0f s", cfg.objective.name, step,
                             planned, float(out.loss.detach()), time.perf_counter() - started)
            last_loss = float(out.loss.detach()) if out is not None else float("nan")
            loop_seconds = time.perf_counter() - loop_start
    finally:
        batches.close()  # ends the current DataLoader and its worker processes
    elapsed = time.perf_counter() - started
    if steps is not None:
        step_s = loop_seconds / max(step, 1)
    log.info("%s: %d/%d steps in %.0f s, last loss %.4g", cfg.objective.name, step, planned,
             elapsed, last_loss)
    return TrainResult(objective=engine.module, info=info, steps=step, planned_steps=planned,
                       samples=step * cfg.data.batch_size, seconds=elapsed, step_seconds=step_s,
                       data_wait_frac=waited / max(loop_seconds, 1e-9), last_loss=last_loss)


def machine_line() -> str:
    """Cores, CPU model, torch threads and load, e.g. to judge whether the machine was quiet."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{usable} usable cores of {os.cpu_count()} ({model}){gpu}, torch "
            f"{torch.__version__}, {torch.get_num_threads()} torch threads, load average {load}")


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that produced a report (``script`` relative to the repository root)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([".venv/bin/python", script, *args])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (every row as long as ``headers``)."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells for {len(headers)} columns")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal; '—' when missing."""
    return "—" if value is None else f"{100 * value:.1f}%"


def num(value: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals; '—' when missing."""
    return "—" if value is None else f"{value:.{digits}f}"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments both benchmarks take: encoder, threads, free config overrides, output."""
    parser.add_argument("--encoder", default="resnet18", help="timm model name")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="extra config override applied to every run "
                        "(repeatable), e.g. --set data.num_workers=2")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the markdown report to this file")


def configure(args: argparse.Namespace) -> None:
    """Logging and thread count for a benchmark process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)


def emit(report: str, out: Path | None) -> str:
    """Print the report and write it to ``out`` when given; returns it."""
    print(report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report + "\n")
    return report
