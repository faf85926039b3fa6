"""CUDA path check: bf16 autocast, kornia augmentation on the GPU, DeepSpeed ZeRO 0/1/2 on the
GPU (agreement between stages, exact checkpoint resume of an EMA objective) and ``pretrain bench``
throughput. A benchmark to run once on a lent GPU machine (see ``scripts/device_check.sh``), not a
test; it also runs on the CPU (``--device cpu``, bf16 autocast forced) so its code is exercised
without a GPU:

    .venv/bin/python benchmarks/cuda_check.py --device cpu --bench resnet18:16 --bench-steps 2

Every training step here is the training loop's own (``pretrain.train.step.run_step``). Every
check prints one row: name, measured figure, tolerance, pass/fail. Exit code 1 when any
check fails, so a driver script can stop before spending device time on longer work.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import REPO, command_line, emit, machine_line, markdown_table
from pretrain.config import load_config
from pretrain.config.schema import RunConfig
from pretrain.workflows.prepare_data import prepare_data
from pretrain.train import checkpoint
from pretrain.train.distributed import single_process_group
from pretrain.train.engine import build_engine, use_bf16
from pretrain.train.precision import cpu_bf16_guard
from pretrain.workflows.bench import rate
from pretrain.train.loop import WorkerContext, build_augmenter, build_model, open_loader
from pretrain.train.plan import plan_training
from pretrain.train.seeding import generator_for
from pretrain.train.step import make_views, run_step

SCRIPT = "benchmarks/cuda_check.py"


@dataclass(frozen=True)
class Check:
    name: str
    figure: str
    tolerance: str
    ok: bool

    def cells(self) -> list[str]:
        return [self.name, self.figure, self.tolerance, "pass" if self.ok else "FAIL"]


def config(stem: str, size: int, batch: int | str, *extra: str) -> RunConfig:
    """``configs/<stem>-synth3d.yaml`` at ``size`` px (data rendered at that size) and ``batch``,
    then ``extra`` overrides."""
    return load_config(REPO / "configs" / f"{stem}-synth3d.yaml",
                       [f"data.image_size={size}", f"data.synth3d.size={size}",
                        f"data.batch_size={batch}", *extra])


def first_batch(cfg: RunConfig, device: torch.device):
    """The first uint8 batch of epoch 0, on ``device``."""
    ctx = WorkerContext(rank=0, world_size=1, device=device)
    with open_loader(cfg, ctx, plan_training(cfg, 1)) as loader:
        return next(loader).to(device)


def model_and_augmenter(cfg: RunConfig):
    """A freshly initialised objective (seeded by ``cfg``) and its augmenter."""
    objective, info = build_model(cfg)
    return objective, build_augmenter(cfg, info)


def model_and_views(cfg: RunConfig, batch):
    """A freshly initialised objective (seeded by ``cfg``) and the views of ``batch``."""
    objective, augmenter = model_and_augmenter(cfg)
    return objective, make_views(augmenter, batch, generator_for(cfg.seed, 0, 0))


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check_bf16(cfg: RunConfig, device: torch.device) -> list[Check]:
    """The engine's bf16 choice, and one VICReg loss + gradient under bf16 autocast against
    float32 on the same views and weights (bf16 operands: relative error 1e-3 to 1e-2 expected)."""
    chosen = use_bf16(cfg, device)
    objective, views = model_and_views(cfg, first_batch(cfg, device))
    objective = objective.to(device).train()

    def loss_and_grad(bf16: bool) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
        model = copy.deepcopy(objective)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), \
                cpu_bf16_guard(device.type, torch.bfloat16 if bf16 else None):
            feats = model.encoder(views.views[0][:8])
            loss = model(views).loss
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return loss.detach().float(), grad.float(), feats.dtype

    loss32, grad32, dtype32 = loss_and_grad(False)
    loss16, grad16, dtype16 = loss_and_grad(True)
    finite = bool(torch.isfinite(grad16).all())
    cosine = float(torch.nn.functional.cosine_similarity(grad16.double(), grad32.double(), dim=0))
    return [
        Check("engine picks bf16 autocast", f"{chosen} on {device.type}",
              "True on a bf16-capable GPU", chosen or device.type == "cpu"),
        Check("bf16 autocast: encoder output dtype", f"{dtype16} (fp32 run: {dtype32})",
              "torch.bfloat16", dtype16 == torch.bfloat16 and dtype32 == torch.float32),
        Check("bf16 vs fp32: VICReg loss", f"rel diff {rel_diff(loss16, loss32):.2e} "
              f"({loss16.item():.4f} vs {loss32.item():.4f})", "< 2e-2",
              rel_diff(loss16, loss32) < 2e-2),
        # Per element, bf16 rounding compounds through a deep net and VICReg's variance hinge,
        # so the gate is on the gradient's direction; the element-wise error is reported.
        Check("bf16 vs fp32: gradient", f"cosine {cosine:.4f}, rel diff "
              f"{rel_diff(grad16, grad32):.2e}, finite {finite}", "cosine > 0.95, all finite",
              finite and cosine > 0.95),
    ]


def check_kornia(cfg: RunConfig, device: torch.device, repeats: int = 10) -> list[Check]:
    """The same augmentation (params from one CPU generator) on ``device`` and on the CPU, view by
    view, and the augmentation throughput on each."""
    _, info = build_model(cfg)
    augmenter = build_augmenter(cfg, info)
    batch_cpu = first_batch(cfg, torch.device("cpu"))
    batch_dev = batch_cpu.to(device)
    out_dev = make_views(augmenter, batch_dev, generator_for(cfg.seed, 1, 0))
    out_cpu = make_views(augmenter, batch_cpu, generator_for(cfg.seed, 1, 0))
    on_device = all(v.device.type == device.type for v in out_dev.views)
    pairs = list(zip(out_dev.views, out_cpu.views, strict=True))
    worst = max(float((a.cpu() - b).abs().max()) for a, b in pairs)
    mean = sum(float((a.cpu() - b).abs().mean()) for a, b in pairs) / len(pairs)

    def samples_per_s(batch) -> float:
        gen = generator_for(cfg.seed, 2, 0)
        return rate(lambda: make_views(augmenter, batch, gen), batch.images.shape[0], warmup=1,
                    steps=repeats, device=batch.images.device)

    dev_rate, cpu_rate = samples_per_s(batch_dev), samples_per_s(batch_cpu)
    recipe = f"recipe {cfg.augment.recipe}, batch {batch_cpu.images.shape[0]}"
    return [
        Check(f"kornia views on {device.type}", f"{on_device} ({recipe})", "all on the device",
              on_device),
        Check(f"kornia {device.type} vs CPU, same params", f"max abs diff {worst:.2e}, mean "
              f"{mean:.2e} (normalised units)", "mean < 1e-3, max < 5e-2",
              mean < 1e-3 and worst < 5e-2),
        Check("kornia augmentation throughput", f"{dev_rate:.0f} samples/s on {device.type}, "
              f"{cpu_rate:.0f} on the CPU ({torch.get_num_threads()} threads)", "reported",
              True),
    ]


def train_steps(engine, augmenter, batch, seed: int, steps: int, start: int, total: int
                ) -> list[float]:
    """Losses of training steps ``start .. start + steps - 1`` on ``batch``: the training loop's
    own ``run_step`` (views drawn per step, EMA target updated)."""
    return [float(run_step(engine, augmenter, batch, seed=seed, step=step, rank=0,
                           total_steps=total).loss.detach())
            for step in range(start, start + steps)]


def flat_state(engine) -> torch.Tensor:
    """Every floating tensor of the module's state dict (EMA target included), flattened."""
    return torch.cat([t.detach().float().flatten().cpu()
                      for t in engine.module.state_dict().values() if t.is_floating_point()])


