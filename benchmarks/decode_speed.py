"""Decode speed of one loader process: PNG vs JPEG vs reduced-size JPEG, to 224 px and 112 px.

Synthetic 3D views are rendered on the spot at 256 px and 512 px (no download), stored as PNG
and as JPEG (quality 90, what ``pretrain data import --format jpeg`` and
``data.synth3d.image_format=jpeg`` write) and decoded with the loader's own ``decode_image`` (PIL)
to a square training size. "reduced" rows let libjpeg decode at 1/2, 1/4 or 1/8 scale (PIL
``draft``), which applies when the stored image is at least twice the output size; "full" rows
decode every pixel. The torchvision row is the code path of ``data.gpu_decode`` run on the CPU
(``decode_jpeg`` of a batch, then ``square_batch``). One thread, as in a loader process; each
figure is the median of ``--repeats`` interleaved rounds, as samples per second of wall time and
per CPU-second of the decoding thread (which other load on a shared machine distorts far less).
Prints a markdown table; not a test.

Usage: ``python benchmarks/decode_speed.py [--images 32] [--repeats 3] [--min-seconds 0.5]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pretrain.data.image import decode_image
from pretrain.data.gpu_decode import decode_packed, pack_jpegs
from pretrain.data.synth3d.generate import (Synth3DConfig, encode_view, render_samples,
                                            sample_latents)


@dataclass(frozen=True)
class Row:
    stored: int
    image_format: str
    size: int
    path: str
    samples_per_s: float
    samples_per_cpu_s: float


def rendered_views(count: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` synthetic 3D views (``uint8`` ``3 x size x size``), one per object."""
    cfg = Synth3DConfig(classes=12, instances_per_class=max(1, -(-count // 12)), views=1,
                        size=size, seed=seed)
    objects = [sample_latents(cfg, i) for i in range(count)]
    return list(render_samples(objects, size)[:, 0])


def timed_once(work: Callable[[], None], items: int, min_seconds: float) -> tuple[float, float]:
    """``(items/s of wall time, items per CPU-second of this thread)`` of ``work``, looped until
    ``min_seconds`` of wall time. The CPU figure is what the decoder costs; the wall figure also
    holds whatever else the machine was doing."""
    loops, start, cpu_start = 0, time.perf_counter(), time.thread_time()
    while True:
        work()
        loops += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    cpu = max(time.thread_time() - cpu_start, 1e-9)
    return loops * items / elapsed, loops * items / cpu


def measure(images: int = 32, repeats: int = 3, min_seconds: float = 0.5,
            stored_sizes: Sequence[int] = (256, 512), out_sizes: Sequence[int] = (224, 112),
            progress: Callable[[str], None] = lambda line: None) -> list[Row]:
    """Every (stored size, output size, format, decoder) case, timed in ``repeats`` interleaved
    rounds (each round times every case once, so drift and other load hit all cases alike);
    each figure is the median over the rounds."""
    cases: list[tuple[int, str, int, str, Callable[[], None]]] = []
    for stored in stored_sizes:
        progress(f"rendering {images} views at {stored} px")
        views = rendered_views(images, stored)
        files = {fmt: [encode_view(v, fmt, 90) for v in views] for fmt in ("png", "jpeg")}
        for size in out_sizes:
            if size > stored:
                continue

            def pil(fmt: str, reduced: bool, size: int = size,
                    files: dict[str, list[bytes]] = files) -> Callable[[], None]:
                return lambda: [decode_image(f, size, reduced=reduced) for f in files[fmt]]

            cases += [(stored, "png", size, "PIL", pil("png", True)),
                      (stored, "jpeg", size, "PIL full", pil("jpeg", False))]
            if stored >= 2 * size:
                cases.append((stored, "jpeg", size, "PIL reduced", pil("jpeg", True)))
            packed = pack_jpegs([[f] for f in files["jpeg"]], image_size=size)
            cases.append((stored, "jpeg", size, "torchvision batch (gpu_decode path, on CPU)",
                          lambda packed=packed, size=size: decode_packed(packed, "cpu",
                                                                         image_size=size)))
    for *_, work in cases:
        work()  # warm-up: codec tables, allocator
    timings: list[list[tuple[float, float]]] = [[] for _ in cases]
    for round_ in range(repeats):
        progress(f"round {round_ + 1} of {repeats}: {len(cases)} cases")
        for k, (*_, work) in enumerate(cases):
            timings[k].append(timed_once(work, images, min_seconds))
    return [Row(stored, fmt, size, path, statistics.median(t[0] for t in timing),
                statistics.median(t[1] for t in timing))
            for (stored, fmt, size, path, _), timing in zip(cases, timings)]


def format_table(rows: Sequence[Row]) -> str:
    png = {(r.stored, r.size): r.samples_per_cpu_s for r in rows if r.image_format == "png"}
    lines = ["| stored | format | decoded to | decoder | samples/s | samples/CPU-s "
             "| vs PNG (CPU) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.samples_per_cpu_s / png[(r.stored, r.size)]
        lines.append(f"| {r.stored} px | {r.image_format} | {r.size} px | {r.path} | "
                     f"{r.samples_per_s:,.0f} | {r.samples_per_cpu_s:,.0f} | {ratio:.2f}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32, help="views per stored size")
    parser.add_argument("--repeats", type=int, default=3, help="timings per row (median)")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="length of one timing")
    parser.add_argument("--stored", type=int, nargs="+", default=[256, 512],
                        help="rendered (stored) sizes in px")
    parser.add_argument("--to", type=int, nargs="+", default=[224, 112],
                        help="decoded (training) sizes in px")
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1 or args.min_seconds <= 0:
        parser.error("--images, --repeats and --min-seconds must be positive")
    torch.set_num_threads(1)
    rows = measure(args.images, args.repeats, args.min_seconds, args.stored, args.to,
                   progress=lambda line: print(line, file=sys.stderr, flush=True))
    table = (f"Decode speed, one thread, {args.images} synthetic 3D views per stored size, "
             f"JPEG quality 90, median of {args.repeats} interleaved rounds:\n\n"
             f"{format_table(rows)}")
    print(table)
    return table


if __name__ == "__main__":
    main()
