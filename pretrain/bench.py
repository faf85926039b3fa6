"""``pretrain bench``: how much of the compute budget survives DeepSpeed, input and augmentation.

Three timings of the same model, objective and batch, in one process:
- ``plain``: a bare PyTorch loop (AdamW) on views already resident on the device;
- ``compute``: the DeepSpeed engine on the same resident views;
- ``end_to_end``: shards -> decode (loader workers) -> device -> augment -> DeepSpeed step.
"""

from __future__ import annotations

import copy
import resource
import time
from dataclasses import dataclass

import torch

from pretrain.config.schema import RunConfig
from pretrain.train.engine import build_engine
from pretrain.train.distributed import single_process_group
from pretrain.train.loop import (WorkerContext, build_augmenter, build_model, endless_batches,
                                 epoch_batches)
from pretrain.train.plan import plan_training
from pretrain.train.seeding import generator_for
from pretrain.train.step import make_views, train_step


@dataclass(frozen=True)
class BenchResult:
    model: str
    objective: str
    batch_size: int
    image_size: int
    device: str
    threads: int
    plain_img_s: float
    compute_img_s: float
    end_to_end_img_s: float
    data_wait_frac: float
    peak_rss_mib: float

    @property
    def ratio(self) -> float:
        """End-to-end over compute-only throughput (1.0 = input costs nothing)."""
        return self.end_to_end_img_s / self.compute_img_s

    @property
    def engine_vs_plain(self) -> float:
        return self.compute_img_s / self.plain_img_s


def run_bench(cfg: RunConfig, steps: int = 20, warmup: int = 3) -> BenchResult:
    from pretrain.data.prepare import prepare_data

    cfg = prepare_data(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctx = WorkerContext(rank=0, world_size=1, device=device)
    with single_process_group("nccl" if device.type == "cuda" else "gloo"):
        plan = plan_training(cfg, 1)
        total = warmup + steps
        objective, info = build_model(cfg)
        augmenter = build_augmenter(cfg, info)
        batches = epoch_batches(cfg, ctx, plan, epoch=0, skip=0)
        resident = make_views(augmenter, next(batches).to(device), generator_for(cfg.seed, 0, 0))
        plain = _plain_loop(copy.deepcopy(objective).to(device), cfg, resident, warmup, steps)
        engine = build_engine(objective, cfg, total_steps=3 * total, world_size=1, device=device)
        compute = _time_steps(lambda i: train_step(engine, resident), warmup, steps, device,
                               cfg.data.batch_size)
        waits: list[float] = []

        def e2e_step(i: int) -> None:
            batch, waited = next(timed)
            waits.append(waited)
            train_step(engine, make_views(augmenter, batch.to(device),
                                          generator_for(cfg.seed, "augment", i, 0)))

        timed = endless_batches(cfg, ctx, plan)
        e2e = _time_steps(e2e_step, warmup, steps, device, cfg.data.batch_size)
        wait_frac = sum(waits[warmup:]) / (steps * cfg.data.batch_size / e2e)
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return BenchResult(model=cfg.encoder.model, objective=cfg.objective.name,
                       batch_size=cfg.data.batch_size, image_size=cfg.data.image_size,
                       device=str(device), threads=torch.get_num_threads(), plain_img_s=plain,
                       compute_img_s=compute, end_to_end_img_s=e2e, data_wait_frac=wait_frac,
                       peak_rss_mib=rss)


def _plain_loop(model, cfg: RunConfig, views, warmup: int, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr,
                                  weight_decay=cfg.optim.weight_decay)
    model.train()

    def step(i: int) -> None:
        out = model(views)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()

    return _time_steps(step, warmup, steps, views.views[0].device, views.batch_size)


def _time_steps(step, warmup: int, steps: int, device: torch.device, batch_size: int) -> float:
    """Images per second over ``steps`` timed calls after ``warmup`` untimed ones."""
    for i in range(warmup):
        step(i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so host clocks time it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def format_bench(r: BenchResult) -> str:
    rows = [
        ("plain PyTorch (resident views)", f"{r.plain_img_s:.1f}", "1.00"),
        ("DeepSpeed compute-only", f"{r.compute_img_s:.1f}", f"{r.engine_vs_plain:.2f}"),
        ("DeepSpeed end-to-end", f"{r.end_to_end_img_s:.1f}",
         f"{r.end_to_end_img_s / r.plain_img_s:.2f}"),
    ]
    width = max(len(name) for name, _, _ in rows)
    out = [f"{r.model} / {r.objective}, batch {r.batch_size}, {r.image_size} px, {r.device}, "
           f"{r.threads} threads", f"{'mode':<{width}}  img/s   vs plain"]
    out += [f"{name:<{width}}  {ips:>6}  {rel:>8}" for name, ips, rel in rows]
    out += [f"end-to-end / compute-only: {r.ratio:.3f}",
            f"data-wait fraction (end-to-end): {r.data_wait_frac:.3f}",
            f"peak RSS: {r.peak_rss_mib:.0f} MiB"]
    return "\n".join(out)