def check_zero(cfg: RunConfig, device: torch.device, steps: int = 5) -> list[Check]:
    """ZeRO stages 1 and 2 against stage 0 after ``steps`` steps from the same weights, batch and
    per-step views (world size 1: the stages partition nothing, so they must agree to
    rounding)."""
    states, losses = {}, {}
    batch = first_batch(cfg, device)
    for stage in (0, 1, 2):
        stage_cfg = cfg.model_copy(update={"deepspeed": cfg.deepspeed.model_copy(
            update={"zero_stage": stage})})
        objective, augmenter = model_and_augmenter(stage_cfg)
        engine = build_engine(objective, stage_cfg, total_steps=4 * steps, world_size=1,
                              device=device)
        losses[stage] = train_steps(engine, augmenter, batch, cfg.seed, steps, 0, 4 * steps)
        states[stage] = flat_state(engine)
        del engine
    rows = [Check(f"ZeRO {s} on {device.type}: {steps} steps, {cfg.objective.name}",
                  "losses " + ", ".join(f"{x:.4f}" for x in losses[s]), "finite, falling",
                  all(map(math.isfinite, losses[s])) and losses[s][-1] < losses[s][0])
            for s in (0, 1, 2)]
    gap = max(abs(a - b) / abs(b)
              for s in (1, 2) for a, b in zip(losses[s], losses[0], strict=True))
    rows.append(Check("ZeRO 1, 2 vs ZeRO 0 losses", f"max rel gap {gap:.2e}", "< 1e-3",
                      gap < 1e-3))
    # Stages 1 and 2 share the flat fp32 partition optimizer; stage 0 steps torch's AdamW on
    # the parameters with its own clipping norm. Adam turns rounding-level gradient differences
    # of near-zero gradients into lr-sized steps, so 0 vs 1 weights are reported, not gated.
    d01, d12 = rel_diff(states[1], states[0]), rel_diff(states[2], states[1])
    rows.append(Check("ZeRO 2 vs ZeRO 1 weights", f"rel diff {d12:.2e} (ZeRO 1 vs 0: {d01:.2e})",
                      "< 1e-4", d12 < 1e-4))
    return rows


