"""Fidelity table (issue 4): every objective trained on the synthetic 3D data for the same
wall-clock budget, then probed on held-out objects. A benchmark, not a test: run it alone on a
quiet machine, from the repository root:

    .venv/bin/python benchmarks/fidelity.py --minutes-per-objective 3 --out docs/fidelity.md

Each objective starts from its ``configs/<objective>-synth3d.yaml`` with the encoder, image size
(the synthetic data is rendered at that size), batch and data made identical for all; the
``seq_jepa_no_action`` row is seq-JEPA with ``objective.seq_jepa.action_conditioning=false``.
The paper claims of the issue are printed as yes/no checks on the measured numbers. The
*action use* column says whether an action-conditioned predictor (SIE, seq-JEPA) gets anything
from its action (``action_use``): 1.00 means the action is ignored.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import Tensor, nn

from benchmarks.common import (REPO, TrainResult, add_common_arguments, command_line, configure,
                               default_device, emit, load_result, log, machine_line,
                               markdown_table, num, pct, save_result, single_process_group,
                               train_for)
from objectives.sie import SIE
from pretrain.config import load_config
from pretrain.config.load import apply_overrides
from pretrain.config.schema import RunConfig
from pretrain.probes.config import ProbesConfig
from pretrain.probes.features import Preprocess, encode
from pretrain.probes.linear import linear_probe
from pretrain.probes.probeset import ProbeSet, load_probe_set
from pretrain.probes.suite import run_probe_suite
from pretrain.data.prepare import prepare_data
from pretrain.train.loop import WorkerContext, build_augmenter, endless_batches
from pretrain.train.plan import plan_training
from pretrain.train.seeding import derive_seed, generator_for
from pretrain.train.step import make_views

SCRIPT = "benchmarks/fidelity.py"
# Row name -> (config file stem, extra overrides).
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "vicreg": ("vicreg", ()),
    "simclr": ("simclr", ()),
    "essl": ("essl", ()),
    "care": ("care", ()),
    "sie": ("sie", ()),
    "seq_jepa": ("seq_jepa", ()),
    "seq_jepa_no_action": ("seq_jepa", ("objective.seq_jepa.action_conditioning=false",)),
}
HEADERS = ("objective", "steps (planned)", "samples", "class top-1", "rot R² ridge",
           "rot R² MLP", "rot R² MLP (SIE est.)", "hue R² ridge", "hue R² MLP", "4-rot acc",
           "RankMe", "action use")
# The loss term an action-conditioned predictor is judged by (None: the whole loss).
ACTION_TERMS: dict[str, str | None] = {"sie": "equivariance", "seq_jepa": None}


@dataclass(frozen=True)
class Row:
    """One line of the table; ``None`` where a metric does not apply."""

    name: str
    steps: str
    samples: str
    top1: float | None
    rot_ridge: float | None
    rot_mlp: float | None
    rot_mlp_sie: float | None
    hue_ridge: float | None = None
    hue_mlp: float | None = None
    rot4: float | None = None
    rankme: float | None = None
    action_use: float | None = None

    def cells(self) -> list[str]:
        """Table cells: percentages for accuracies, 3 decimals for R², '—' where missing."""
        return [self.name, self.steps, self.samples, pct(self.top1), num(self.rot_ridge),
                num(self.rot_mlp), num(self.rot_mlp_sie), num(self.hue_ridge),
                num(self.hue_mlp), pct(self.rot4), num(self.rankme, 1),
                num(self.action_use, 2)]


class FeatureSlice(nn.Module):
    """Columns ``[start, stop)`` of an encoder's output (SIE's invariant / equivariant part)."""

    def __init__(self, encoder: nn.Module, start: int, stop: int) -> None:
        super().__init__()
        self.encoder, self.start, self.stop = encoder, start, stop

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)[:, self.start:self.stop]


def run_config(name: str, args: argparse.Namespace) -> RunConfig:
    """The config of row ``name``: its synth3d YAML with the shared settings on top."""
    stem, extra = VARIANTS[name]
    size = args.image_size
    shared = [f"name=fidelity-{name}", f"encoder.model={args.encoder}", f"data.image_size={size}",
              f"data.synth3d.size={size}"]
    if args.batch_size is not None:
        shared.append(f"data.batch_size={args.batch_size}")
    return load_config(REPO / "configs" / f"{stem}-synth3d.yaml",
                       [*shared, *extra, *args.overrides])


def check_same_setting(configs: dict[str, RunConfig]) -> None:
    """Every row must see the same data, encoder, image size and batch (the table's premise)."""
    def key(c: RunConfig) -> tuple:
        return (c.data.synth3d, c.data.image_size, c.data.batch_size, c.encoder, c.seed)

    first, *rest = configs.items()
    for name, cfg in rest:
        if key(cfg) != key(first[1]):
            raise SystemExit(f"{name} differs from {first[0]} in data/encoder/image size/batch; "
                             "the fidelity table needs them identical (see its configs)")


def probes_config(cfg: RunConfig, objects: int, overrides: Sequence[str] = ()) -> ProbesConfig:
    """Held-out objects (2/3 probe-train, 1/3 probe-test) of the training classes, rendered at
    the training size and posed like the training data, every one of them transformed once
    for the regressors (thousands of pairs: even a pose oracle needs about 3,000 before an MLP
    reads a uniform-SO(3) relative rotation with R^2 near 0.8; with 200 it scores 0.24); 3D
    object rotation and object hue as the transformations; then
    ``overrides`` (``key=value`` on ``ProbesConfig``, e.g. ``mlp_steps=100``)."""
    n_train = max(2, round(objects * 2 / 3))
    n_test = max(2, objects - n_train)
    tree = dict(data="synth3d", cache_dir=cfg.data.cache_dir, max_train=n_train,
                max_test=n_test, pairs_train=n_train, pairs_test=n_test, seed=cfg.seed,
                synth3d_classes=cfg.data.synth3d.classes, synth3d_size=cfg.data.synth3d.size,
                synth3d_max_angle_deg=cfg.data.synth3d.max_angle_deg,
                knn=False, transforms=["object_rotation", "object_hue"])
    return ProbesConfig.model_validate(apply_overrides(tree, list(overrides)))


def four_rotation_accuracy(encoder: nn.Module, probe_set: ProbeSet, pre: Preprocess,
                           cfg: ProbesConfig, device: torch.device) -> float:
    """Top-1 of a linear probe telling which of 0/90/180/270 degrees a probe image was rotated
    by, from backbone features (probe-train images fit, probe-test images score)."""
    turned = [encode(encoder, torch.rot90(probe_set.images, k, dims=(-2, -1)), pre=pre,
                     device=device, batch_size=cfg.batch_size) for k in range(4)]
    # Image-major rows, so the probe's validation slice (last 20% of train rows) holds every
    # rotation rather than only the last one.
    x = torch.stack(turned, dim=1).reshape(-1, turned[0].shape[1])
    y = torch.arange(4).repeat(probe_set.images.shape[0])
    train = probe_set.train.repeat_interleave(4)
    return linear_probe(x[train], y[train], x[~train], y[~train],
                        weight_decays=cfg.linear_weight_decays, max_iter=cfg.linear_max_iter).top1


@torch.no_grad()
def action_use(result: TrainResult, cfg: RunConfig, device: torch.device,
               batches: int = 4) -> float | None:
    """How much an action-conditioned predictor relies on its action: its loss term (SIE's
    predictor MSE, seq-JEPA's 1 - cos) with every row's actions taken from another row of the
    batch (a fixed derangement), over the same term with the true actions, on ``batches``
    training batches (same views, same mode, same dropout masks). 1.0: the action is ignored
    (the invariant shortcut); above 1: the prediction uses it. ``None`` for objectives without
    actions."""
    if cfg.objective.name not in ACTION_TERMS:
        return None
    term = ACTION_TERMS[cfg.objective.name]
    model = copy.deepcopy(result.objective).train()  # batch-norm statistics as in training
    augmenter = build_augmenter(cfg, result.info)
    ctx = WorkerContext(rank=0, world_size=1, device=device)
    stream = endless_batches(cfg, ctx, plan_training(cfg, 1))

    def judged_term(views, i: int) -> float:
        torch.manual_seed(derive_seed(cfg.seed, "action_use", i))  # same dropout masks per pair
        out = model(views)
        return float(out.loss if term is None else out.terms[term])

    true_sum = swapped_sum = 0.0
    try:
        for i in range(batches):
            batch, _ = next(stream)
            views = make_views(augmenter, batch.to(device),
                               generator_for(cfg.seed, "action_use", i))
            other = torch.roll(torch.arange(views.batch_size, device=device), 1)
            swapped = dataclasses.replace(views, relative={k: v[other] for k, v in
                                                           views.relative.items()})
            true_sum += judged_term(views, i)
            swapped_sum += judged_term(swapped, i)
    finally:
        stream.close()
    return swapped_sum / max(true_sum, 1e-12)


def evaluate(name: str, result: TrainResult, probe_set: ProbeSet, cfg: ProbesConfig,
             device: torch.device, run_cfg: RunConfig) -> list[Row]:
    """The row of one trained objective (plus SIE's invariant and equivariant parts)."""
    encoder, pre = result.objective.encoder, Preprocess.from_info(result.info)
    m = run_probe_suite(encoder, probe_set, cfg, device, preprocess=pre)
    rows = [Row(name=name, steps=f"{result.steps} ({result.planned_steps})",
                samples=str(result.samples), top1=m.get("probe/linear_top1"),
                rot_ridge=m.get("probe/equivariance_r2/object_rotation"),
                rot_mlp=m.get("probe/equivariance_r2_mlp/object_rotation"),
                rot_mlp_sie=m.get("probe/equivariance_r2_sie_mlp/object_rotation"),
                hue_ridge=m.get("probe/equivariance_r2/object_hue"),
                hue_mlp=m.get("probe/equivariance_r2_mlp/object_hue"),
                rot4=four_rotation_accuracy(encoder, probe_set, pre, cfg, device),
                rankme=m.get("probe/health/rankme"),
                action_use=action_use(result, run_cfg, device))]
    if isinstance(result.objective, SIE):
        inv, width = result.objective.inv_dims, result.objective.num_features
        part_cfg = cfg.model_copy(update={"transforms": ["object_rotation"]})
        for label, (start, stop) in (("invariant", (0, inv)), ("equivariant", (inv, width))):
            p = run_probe_suite(FeatureSlice(encoder, start, stop), probe_set, part_cfg, device,
                                preprocess=pre)
            rows.append(Row(name=f"{name} [{label} part, dims {start}-{stop - 1}]", steps="—",
                            samples="—", top1=p.get("probe/linear_top1"),
                            rot_ridge=p.get("probe/equivariance_r2/object_rotation"),
                            rot_mlp=p.get("probe/equivariance_r2_mlp/object_rotation"),
                            rot_mlp_sie=p.get("probe/equivariance_r2_sie_mlp/object_rotation"),
                            rankme=p.get("probe/health/rankme")))
    return rows


def claim(text: str, values: Sequence[float | None],
          test: Callable[..., bool | None], detail: Callable[..., str]) -> str:
    """``- text: **yes|no|n/a** (detail)``; n/a when a row was not run or ``test`` gives None."""
    if any(v is None for v in values):
        return f"- {text}: **n/a** (not run)"
    ok = test(*values)
    verdict = "n/a" if ok is None else ("yes" if ok else "no")
    return f"- {text}: **{verdict}** ({detail(*values)})"


def paper_checks(rows: dict[str, Row], essl_base: str) -> list[str]:
    """The issue's claims, checked on the MLP read-out R² (scikit-learn estimator) and the
    class linear probe, as measured."""
    def get(name: str, field: str) -> float | None:
        row = rows.get(name)
        return None if row is None else getattr(row, field)

    def part(label: str) -> str:
        return next((k for k in rows if k.startswith(f"sie [{label} part")), "")

    vic_rot, vic_top1 = get("vicreg", "rot_mlp"), get("vicreg", "top1")
    out = []
    for name, label in (("sie", "SIE"), ("seq_jepa", "seq-JEPA")):
        out.append(claim(f"{label} rotation R² − VICReg rotation R² >= 0.15",
                         (get(name, "rot_mlp"), vic_rot), lambda r, v: r - v >= 0.15,
                         lambda r, v: f"{r:.3f} − {v:.3f} = {r - v:+.3f}"))
        out.append(claim(f"{label} class top-1 >= VICReg's − 5 points",
                         (get(name, "top1"), vic_top1), lambda t, v: t >= v - 0.05,
                         lambda t, v: f"{pct(t)} vs {pct(v)}"))
    # n/a when seq-JEPA has no advantage over VICReg to lose.
    out.append(claim(
        "seq-JEPA without actions loses at least half of its rotation-R² advantage over VICReg",
        (get("seq_jepa", "rot_mlp"), get("seq_jepa_no_action", "rot_mlp"), vic_rot),
        lambda s, n, v: None if s - v <= 0 else n - v <= (s - v) / 2,
        lambda s, n, v: f"advantage {s - v:+.3f} with actions, {n - v:+.3f} without"))
    inv, equi = part("invariant"), part("equivariant")
    out.append(claim("SIE invariant part classifies better than its equivariant part",
                     (get(inv, "top1"), get(equi, "top1")), lambda i, e: i > e,
                     lambda i, e: f"{pct(i)} vs {pct(e)}"))
    out.append(claim("SIE equivariant part predicts rotation better than its invariant part",
                     (get(equi, "rot_mlp"), get(inv, "rot_mlp")), lambda e, i: e > i,
                     lambda e, i: f"R² {e:.3f} vs {i:.3f}"))
    out.append(claim(f"E-SSL 4-rotation accuracy >= its base ({essl_base})'s + 20 points",
                     (get("essl", "rot4"), get(essl_base, "rot4")), lambda e, b: e >= b + 0.20,
                     lambda e, b: f"{pct(e)} vs {pct(b)}"))
    out.append(claim(f"E-SSL class top-1 >= its base ({essl_base})'s − 2 points",
                     (get("essl", "top1"), get(essl_base, "top1")), lambda e, b: e >= b - 0.02,
                     lambda e, b: f"{pct(e)} vs {pct(b)}"))
    out.append(claim("CARE hue R² > SimCLR's (paper: hue shift on CIFAR-10; here: object hue "
                     "on synth3d)", (get("care", "hue_mlp"), get("simclr", "hue_mlp")),
                     lambda c, s: c > s, lambda c, s: f"{c:.3f} vs {s:.3f}"))
    return out


def format_report(rows: list[Row], checks: list[str], cfg: RunConfig, pcfg: ProbesConfig,
                  args: argparse.Namespace, device: torch.device,
                  argv: Sequence[str] | None) -> str:
    """Budget, setting, probe method, machine, command, table and claims, as markdown."""
    s = cfg.data.synth3d
    budget = (f"weights of an earlier run kept in {args.from_saved} (see its budget; steps "
              "below)" if args.from_saved is not None else
              f"{args.minutes_per_objective:g} min wall clock of training per objective "
              "(calibration and DeepSpeed set-up included; data generation and probes excluded)")
    lines = [
        "## Fidelity table: synthetic 3D objects, probed on held-out objects", "",
        f"- budget: {budget}, DeepSpeed engine, world size 1, {device}",
        f"- every objective: encoder {cfg.encoder.model} (random init, seed {cfg.seed}), "
        f"{cfg.data.image_size} px, batch {cfg.data.batch_size}, data {s.classes} classes x "
        f"{s.instances_per_class} objects x {s.views} renderings at {s.size} px (seed {s.seed}), "
        "poses " + ("uniform on SO(3)" if s.max_angle_deg is None else
                    f"within {s.max_angle_deg:g} degrees of the canonical pose (probe set too)")
        + f", per rendering: background hue {'drawn' if s.background_per_view else 'fixed'}, "
        f"light {'drawn' if s.light_per_view else 'fixed'}, object hue jitter "
        f"+-{s.hue_jitter_per_view:g} turns",
        f"- probes: {pcfg.max_train} probe-train / {pcfg.max_test} probe-test held-out objects "
        f"(seed {pcfg.synth3d_seed}), backbone features; class = linear probe top-1 "
        "(multinomial logistic regression, L-BFGS); rot R² = relative rotation quaternion and hue "
        "R² = object-hue shift (cos, sin) regressed from [f(x), f(Tx)] by ridge and by an MLP "
        f"({pcfg.pairs_train} / {pcfg.pairs_test} pairs at most), scikit-learn R² (mean over "
        "outputs) unless marked 'SIE est.' (SIE's global-mean R²); 4-rot = linear probe for "
        "0/90/180/270-degree rotations of the probe images; action use = the predictor's loss "
        "term with actions taken from other rows over the same with the true actions, on 4 "
        "training batches (1.00: the action is ignored)",
        f"- machine: {machine_line()}",
        f"- command: `{command_line(SCRIPT, argv)}`", "",
        markdown_table(HEADERS, [r.cells() for r in rows]), "",
        "### Paper claims, as measured (nothing tuned; R² = MLP read-out, scikit-learn estimator)",
        "", *checks]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes-per-objective", type=float, default=3.0)
    parser.add_argument("--image-size", type=int, default=32,
                        help="training and probe image side; the synthetic data is rendered at it")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the configs' (64 for every synth3d config)")
    parser.add_argument("--objectives", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--probe-objects", type=int, default=4608,
                        help="held-out objects probed: 2/3 probe-train, 1/3 probe-test; every "
                        "one gives a regressor pair (the rotation read-out needs thousands)")
    parser.add_argument("--save-dir", type=Path, default=None,
                        help="keep every trained objective here (safetensors + JSON)")
    parser.add_argument("--from-saved", type=Path, default=None, metavar="DIR",
                        help="probe the objectives kept in DIR by --save-dir instead of training")
    parser.add_argument("--probe", dest="probe_overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="probe setting (pretrain.probes.config."
                        "ProbesConfig), repeatable, e.g. --probe mlp_steps=200")
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> str:
    """Train, probe and report; returns the markdown report (also printed)."""
    args = parse_args(argv)
    configure(args)
    configs = {name: run_config(name, args) for name in args.objectives}  # all fail fast here
    check_same_setting(configs)
    essl_base = run_config("essl", args).objective.essl.base
    device = default_device()
    first = next(iter(configs.values()))
    pcfg = probes_config(first, args.probe_objects, args.probe_overrides)
    probe_set = load_probe_set("synth3d", pcfg)
    rows: list[Row] = []
    with single_process_group(device):
        for name, cfg in configs.items():
            cfg = prepare_data(cfg)
            if args.from_saved is not None:
                result = load_result(cfg, args.from_saved, name, device)
            else:
                result = train_for(cfg, 60.0 * args.minutes_per_objective, device=device)
                if args.save_dir is not None:
                    save_result(result, args.save_dir, name)
            new_rows = evaluate(name, result, probe_set, pcfg, device, cfg)
            for row in new_rows:
                log.info("row: %s", " | ".join(row.cells()))  # visible before the table
            rows += new_rows
            del result
            gc.collect()
    checks = paper_checks({r.name: r for r in rows}, essl_base)
    return emit(format_report(rows, checks, first, pcfg, args, device, argv), args.out)


if __name__ == "__main__":
    main()
