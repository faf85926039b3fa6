"""``pretrain bench``: where a training step's time goes, part by part.

Figures, all from one process (no Ray), the same model, objective and batch:

- ``augment``: the augmenter alone on a batch already on the device (samples/s);
- ``loader``: the loader alone, nothing consuming its batches but the clock (samples/s per
  loader worker), and how long the first batch after an epoch boundary takes to arrive;
- ``plain``: a bare PyTorch loop (AdamW) on views already resident on the device;
- ``compute``: the DeepSpeed engine on the same resident views;
- ``end_to_end``: the training loop's own step (``pretrain.train.step.run_step``) fed by the
  loader: shards -> decode (loader workers) -> device -> augment -> DeepSpeed step -> the
  objective's ``on_step_end`` (seq-JEPA's EMA update included);
- ``data_wait``: the share of the end-to-end time spent waiting for the next batch.

The modes run interleaved in rounds (plain, compute, end-to-end, augment, loader, then plain
again ...), so drift and warm-up hit them alike; each figure is the median over the rounds,
reported with its spread (min-max). Every loader window (loader alone and end-to-end) is a new
loader placed so that an epoch boundary falls in the middle of its timed steps: the loader skips
to its start as a resumed run does (reading, not decoding, what it skips), and its warm-up
(``warmup`` steps, at least one per loader worker, so that every worker has started) is untimed;
the figures thus include what an epoch boundary costs, not what starting a loader costs.

``profile`` (``--profile DIR``) adds a torch profiler trace of a few end-to-end steps (Chrome
trace JSON), the top operators by self time, and on CUDA the number of device syncs per step and
per augmentation call, counted under ``torch.cuda.set_sync_debug_mode("warn")``.
"""

from __future__ import annotations

import copy
import itertools
import math
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain.config.schema import RunConfig
from pretrain.data.reader import LoaderBatch
from pretrain.train.distributed import single_process_group
from pretrain.train.engine import build_engine
from pretrain.train.loop import (WorkerContext, build_augmenter, build_model, open_loader,
                                 timed_batches)
from pretrain.train.plan import TrainingPlan, plan_training
from pretrain.train.resources import cpu_split
from pretrain.train.seeding import generator_for
from pretrain.train.step import make_views, run_step, step_on_views

#: The modes of one round, in the order they run.
MODES = ("plain", "compute", "end_to_end", "augment", "loader")


