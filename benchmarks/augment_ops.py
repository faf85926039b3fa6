"""Augmentation cost per view: aten ops (torch profiler) and samples/s, reference vs fused engine.

Prints one row per recipe and engine: top-level aten ops per output view (all, and without the
view/reshape ops that launch no kernel), then samples/s at each batch size (median of
``--repeats``), and whether ``torch.compile(fullgraph=True)`` of the fused device program succeeds
(``--compile eager`` traces it only, seconds; ``inductor`` also generates code, minutes on a small
CPU; ``none`` skips it). The issue's goal: at most 60 aten ops per view.

Usage: ``python benchmarks/augment_ops.py [--batches 64 256] [--size 32] [--recipes vicreg essl]
[--device cpu|cuda] [--threads 2] [--repeats 3] [--compile eager|inductor|none]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from augment import RECIPES, AugmentConfig, ViewAugmenter  # noqa: E402
from augment.pipeline import draw_to_device  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# aten ops that only make a new view of a tensor's data (no kernel on any device).
METADATA_OPS = frozenset({
    "view", "reshape", "slice", "select", "unbind", "expand", "permute", "transpose", "unsqueeze",
    "squeeze", "as_strided", "alias", "detach", "split", "t", "narrow", "flatten", "unflatten", "view_as",
    "expand_as", "lift_fresh", "_unsafe_view", "_reshape_alias",
})


def augmenter(recipe: str, engine: str, size: int) -> ViewAugmenter:
    """The recipe's augmenter at ``size`` px (distinct sources for the multi-view recipes)."""
    source = "distinct" if recipe in ("pair", "sequence") else "same"
    cfg = AugmentConfig(recipe=recipe, engine=engine, source=source, crop_scale_min=0.2)
    return ViewAugmenter(cfg, MEAN, STD, size)


def images_for(augment: ViewAugmenter, batch: int, size: int, device: torch.device) -> torch.Tensor:
    decoded = max(spec.source for spec in augment.recipe.views) + 1
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, decoded, 3, size, size), dtype=torch.uint8, generator=g).to(device)


def aten_ops_per_view(augment: ViewAugmenter, images: torch.Tensor) -> tuple[float, float]:
    """(all top-level aten ops, those that are not ``METADATA_OPS``) per output view of one call.

    Top level: an aten op not called by another aten op (a composite's internals are not counted).
    """
    augment(images, torch.Generator().manual_seed(0))  # constants built, caches warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        augment(images, torch.Generator().manual_seed(1))
    top = [e.name.removeprefix("aten::") for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    compute = [name for name in top if name not in METADATA_OPS]
    return len(top) / augment.num_views, len(compute) / augment.num_views


def samples_per_second(augment: ViewAugmenter, images: torch.Tensor, repeats: int, calls: int = 5) -> float:
    """Median over ``repeats`` of ``calls`` augmenter calls (device synchronised at both ends)."""
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    augment(images, torch.Generator().manual_seed(0))
    rates = []
    for r in range(repeats):
        sync()
        start = time.perf_counter()
        for i in range(calls):
            augment(images, torch.Generator().manual_seed(r * calls + i))
        sync()
        rates.append(calls * images.shape[0] / (time.perf_counter() - start))
    return statistics.median(rates)


def compile_check(recipe: str, size: int, device: torch.device, backend: str) -> str:
    """``torch.compile(fullgraph=True)`` of the fused device program: 'ok (N s)' or the error."""
    augment = augmenter(recipe, "fused", size)
    images = images_for(augment, 8, size, device)
    constants = augment.constants(device, 8, size, size, None)
    draws = draw_to_device(torch.Generator().manual_seed(0), sum(augment.program.draw_rows(8, None)), device)
    torch._dynamo.reset()
    start = time.perf_counter()
    try:
        torch.compile(augment.program.run, fullgraph=True, backend=backend)(images, draws, constants)
    except Exception as error:  # noqa: BLE001 - the benchmark reports any failure as its result
        return f"FAILED: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return f"ok ({time.perf_counter() - start:.0f} s)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256], help="batch sizes to time")
    parser.add_argument("--size", type=int, default=32, help="image and view side in pixels")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES),
                        default=["vicreg", "simclr", "essl", "care", "pair", "sequence"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (median)")
    parser.add_argument("--compile", choices=("eager", "inductor", "none"), default="eager",
                        help="backend of the torch.compile(fullgraph=True) check")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.size} px, device {device}, {args.threads} torch threads, load average {load}")
    rates = " | ".join(f"samples/s @{b}" for b in args.batches)
    print(f"| recipe | engine | aten ops/view | without views | {rates} |")
    print("|---|---|---|---|" + "---|" * len(args.batches))
    for recipe in args.recipes:
        for engine in ("reference", "fused"):
            augment = augmenter(recipe, engine, args.size)
            ops, compute = aten_ops_per_view(augment, images_for(augment, args.batches[0], args.size, device))
            speeds = " | ".join(
                f"{samples_per_second(augment, images_for(augment, b, args.size, device), args.repeats):.0f}"
                for b in args.batches)
            print(f"| {recipe} | {engine} | {ops:.0f} | {compute:.0f} | {speeds} |", flush=True)
    if args.compile != "none":
        for recipe in args.recipes:
            result = compile_check(recipe, args.size, device, args.compile)
            print(f"torch.compile(fullgraph=True, backend={args.compile!r}) of the fused {recipe} "
                  f"program: {result}")


if __name__ == "__main__":
    main()
