"""CARE vs SimCLR colour sensitivity on CIFAR-10 (issue 4's CARE claim: CARE keeps more of a hue
shift readable than SimCLR). Each objective trains from its ``configs/<name>-cifar10.yaml`` for
the same wall-clock budget, then the probes regress the hue shift of held-out test images from
[f(x), f(Tx)] (``pretrain.probes``' ``hue`` transformation: HSV hue shift of +-U(0.05, 0.25)
turns). A benchmark, not a test: run it alone on a quiet machine, from the repository root:

    .venv/bin/python benchmarks/care_hue.py --minutes-per-objective 8 --out care_hue.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (REPO, add_common_arguments, command_line, configure,
                               default_device, emit, log, machine_line, markdown_table, num, pct,
                               single_process_group, train_for)
from pretrain.config import load_config
from pretrain.config.schema import RunConfig
from pretrain.probes.config import ProbesConfig
from pretrain.probes.features import Preprocess
from pretrain.probes.probeset import cifar10_dir, load_probe_set
from pretrain.probes.suite import run_probe_suite

SCRIPT = "benchmarks/care_hue.py"
OBJECTIVES = ("simclr", "care")
HEADERS = ("objective", "steps (planned)", "samples", "class top-1", "hue invariance",
           "hue R² ridge", "hue R² MLP")


def run_config(name: str, args: argparse.Namespace) -> RunConfig:
    """``configs/<name>-cifar10.yaml`` on ``args.data_dir``'s train shards."""
    return load_config(REPO / "configs" / f"{name}-cifar10.yaml", [
        f"name=care-hue-{name}", f"data.path={args.data_dir.resolve() / 'train-*.tar'}",
        f"encoder.model={args.encoder}", *([f"data.batch_size={args.batch_size}"]
                                          if args.batch_size else []), *args.overrides])


def probes_config(args: argparse.Namespace) -> ProbesConfig:
    """Two thirds of the probe images from the train shards fit the probes, one third from the
    test shards scores them; every image gives one hue-shifted pair."""
    n_train = max(2, round(args.probe_images * 2 / 3))
    n_test = max(2, args.probe_images - n_train)
    return ProbesConfig(data=str(args.data_dir.resolve()), max_train=n_train, max_test=n_test,
                        pairs_train=n_train, pairs_test=n_test, knn=False, transforms=["hue"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes-per-objective", type=float, default=8.0)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the configs' (256)")
    parser.add_argument("--probe-images", type=int, default=3000,
                        help="CIFAR-10 images probed (2/3 from train, 1/3 from test), each one "
                        "hue-shifted once for the regressors")
    parser.add_argument("--data-dir", type=Path, default=cifar10_dir(),
                        help="folder with train-*.tar and test-*.tar shards")
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    configure(args)
    configs = {name: run_config(name, args) for name in OBJECTIVES}
    device = default_device()
    pcfg = probes_config(args)
    probe_set = load_probe_set(pcfg.data, pcfg)
    rows, hue_mlp = [], {}
    with single_process_group(device):
        for name, cfg in configs.items():
            result = train_for(cfg, 60.0 * args.minutes_per_objective, device=device)
            m = run_probe_suite(result.objective.encoder, probe_set, pcfg, device,
                                preprocess=Preprocess.from_info(result.info))
            rows.append([name, f"{result.steps} ({result.planned_steps})", str(result.samples),
                         pct(m.get("probe/linear_top1")), num(m.get("probe/invariance/hue")),
                         num(m.get("probe/equivariance_r2/hue")),
                         num(m.get("probe/equivariance_r2_mlp/hue"))])
            hue_mlp[name] = m["probe/equivariance_r2_mlp/hue"]
            log.info("row: %s", " | ".join(rows[-1]))
    care, simclr = hue_mlp["care"], hue_mlp["simclr"]
    verdict = "yes" if care > simclr else "no"
    report = "\n".join([
        "## CARE vs SimCLR: hue shift read from CIFAR-10 representations", "",
        f"- budget: {args.minutes_per_objective:g} min wall clock of training per objective, "
        f"DeepSpeed engine, world size 1, {device}; configs/simclr-cifar10.yaml and "
        f"configs/care-cifar10.yaml, encoder {args.encoder}, batch "
        f"{configs['care'].data.batch_size}",
        f"- probes: {pcfg.max_train} train / {pcfg.max_test} test CIFAR-10 images; hue = HSV hue "
        "shift of +-U(0.05, 0.25) turns, regressed from [f(x), f(Tx)] (ridge and MLP, "
        "scikit-learn R²); invariance = 1 for f(Tx) = f(x), 0 at the level of unrelated images",
        f"- machine: {machine_line()}", f"- command: `{command_line(SCRIPT, argv)}`", "",
        markdown_table(HEADERS, rows), "",
        f"- CARE hue R² (MLP) > SimCLR's: **{verdict}** ({care:.3f} vs {simclr:.3f})"])
    return emit(report, args.out)


if __name__ == "__main__":
    main()
