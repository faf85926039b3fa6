"""Rendering speed of the synthetic 3D objects: prints views/s (not a test).

Usage: ``python benchmarks/synth3d_speed.py [--size 64] [--views 1024] [--batch 512] [--threads 2]``
"""

from __future__ import annotations

import argparse
import time

import torch

from augment.quaternion import random_quaternion
from pretrain.data.synth3d.render import render_views
from pretrain.data.synth3d.shapes import SHAPES, pad_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--views", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    classes = torch.arange(args.views) % len(SHAPES)
    params = torch.stack([pad_params(SHAPES[c].sample_params(1, g))[0] for c in classes.tolist()])
    quats = random_quaternion(args.views, g)
    hue = torch.rand(args.views, generator=g)
    bg = torch.rand(args.views, generator=g)
    light = torch.tensor([-0.4, 0.55, 0.73]).expand(args.views, 3)
    render_views(classes[:16], params[:16], quats[:16], hue[:16], bg[:16], light[:16], args.size)
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        for i in range(0, args.views, args.batch):
            s = slice(i, i + args.batch)
            render_views(classes[s], params[s], quats[s], hue[s], bg[s], light[s], args.size)
        best = min(best, time.perf_counter() - start)
    print(f"{args.views} views at {args.size}px, batch {args.batch}, {args.threads} threads: "
          f"{args.views / best:.0f} views/s (best of {args.repeats})")


if __name__ == "__main__":
    main()
