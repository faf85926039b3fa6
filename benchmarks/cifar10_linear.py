"""CIFAR-10 linear-probe benchmark (issue 3): pretrain VICReg for a fixed wall-clock budget, then
fit a linear probe on frozen features of the full train split (50,000) and score the full test
split (10,000), next to the same architecture randomly initialised and to raw pixels. A
benchmark, not a test: run it alone on a quiet machine, from the repository root:

    .venv/bin/python benchmarks/cifar10_linear.py --minutes 20 --out docs/cifar10_linear.md

Linear probe: ``pretrain.probes.linear.linear_probe``, multinomial logistic regression on
standardised features, full-batch L-BFGS (strong Wolfe), L2 penalty picked on the last 20% of
the train split from ``--weight-decays``, refit on the whole train split, scored once on test.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import Tensor, nn

from benchmarks.common import (REPO, TrainResult, add_common_arguments, command_line, configure,
                               default_device, emit, log, machine_line, markdown_table,
                               pct, train_for)
from pretrain.config import load_config
from pretrain.config.schema import RunConfig
from pretrain.probes.features import Preprocess, encode
from pretrain.probes.linear import linear_probe
from pretrain.probes.probeset import ProbeSet, cifar10_dir, probe_set_from_shards
from pretrain.train.loop import build_model

SCRIPT = "benchmarks/cifar10_linear.py"
PUBLISHED_PIXELS = 0.39  # logistic regression on raw CIFAR-10 pixels, as quoted in issue 3
HEADERS = ("representation", "dims", "linear top-1 (test)", "L2 selected", "probe seconds")


@dataclass(frozen=True)
class ProbeRow:
    """One representation's line: test top-1, the L2 penalty chosen, probe wall time."""

    name: str
    dims: int
    top1: float
    weight_decay: float | None
    seconds: float | None

    def cells(self) -> list[str]:
        return [self.name, str(self.dims), pct(self.top1),
                "—" if self.weight_decay is None else f"{self.weight_decay:g}",
                "—" if self.seconds is None else f"{self.seconds:.1f}"]


def split_shards(data_dir: Path) -> tuple[list[str], list[str]]:
    """The sorted ``train-*.tar`` and ``test-*.tar`` shards of ``data_dir``."""
    train = sorted(str(p) for p in data_dir.glob("train-*.tar"))
    test = sorted(str(p) for p in data_dir.glob("test-*.tar"))
    if not train or not test:
        raise SystemExit(f"{data_dir}: need train-*.tar and test-*.tar shards")
    return train, test


def pretrain_config(args: argparse.Namespace) -> RunConfig:
    """``configs/vicreg-cifar10.yaml`` on the train shards with the benchmark's settings."""
    return load_config(REPO / "configs" / "vicreg-cifar10.yaml", [
        "name=cifar10-linear", f"data.path={args.data_dir.resolve() / 'train-*.tar'}",
        f"encoder.model={args.encoder}",
        f"data.image_size={args.image_size}", f"data.batch_size={args.batch_size}",
        *args.overrides])


def probe(name: str, train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
          args: argparse.Namespace) -> ProbeRow:
    """The linear probe (``pretrain.probes.linear``) on one representation, timed."""
    start = time.perf_counter()
    result = linear_probe(train_x, train_y, test_x, test_y, weight_decays=args.weight_decays,
                          max_iter=args.probe_max_iter)
    row = ProbeRow(name, train_x.shape[1], result.top1, result.weight_decay,
                   time.perf_counter() - start)
    log.info("%s: test top-1 %s (L2 %g, %.0f s)", name, pct(row.top1), result.weight_decay,
             row.seconds)  # each row as it lands: the pixel probe alone can take half an hour
    return row


def probe_encoder(name: str, encoder: nn.Module, data: ProbeSet, pre: Preprocess,
                  args: argparse.Namespace, device: torch.device) -> ProbeRow:
    """Features of every image once (eval mode, no grad, batched), then the linear probe."""
    features = encode(encoder, data.images, pre=pre, device=device, batch_size=args.encode_batch)
    tr, te = data.train, ~data.train
    return probe(name, features[tr], data.labels[tr], features[te], data.labels[te], args)