@dataclass(frozen=True)
class Figure:
    """One figure measured once per round."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)


@dataclass(frozen=True)
class ProfileSummary:
    """What ``--profile`` found over ``steps`` end-to-end steps.

    Attributes:
        trace: the Chrome trace JSON (open in chrome://tracing or https://ui.perfetto.dev).
        top_ops: ``(operator, calls, self milliseconds)``, by self device time on CUDA, self CPU
            time on the CPU, largest first.
        syncs_per_step: device syncs per end-to-end step (``None`` on the CPU, which has none).
        augment_syncs_per_call: device syncs per augmenter call (``None`` on the CPU).
    """

    trace: Path
    steps: int
    top_ops: tuple[tuple[str, int, float], ...]
    syncs_per_step: float | None
    augment_syncs_per_call: float | None


@dataclass(frozen=True)
class BenchResult:
    """Every figure of one bench (see the module docstring); each ``Figure`` holds one value
    per round."""

    model: str
    objective: str
    batch_size: int
    image_size: int
    device: str
    threads: int
    loader_workers: int
    steps: int
    warmup: int
    repeats: int
    steps_per_epoch: int
    augment_samples_s: Figure
    loader_samples_s_per_worker: Figure
    loader_boundary_latency_s: Figure
    plain_img_s: Figure
    compute_img_s: Figure
    end_to_end_img_s: Figure
    ratio: Figure  # end-to-end over compute-only, per round (1.0: the input costs nothing)
    data_wait_frac: Figure
    peak_rss_mib: float
    profile: ProfileSummary | None = None


def run_bench(cfg: RunConfig, steps: int = 30, warmup: int = 3, repeats: int = 3,
              profile: Path | None = None, profile_steps: int = 5) -> BenchResult:
    """Measure ``cfg`` as the module docstring says: ``repeats`` rounds of every mode, each
    with ``warmup`` untimed and ``steps`` timed steps; with ``profile`` a directory to write
    the profiler trace into."""
    if steps < 1 or warmup < 0 or repeats < 1 or profile_steps < 1:
        raise ValueError(f"bench needs steps >= 1, warmup >= 0, repeats >= 1 and profile steps "
                         f">= 1 (got {steps}, {warmup}, {repeats}, {profile_steps})")
    from pretrain.workflows.prepare_data import prepare_data

    cfg = prepare_data(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # A training worker's share of cores: its loader processes and torch threads, as
    # cluster/worker.py sets them for a run, so the bench measures what a run does.
    split = cpu_split(cfg, accelerated=device.type != "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(split.torch_threads)
    try:
        with single_process_group("nccl" if device.type == "cuda" else "gloo"):
            bench = BenchModes.build(cfg, device, steps=steps, warmup=warmup, repeats=repeats,
                                     profile_steps=profile_steps)
            rounds: dict[str, list[tuple[float, ...]]] = {mode: [] for mode in MODES}
            for r in range(repeats):
                for mode in MODES:
                    rounds[mode].append(getattr(bench, mode)(r))
            summary = bench.profile(profile, profile_steps) if profile is not None else None
    finally:
        torch.set_num_threads(threads)

    def figure(mode: str, index: int = 0) -> Figure:
        return Figure(tuple(values[index] for values in rounds[mode]))

    e2e, compute = figure("end_to_end"), figure("compute")
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return BenchResult(
        model=cfg.encoder.model, objective=cfg.objective.name, batch_size=cfg.data.batch_size,
        image_size=cfg.data.image_size, device=str(device), threads=split.torch_threads,
        loader_workers=split.loader_workers, steps=steps, warmup=warmup, repeats=repeats,
        steps_per_epoch=bench.plan.steps_per_epoch, augment_samples_s=figure("augment"),
        loader_samples_s_per_worker=figure("loader"),
        loader_boundary_latency_s=figure("loader", 1), plain_img_s=figure("plain"),
        compute_img_s=compute, end_to_end_img_s=e2e,
        ratio=Figure(tuple(a / b for a, b in zip(e2e.values, compute.values, strict=True))),
        data_wait_frac=figure("end_to_end", 1), peak_rss_mib=rss, profile=summary)


def loader_warmup_steps(warmup: int, loader_workers: int) -> int:
    """Untimed steps of a loader window: a new loader's workers start one after another, each
    skipping to the window's start before its first batch, so the warm-up lasts at least until
    every worker has served one batch."""
    return max(warmup, loader_workers)


def boundary_start(steps_per_epoch: int, steps: int, warmup: int, round_index: int) -> int:
    """The first (warm-up) step of a loader window of ``warmup + steps`` steps whose timed part
    has an epoch boundary after ``steps // 2`` of its steps; round ``r`` crosses into a later
    epoch than round ``r - 1``."""
    before = warmup + steps // 2
    boundary = steps_per_epoch * (math.ceil(before / steps_per_epoch) + round_index)
    return boundary - before


def batches_from(cfg: RunConfig, ctx: WorkerContext, plan: TrainingPlan, start: int
                 ) -> Iterator[tuple[int, LoaderBatch, float]]:
    """``(global step, batch, seconds waited for it)`` from global step ``start`` on, served by
    the run's own persistent loader (``pretrain.train.loop.open_loader``), epoch after epoch.
    ``close()`` ends the loader's processes."""
    with open_loader(cfg, ctx, plan, start_step=start) as loader:
        for batch, waited in timed_batches(loader):
            yield batch.epoch * plan.steps_per_epoch + batch.index, batch, waited


class BenchModes:
    """One method per mode (``MODES``); each runs round ``r`` of its mode and returns that
    round's figures. The engine and the plain model keep training from round to round."""

    def __init__(self, cfg: RunConfig, ctx: WorkerContext, plan: TrainingPlan, objective,
                 augmenter, batch, *, steps: int, warmup: int, repeats: int,
                 profile_steps: int) -> None:
        self.cfg, self.ctx, self.plan = cfg, ctx, plan
        self.steps, self.warmup = steps, warmup
        self.augmenter, self.batch = augmenter, batch
        self.resident = make_views(augmenter, batch, generator_for(cfg.seed, "bench", 0))
        self.device = ctx.device
        self.loader_workers = cpu_split(cfg, accelerated=ctx.device.type != "cpu").loader_workers
        self.loader_warmup = loader_warmup_steps(warmup, self.loader_workers)
        # The engine's schedule (LR, EMA momentum) spans every step it will take: the
        # compute-only and end-to-end windows of every round, then the profiled ones.
        self.total = (repeats * (warmup + self.loader_warmup + 2 * steps) + self.loader_warmup
                      + profile_steps)
        self.model = copy.deepcopy(objective).to(self.device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr,
                                           weight_decay=cfg.optim.weight_decay)
        self.engine = build_engine(objective, cfg, total_steps=self.total, world_size=1,
                                   device=self.device)
        self.engine_steps = 0  # steps taken by the engine so far (the EMA schedule's clock)
        self.plain_steps = 0

    @classmethod
    def build(cls, cfg: RunConfig, device: torch.device, *, steps: int, warmup: int,
              repeats: int, profile_steps: int = 0) -> "BenchModes":
        """The modes of ``cfg`` (data prepared) on ``device``, at world size 1 (inside a
        process group), with the first batch of epoch 0 as the resident batch."""
        ctx = WorkerContext(rank=0, world_size=1, device=device)
        plan = plan_training(cfg, 1)
        objective, info = build_model(cfg)
        augmenter = build_augmenter(cfg, info)
        stream = batches_from(cfg, ctx, plan, start=0)
        batch = next(stream)[1].to(device)
        stream.close()
        return cls(cfg, ctx, plan, objective, augmenter, batch, steps=steps, warmup=warmup,
                   repeats=repeats, profile_steps=profile_steps)

    def _timed(self, step: Callable[[], None], images: int) -> float:
        return rate(step, images, warmup=self.warmup, steps=self.steps, device=self.device)

    def plain(self, r: int) -> tuple[float]:
        cfg = self.cfg

        def step() -> None:
            out = self.model(self.resident)
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.optimizer.step()
            self.model.on_step_end(self.plain_steps, self.total)  # the same EMA work
            self.plain_steps += 1

        return (self._timed(step, self.cfg.data.batch_size),)

    def compute(self, r: int) -> tuple[float]:
        def step() -> None:
            step_on_views(self.engine, self.resident, step=self.engine_steps,
                          total_steps=self.total)
            self.engine_steps += 1

        return (self._timed(step, self.cfg.data.batch_size),)

    def augment(self, r: int) -> tuple[float]:
        calls = itertools.count()  # a generator per call, as every training step makes one

        def step() -> None:
            make_views(self.augmenter, self.batch,
                       generator_for(self.cfg.seed, "augment", next(calls), 0))

        return (self._timed(step, self.cfg.data.batch_size),)

    def _window(self, r: int, consume: Callable[[object], None]
                ) -> tuple[float, float, float]:
        """Seconds of the timed steps, seconds waited in them, and the wait for the first batch
        after the epoch boundary, over one loader window of round ``r``."""
        spe = self.plan.steps_per_epoch
        warmup = self.loader_warmup
        start = boundary_start(spe, self.steps, warmup, r)
        stream = batches_from(self.cfg, self.ctx, self.plan, start)
        try:
            for _ in range(warmup):
                consume(next(stream)[1])
            synchronize(self.device)
            waited, boundary_wait, began = 0.0, float("nan"), time.perf_counter()
            for _ in range(self.steps):
                step, batch, wait = next(stream)
                waited += wait
                if step % spe == 0 and math.isnan(boundary_wait):
                    boundary_wait = wait
                consume(batch)
            synchronize(self.device)
            return time.perf_counter() - began, waited, boundary_wait
        finally:
            stream.close()  # ends the loader's worker processes before the next mode runs

    def loader(self, r: int) -> tuple[float, float]:
        seconds, _, boundary_wait = self._window(r, lambda batch: None)
        workers = max(self.loader_workers, 1)  # 0: the main process reads
        return self.steps * self.cfg.data.batch_size / seconds / workers, boundary_wait

    def end_to_end(self, r: int) -> tuple[float, float]:
        def consume(batch) -> None:
            run_step(self.engine, self.augmenter, batch.to(self.device), seed=self.cfg.seed,
                     step=self.engine_steps, rank=0, total_steps=self.total)
            self.engine_steps += 1

        seconds, waited, _ = self._window(r, consume)
        return self.steps * self.cfg.data.batch_size / seconds, waited / seconds

    def profile(self, folder: Path, steps: int) -> ProfileSummary:
        """A profiler trace of ``steps`` end-to-end steps (after ``warmup`` untimed ones) and, on
        CUDA, the device syncs they and the augmenter make."""
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        folder.mkdir(parents=True, exist_ok=True)
        cuda = self.device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        start = boundary_start(self.plan.steps_per_epoch, steps, self.loader_warmup, 0)
        stream = batches_from(self.cfg, self.ctx, self.plan, start)

        def e2e_step() -> None:
            run_step(self.engine, self.augmenter, next(stream)[1].to(self.device),
                     seed=self.cfg.seed, step=self.engine_steps, rank=0, total_steps=self.total)
            self.engine_steps += 1

        try:
            for _ in range(self.loader_warmup):
                e2e_step()
            synchronize(self.device)
            with torch_profile(activities=activities) as prof:
                step_syncs = _count_syncs(e2e_step, steps, cuda)
                synchronize(self.device)
        finally:
            stream.close()
        trace = folder / "trace.json"
        prof.export_chrome_trace(str(trace))
        augment_syncs = _count_syncs(lambda: make_views(
            self.augmenter, self.batch, generator_for(self.cfg.seed, "profile", 0)), steps, cuda)
        return ProfileSummary(trace=trace, steps=steps, top_ops=top_ops(prof, cuda),
                              syncs_per_step=step_syncs, augment_syncs_per_call=augment_syncs)


def rate(call: Callable[[], object], items: int, *, warmup: int, steps: int,
         device: torch.device) -> float:
    """``items`` per call per second over ``steps`` timed calls after ``warmup`` untimed ones
    (the device's queued work waited for at both ends)."""
    for _ in range(warmup):
        call()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        call()
    synchronize(device)
    return steps * items / (time.perf_counter() - start)


def _count_syncs(call: Callable[[], object], times: int, cuda: bool) -> float | None:
    """Device syncs per call of ``call`` (run ``times`` times), counted from the warnings
    ``torch.cuda.set_sync_debug_mode("warn")`` raises; ``None`` off CUDA (nothing to count)."""
    if not cuda:
        for _ in range(times):
            call()
        return None
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(times):
                call()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return syncs / times


def top_ops(prof, cuda: bool, count: int = 10) -> tuple[tuple[str, int, float], ...]:
    """The ``count`` operators with the most self time (device time on CUDA), in ms."""
    def self_us(event) -> float:
        return event.self_device_time_total if cuda else event.self_cpu_time_total

    events = sorted(prof.key_averages(), key=self_us, reverse=True)[:count]
    return tuple((e.key, int(e.count), self_us(e) / 1000) for e in events)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so host clocks time it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def format_bench(r: BenchResult) -> str:
    """The result as a plain-text table: median and spread (min-max) of every figure."""
    def row(name: str, f: Figure, fmt: str) -> tuple[str, str, str]:
        return name, format(f.median, fmt), f"{format(f.low, fmt)} - {format(f.high, fmt)}"

    plain = r.plain_img_s.median
    rows = [
        row("augmentation alone, samples/s", r.augment_samples_s, ",.1f"),
        row("loader alone, samples/s per worker", r.loader_samples_s_per_worker, ",.1f"),
        row("loader, first batch after epoch boundary, ms",
            Figure(tuple(1000 * v for v in r.loader_boundary_latency_s.values)), ",.1f"),
        row("plain PyTorch (resident views), img/s", r.plain_img_s, ",.1f"),
        row(f"DeepSpeed compute-only, img/s ({r.compute_img_s.median / plain:.2f} x plain)",
            r.compute_img_s, ",.1f"),
        row(f"DeepSpeed end-to-end, img/s ({r.end_to_end_img_s.median / plain:.2f} x plain)",
            r.end_to_end_img_s, ",.1f"),
        row("end-to-end / compute-only", r.ratio, ".3f"),
        row("data-wait fraction (end-to-end)", r.data_wait_frac, ".3f"),
    ]
    width = max(len(name) for name, _, _ in rows)
    out = [f"{r.model} / {r.objective}, batch {r.batch_size}, {r.image_size} px, {r.device}, "
           f"torch threads {r.threads}, loader processes {r.loader_workers}",
           f"{r.repeats} rounds of {r.warmup} warm-up + {r.steps} timed steps per mode; an epoch "
           f"is {r.steps_per_epoch} steps, each loader window crosses an epoch boundary",
           f"{'figure':<{width}}  {'median':>10}  spread (min - max)"]
    out += [f"{name:<{width}}  {median:>10}  {spread}" for name, median, spread in rows]
    out.append(f"peak RSS: {r.peak_rss_mib:,.0f} MiB")
    if r.profile is not None:
        out += format_profile(r.profile)
    return "\n".join(out)


def format_profile(p: ProfileSummary) -> list[str]:
    def syncs(value: float | None) -> str:
        return "n/a on the CPU" if value is None else f"{value:g}"

    width = max(len(name) for name, _, _ in p.top_ops)
    return [f"profile of {p.steps} end-to-end steps: {p.trace}",
            f"device syncs per step: {syncs(p.syncs_per_step)}; per augmentation call: "
            f"{syncs(p.augment_syncs_per_call)}",
            f"{'top operators (self time)':<{width}}  {'calls':>6}  {'ms':>9}",
            *(f"{name:<{width}}  {calls:>6}  {ms:>9.2f}" for name, calls, ms in p.top_ops)]