def check_resume(cfg: RunConfig, device: torch.device, steps: int = 3) -> list[Check]:
    """Train ``2 * steps`` straight; train ``steps``, checkpoint, build a fresh engine, load, train
    ``steps`` more: weights, EMA target and losses must match (``cfg`` has an EMA target)."""
    total = 2 * steps
    batch = first_batch(cfg, device)

    def fresh():
        objective, augmenter = model_and_augmenter(cfg)
        engine = build_engine(objective, cfg, total_steps=total, world_size=1, device=device)
        return engine, augmenter

    engine, augmenter = fresh()
    straight = train_steps(engine, augmenter, batch, cfg.seed, total, 0, total)
    expected = flat_state(engine)
    del engine
    engine, augmenter = fresh()
    first = train_steps(engine, augmenter, batch, cfg.seed, steps, 0, total)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.save(engine, checkpoint.TrainState(step=steps), Path(tmp))
        del engine
        engine, augmenter = fresh()
        state = checkpoint.load(engine, Path(tmp))
    resumed = first + train_steps(engine, augmenter, batch, cfg.seed, steps, state.step, total)
    d = rel_diff(flat_state(engine), expected)
    loss_gap = max(abs(a - b) for a, b in zip(resumed, straight, strict=True))
    stage = cfg.deepspeed.zero_stage
    return [Check(f"resume on {device.type}, ZeRO {stage}, {cfg.objective.name} (EMA)",
                  f"weights+EMA rel diff {d:.2e}, max loss gap {loss_gap:.2e}", "< 1e-5",
                  d < 1e-5 and loss_gap < 1e-5)]


def bench_rows(settings: Sequence[str], steps: int, workers: int, size: int,
               overrides: Sequence[str] = (), repeats: int = 3,
               profile: Path | None = None) -> list[str]:
    """``pretrain bench`` (every figure, median of ``repeats`` rounds) per ``model:batch``
    setting, as a training worker owning the machine would run: ``workers`` loader processes,
    torch threads on the other cores. With ``profile``, the first setting is also profiled
    (trace in ``profile``/<model>-<batch>/)."""
    from pretrain.workflows.bench import format_bench, run_bench
    out = []
    for i, setting in enumerate(settings):
        model, batch = setting.rsplit(":", 1)
        cfg = config("vicreg", size, batch, *overrides, f"encoder.model={model}",
                     f"data.num_workers={workers}", f"cluster.cpus_per_worker={os.cpu_count()}")
        folder = profile / f"{model}-{batch}" if profile is not None and i == 0 else None
        out.append(format_bench(run_bench(cfg, steps=steps, warmup=3, repeats=repeats,
                                          profile=folder)))
        print(out[-1], flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bench-steps", type=int, default=30, help="timed steps per bench mode")
    parser.add_argument("--bench-repeats", type=int, default=3,
                        help="bench rounds (each figure is their median)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="also profile the first bench setting: Chrome trace in DIR")
    parser.add_argument("--workers", type=int, default=8, help="loader processes for the bench")
    parser.add_argument("--bench", nargs="*", default=["resnet18:64", "resnet18:256",
                                                       "resnet50:256"], metavar="MODEL:BATCH",
                        help="pretrain bench settings (none: skip the bench)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override for every check (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("cuda_check: no CUDA device visible to torch", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    bf16 = "deepspeed.bf16=true"  # 'auto' means GPU only; forced so a CPU run exercises it
    size, batch = args.image_size, args.batch_size
    extra = (*args.overrides, bf16)
    vicreg = prepare_data(config("vicreg", size, batch, *extra))
    seq_jepa = prepare_data(config("seq_jepa", size, batch, *extra, "deepspeed.zero_stage=2"))
    checks: list[Check] = []
    # Deterministic kernels for the agreement checks (cuDNN's default backward convolutions may
    # reduce in any order); the bench below runs with the defaults again.
    torch.backends.cudnn.deterministic = True
    with single_process_group("nccl" if device.type == "cuda" else "gloo"):
        for run_check in (lambda: check_bf16(vicreg, device),
                          lambda: check_kornia(vicreg, device),
                          lambda: check_zero(vicreg, device),
                          lambda: check_resume(seq_jepa, device)):
            started = time.perf_counter()
            new = run_check()
            print(f"({time.perf_counter() - started:.1f} s)", flush=True)
            for c in new:
                print(" | ".join(c.cells()), flush=True)
            checks += new
    torch.backends.cudnn.deterministic = False
    bench = bench_rows(args.bench, args.bench_steps, args.workers, size, args.overrides,
                       args.bench_repeats, args.profile)
    report = "\n".join([
        "## CUDA path check", "", f"- machine: {machine_line()}",
        f"- command: `{command_line(SCRIPT, argv)}`", "",
        markdown_table(("check", "measured", "tolerance", "result"), [c.cells() for c in checks]),
        "", *(f"```\n{b}\n```" for b in bench)])
    emit(report, args.out)
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