def probe_pixels(data: ProbeSet, args: argparse.Namespace) -> ProbeRow:
    """Logistic regression on flattened pixels (standardised per pixel inside the probe), or the
    published figure with ``--pixels quote``."""
    if args.pixels == "quote":
        return ProbeRow("raw pixels (published figure, not run)", data.images[0].numel(),
                        PUBLISHED_PIXELS, None, None)
    x = data.images.flatten(1).float().div_(255.0)
    tr, te = data.train, ~data.train
    return probe("raw pixels (flattened, standardised)", x[tr], data.labels[tr], x[te],
                 data.labels[te], args)


def format_report(rows: list[ProbeRow], cfg: RunConfig, result: TrainResult, data: ProbeSet,
                  args: argparse.Namespace, device: torch.device,
                  argv: Sequence[str] | None) -> str:
    """Budget, probe method, machine, command and the table, as markdown."""
    n_train, n_test = int(data.train.sum()), int((~data.train).sum())
    lines = [
        "## CIFAR-10 linear probe on frozen features", "",
        f"- pretraining: VICReg (configs/vicreg-cifar10.yaml), {cfg.encoder.model} at "
        f"{cfg.data.image_size} px, batch {cfg.data.batch_size}, budget {args.minutes:g} min wall "
        f"clock (calibration and DeepSpeed set-up included), DeepSpeed engine, world size 1, "
        f"{device}: {result.steps} steps ({result.planned_steps} planned, "
        f"{result.step_seconds:.2f} s/step), {result.samples} images, last loss "
        f"{result.last_loss:.4g}, data wait {100 * result.data_wait_frac:.0f}%",
        f"- probe: pretrain.probes.linear.linear_probe (multinomial logistic regression, "
        f"full-batch L-BFGS, max {args.probe_max_iter} iterations, L2 from "
        f"{args.weight_decays} on the last 20% of train) on {n_train} train / {n_test} test "
        "images; features = pooled backbone output, eval mode",
        "- random init: the same architecture with the same initial weights as the pretrained "
        f"run started from (seed {cfg.seed}), never trained",
        f"- machine: {machine_line()}",
        f"- command: `{command_line(SCRIPT, argv)}`", "",
        markdown_table(HEADERS, [r.cells() for r in rows])]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="pretraining wall clock")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--data-dir", type=Path, default=cifar10_dir(),
                        help="folder with train-*.tar and test-*.tar (CIFAR-10 shards)")
    parser.add_argument("--max-train", type=int, default=50_000)
    parser.add_argument("--max-test", type=int, default=10_000)
    parser.add_argument("--weight-decays", type=float, nargs="+",
                        default=[1e-5, 1e-4, 1e-3, 1e-2])
    parser.add_argument("--probe-max-iter", type=int, default=200)
    parser.add_argument("--encode-batch", type=int, default=512)
    parser.add_argument("--pixels", choices=("run", "quote"), default="run",
                        help="run the raw-pixel probe (slow: 3,072-d) or quote the published ~39%%")
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> str:
    """Pretrain, probe three representations and report; returns the markdown (also printed)."""
    args = parse_args(argv)
    configure(args)
    train_shards, test_shards = split_shards(args.data_dir)
    cfg = pretrain_config(args)
    device = default_device()
    result = train_for(cfg, 60.0 * args.minutes, device=device)
    # Native 32 px images; the encoder preprocessing resizes to --image-size when it differs.
    data = probe_set_from_shards(train_shards, test_shards, max_train=args.max_train,
                                 max_test=args.max_test, seed=cfg.seed, name="cifar10")
    pre = Preprocess.from_info(result.info)
    random_encoder = build_model(cfg)[0].encoder.to(device)
    rows = [probe_encoder(f"VICReg pretrained ({args.minutes:g} min)", result.objective.encoder,
                          data, pre, args, device),
            probe_encoder("same architecture, random init", random_encoder, data, pre, args,
                          device),
            probe_pixels(data, args)]
    return emit(format_report(rows, cfg, result, data, args, device, argv), args.out)


if __name__ == "__main__":
    main()
