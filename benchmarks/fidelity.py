"""Fidelity suite (issues 4 and 10): does each objective keep what its paper says it keeps?

Every objective trains for the same number of optimizer steps per seed, then is probed on
held-out data; every paper claim is decided over seeds (``benchmarks.seeds``: mean ± sd, and
**yes** only when the paired difference clears the claim by more than twice its seed spread).
A benchmark, not a test: run it from the repository root (defaults: 3 seeds, the whole suite):

    .venv/bin/python benchmarks/fidelity.py --out fidelity.md

Two parts:

- *synthetic 3D objects* (``configs/<objective>-synth3d.yaml`` with encoder, image size, batch
  and data made identical for all): relative-rotation read-outs, class top-1, the parts of the
  representation an objective declares (SIE's halves, seq-JEPA's aggregate of one view) and
  the predictors' action use. ``seq_jepa_no_action`` is seq-JEPA with
  ``objective.seq_jepa.action_conditioning=false``.
- *CIFAR-10* (``configs/<objective>-cifar10.yaml``), where E-SSL's and CARE's papers make their
  claims: 4-fold rotation read-out, class top-1 and the read-out of a hue shift.

The budget is a number of steps, so a run is a function of its seed alone however loaded the
machine is; wall times are printed next to it. The action-use figures (``predictor_diagnostic``)
are the predictor's loss with the true actions, with the actions of other rows, and the loss of
predicting "no change"; their ratio shuffled / true is the *action use* (1.00: the action is
ignored). A true-action loss far above "no change" means the predictor is not yet trained, not
that it found the invariant solution.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from benchmarks.common import (REPO, TrainResult, add_common_arguments, command_line, configure,
                               default_device, emit, load_result, log, machine_line,
                               markdown_table, save_result, single_process_group, train_for)
from benchmarks.seeds import SeedValues, cell, decide
from pretrain.config import load_config
from pretrain.config.load import apply_overrides
from pretrain.config.schema import RunConfig
from pretrain.workflows.prepare_data import prepare_data
from pretrain.probes.config import ProbesConfig
from pretrain.probes.features import Preprocess, encode
from pretrain.probes.linear import linear_probe
from pretrain.probes.probeset import ProbeSet, cifar10_dir, load_probe_set
from pretrain.probes.suite import part_key, run_probe_suite
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
# The synth3d rows the rotation claims need; E-SSL and CARE are decided on CIFAR-10.
DEFAULT_SYNTH3D = ("vicreg", "sie", "seq_jepa", "seq_jepa_no_action")
CIFAR_OBJECTIVES = ("simclr", "essl", "care")


@dataclass(frozen=True)
class Column:
    """A metric column: header, metric key, shown as a percentage or with ``digits`` decimals."""

    header: str
    key: str
    percent: bool = False
    digits: int = 3


SYNTH3D_COLUMNS = (
    Column("class top-1", "top1", percent=True), Column("rot R² ridge", "rot_ridge"),
    Column("rot R² MLP", "rot_mlp"), Column("rot R² MLP (SIE est.)", "rot_mlp_sie"),
    Column("hue R² MLP", "hue_mlp"), Column("4-rot acc", "rot4", percent=True),
    Column("RankMe", "rankme", digits=1), Column("pred. loss, true actions", "pred_true"),
    Column("shuffled actions", "pred_shuffled"), Column("no change", "pred_no_change"),
    Column("action use", "action_use", digits=2))
CIFAR_COLUMNS = (
    Column("class top-1", "top1", percent=True), Column("4-rot acc", "rot4", percent=True),
    Column("hue invariance", "hue_inv"), Column("hue R² ridge", "hue_ridge"),
    Column("hue R² MLP", "hue_mlp"))
Metrics = dict[str, float | None]


@dataclass
class Runs:
    """Every seed's metrics of one table row, with its steps and training wall times."""

    name: str
    steps: int | None = None
    seconds: list[float] = field(default_factory=list)
    by_seed: dict[int, Metrics] = field(default_factory=dict)

    def add(self, seed: int, metrics: Metrics, steps: int | None = None,
            seconds: float | None = None) -> None:
        self.by_seed[seed] = metrics
        if steps is not None:
            self.steps = steps
        if seconds is not None:
            self.seconds.append(seconds)

    def series(self, key: str) -> SeedValues | None:
        """``seed -> value`` of one metric (``None`` when it was not measured)."""
        values = {s: m.get(key) for s, m in self.by_seed.items()}
        if not values or any(v is None for v in values.values()):
            return None
        return values  # type: ignore[return-value]

    def cells(self, columns: Sequence[Column]) -> list[str]:
        metrics = list(self.by_seed.values())
        steps = "—" if self.steps is None else str(self.steps)
        wall = "—" if not self.seconds else f"{sum(self.seconds) / len(self.seconds):.0f}"
        return [self.name, steps, wall, *(cell([m.get(c.key) for m in metrics],
                                               percent=c.percent, digits=c.digits)
                                          for c in columns)]


def run_config(name: str, args: argparse.Namespace, seed: int) -> RunConfig:
    """The config of synth3d row ``name`` and ``seed``: its YAML with the shared settings."""
    stem, extra = VARIANTS[name]
    size = args.image_size
    shared = [f"name=fidelity-{name}", f"seed={seed}", f"data.image_size={size}",
              f"data.synth3d.size={size}"]
    if args.encoder is not None:
        shared.append(f"encoder.model={args.encoder}")
    if args.batch_size is not None:
        shared.append(f"data.batch_size={args.batch_size}")
    return load_config(REPO / "configs" / f"{stem}-synth3d.yaml",
                       [*shared, *extra, *args.overrides])


def cifar_config(name: str, args: argparse.Namespace, seed: int) -> RunConfig:
    """``configs/<name>-cifar10.yaml`` on ``args.cifar_dir``'s train shards, with ``seed``."""
    return load_config(REPO / "configs" / f"{name}-cifar10.yaml", [
        f"name=fidelity-cifar10-{name}", f"seed={seed}",
        f"data.path={args.cifar_dir.resolve() / 'train-*.tar'}",
        *([f"encoder.model={args.encoder}"] if args.encoder else []),
        *([f"data.batch_size={args.cifar_batch_size}"] if args.cifar_batch_size else []),
        *args.cifar_overrides])


def check_same_setting(configs: dict[str, RunConfig]) -> None:
    """Every row must see the same data, encoder, image size and batch (the table's premise)."""
    def key(c: RunConfig) -> tuple:
        return (c.data.synth3d, c.data.image_size, c.data.batch_size, c.encoder, c.seed)

    first, *rest = configs.items()
    for name, cfg in rest:
        if key(cfg) != key(first[1]):
            raise SystemExit(f"{name} differs from {first[0]} in data/encoder/image size/batch; "
                             "the fidelity table needs them identical (see its configs)")


def probes_config(cfg: RunConfig, objects: int, overrides: Sequence[str] = (),
                  hue: bool = True) -> ProbesConfig:
    """Held-out objects (2/3 probe-train, 1/3 probe-test) of the training classes, rendered at
    the training size and posed like the training data, every one of them transformed once
    for the regressors (thousands of pairs: even a pose oracle needs about 3,000 before an MLP
    reads a uniform-SO(3) relative rotation with R^2 near 0.8; with 200 it scores 0.24); 3D
    object rotation (and object hue when ``hue``) as the transformations; then ``overrides``
    (``key=value`` on ``ProbesConfig``, e.g. ``mlp_steps=100``)."""
    n_train = max(2, round(objects * 2 / 3))
    n_test = max(2, objects - n_train)
    tree = dict(data="synth3d", cache_dir=cfg.data.cache_dir, max_train=n_train,
                max_test=n_test, pairs_train=n_train, pairs_test=n_test, seed=0,
                synth3d_classes=cfg.data.synth3d.classes, synth3d_size=cfg.data.synth3d.size,
                synth3d_max_angle_deg=cfg.data.synth3d.max_angle_deg, knn=False,
                transforms=["object_rotation", *(["object_hue"] if hue else [])])
    return ProbesConfig.model_validate(apply_overrides(tree, list(overrides)))


def cifar_probes_config(args: argparse.Namespace) -> ProbesConfig:
    """Two thirds of the probe images from the CIFAR-10 train shards fit the probes, one third
    from the test shards scores them; every image gives one hue-shifted pair (HSV hue shift of
    +-U(0.05, 0.25) turns)."""
    n_train = max(2, round(args.cifar_probe_images * 2 / 3))
    n_test = max(2, args.cifar_probe_images - n_train)
    tree = dict(data=str(args.cifar_dir.resolve()), max_train=n_train, max_test=n_test,
                pairs_train=n_train, pairs_test=n_test, knn=False, transforms=["hue"])
    return ProbesConfig.model_validate(apply_overrides(tree, list(args.probe_overrides)))


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
def predictor_diagnostic(objective: nn.Module, cfg: RunConfig, info, device: torch.device,
                         batches: int = 4) -> Metrics:
    """The action-conditioned predictor's loss (SIE's predictor MSE, seq-JEPA's 1 - cos) with
    the true actions, with every row's actions taken from the next row (a fixed derangement),
    and the loss of predicting "no change" (``objective.predictor_losses``), summed over
    ``batches`` training batches (train mode, as in training, on a copy), and ``action_use``
    = shuffled / true (1.00: the action is ignored; above 1: the prediction uses it). Empty
    for objectives without a predictor of actions."""
    if not hasattr(objective, "predictor_losses"):
        return {}
    model = copy.deepcopy(objective).train()  # batch-norm statistics as in training
    augmenter = build_augmenter(cfg, info)
    ctx = WorkerContext(rank=0, world_size=1, device=device)
    stream = endless_batches(cfg, ctx, plan_training(cfg, 1))
    sums = {"true": 0.0, "shuffled": 0.0, "no_change": 0.0}
    try:
        for i in range(batches):
            batch, _ = next(stream)
            views = make_views(augmenter, batch.to(device),
                               generator_for(cfg.seed, "action_use", i))
            torch.manual_seed(derive_seed(cfg.seed, "action_use", i))  # dropout masks
            other = torch.roll(torch.arange(views.batch_size, device=device), 1)
            for key, value in model.predictor_losses(views, other).items():
                sums[key] += float(value)
    finally:
        stream.close()
    return {"pred_true": sums["true"] / batches, "pred_shuffled": sums["shuffled"] / batches,
            "pred_no_change": sums["no_change"] / batches,
            "action_use": sums["shuffled"] / max(sums["true"], 1e-12)}


def synth3d_metrics(name: str, result: TrainResult, probe_set: ProbeSet, pcfg: ProbesConfig,
                    device: torch.device, run_cfg: RunConfig, rot4: bool = True
                    ) -> dict[str, Metrics]:
    """Row name -> metrics of one trained synth3d objective: ``name`` for the whole, plus one
    row ``"<name> [<part> part, <head>]"`` per part the objective declares
    (``Objective.probe_features``: SIE's invariant and equivariant halves, seq-JEPA's
    aggregate), probed on the relative rotation only; the 4-fold rotation probe only with
    ``rot4``."""
    encoder, pre = result.objective.encoder, Preprocess.from_info(result.info)
    parts = result.objective.probe_features()
    m = run_probe_suite(encoder, probe_set,
                        pcfg.model_copy(update={"part_transforms": ["object_rotation"]}), device,
                        preprocess=pre, parts=parts)

    def row(key: Callable[[str], str]) -> Metrics:
        return {"top1": m.get(key("probe/linear_top1")),
                "rot_ridge": m.get(key("probe/equivariance_r2/object_rotation")),
                "rot_mlp": m.get(key("probe/equivariance_r2_mlp/object_rotation")),
                "rot_mlp_sie": m.get(key("probe/equivariance_r2_sie_mlp/object_rotation")),
                "rankme": m.get(key("probe/health/rankme"))}

    out = {name: {**row(lambda k: k),
                  "hue_mlp": m.get("probe/equivariance_r2_mlp/object_hue"),
                  "rot4": (four_rotation_accuracy(encoder, probe_set, pre, pcfg, device)
                           if rot4 else None),
                  **predictor_diagnostic(result.objective, run_cfg, result.info, device)}}
    for part, head in parts.items():
        label = ", ".join(filter(None, (f"{part} part", head.extra_repr())))
        out[f"{name} [{label}]"] = row(lambda k, part=part: part_key(part, k))
    return out


def cifar_metrics(result: TrainResult, probe_set: ProbeSet, pcfg: ProbesConfig,
                  device: torch.device) -> Metrics:
    encoder, pre = result.objective.encoder, Preprocess.from_info(result.info)
    m = run_probe_suite(encoder, probe_set, pcfg, device, preprocess=pre)
    return {"top1": m.get("probe/linear_top1"),
            "rot4": four_rotation_accuracy(encoder, probe_set, pre, pcfg, device),
            "hue_inv": m.get("probe/invariance/hue"),
            "hue_ridge": m.get("probe/equivariance_r2/hue"),
            "hue_mlp": m.get("probe/equivariance_r2_mlp/hue")}


def paper_checks(rows: dict[str, Runs], essl_base: str, cifar: dict[str, Runs]) -> list[str]:
    """The issue's claims over seeds, on the MLP read-out R² (scikit-learn estimator) and the
    class linear probe; E-SSL and CARE on CIFAR-10 when those rows ran, else on synth3d."""
    def s(name: str, key: str, table: dict[str, Runs] = rows) -> SeedValues | None:
        row = table.get(name)
        return None if row is None else row.series(key)

    def part(label: str) -> str:
        return next((k for k in rows if k.startswith(f"sie [{label} part")), "")

    def vs(a: str, b: str, pct: bool = False):
        fmt = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
        return lambda x, y: f"{a} {fmt(x)} vs {b} {fmt(y)}"

    out = []
    for name, label in (("sie", "SIE"), ("seq_jepa", "seq-JEPA")):
        out.append(decide(f"{label} rotation R² ≥ VICReg's + 0.15",
                          (s(name, "rot_mlp"), s("vicreg", "rot_mlp")),
                          lambda r, v: r - v - 0.15, vs(label, "VICReg")))
        out.append(decide(f"{label} class top-1 ≥ VICReg's − 5 points",
                          (s(name, "top1"), s("vicreg", "top1")),
                          lambda t, v: t - v + 0.05, vs(label, "VICReg", pct=True)))
    out.append(decide(
        "seq-JEPA without actions loses at least half of its rotation-R² advantage over VICReg",
        (s("seq_jepa", "rot_mlp"), s("seq_jepa_no_action", "rot_mlp"), s("vicreg", "rot_mlp")),
        lambda a, n, v: (a - v) / 2 - (n - v),
        lambda a, n, v: f"advantage {a - v:+.3f} with actions, {n - v:+.3f} without",
        precondition=lambda a, n, v: a - v))
    inv, equi = part("invariant"), part("equivariant")
    out.append(decide("SIE invariant part classifies better than its equivariant part",
                      (s(inv, "top1"), s(equi, "top1")), lambda i, e: i - e,
                      vs("invariant", "equivariant", pct=True)))
    out.append(decide("SIE equivariant part reads rotation better than its invariant part",
                      (s(equi, "rot_mlp"), s(inv, "rot_mlp")), lambda e, i: e - i,
                      vs("equivariant R²", "invariant R²")))
    where = "CIFAR-10" if "essl" in cifar else "synth3d"
    table = cifar if "essl" in cifar else rows
    out.append(decide(f"E-SSL 4-rotation accuracy ≥ its base ({essl_base})'s + 20 points "
                      f"({where})", (s("essl", "rot4", table), s(essl_base, "rot4", table)),
                      lambda e, b: e - b - 0.20, vs("E-SSL", essl_base, pct=True)))
    out.append(decide(f"E-SSL class top-1 ≥ its base ({essl_base})'s − 2 points ({where})",
                      (s("essl", "top1", table), s(essl_base, "top1", table)),
                      lambda e, b: e - b + 0.02, vs("E-SSL", essl_base, pct=True)))
    if "care" in cifar:
        out.append(decide("CARE hue-shift R² > SimCLR's (CIFAR-10)",
                          (s("care", "hue_mlp", cifar), s("simclr", "hue_mlp", cifar)),
                          lambda c, b: c - b, vs("CARE", "SimCLR")))
    else:
        out.append(decide("CARE object-hue R² > SimCLR's (synth3d)",
                          (s("care", "hue_mlp"), s("simclr", "hue_mlp")),
                          lambda c, b: c - b, vs("CARE", "SimCLR")))
    return out


def table(rows: Sequence[Runs], columns: Sequence[Column]) -> str:
    return markdown_table(("objective", "steps", "train s", *(c.header for c in columns)),
                          [r.cells(columns) for r in rows])


def format_report(rows: list[Runs], cifar_rows: list[Runs], checks: list[str],
                  cfg: RunConfig | None, pcfg: ProbesConfig | None,
                  ccfg: RunConfig | None, cpcfg: ProbesConfig | None,
                  args: argparse.Namespace, device: torch.device, wall: float,
                  argv: Sequence[str] | None) -> str:
    """Budget, setting, probe method, machine, command, tables and claims, as markdown."""
    budget = (f"{args.steps} optimizer steps per synth3d run, {args.cifar_steps} per CIFAR-10 run"
              + (f" (runs kept in {args.from_saved}, read back)" if args.from_saved else ""))
    lines = ["## Fidelity suite: paper claims decided over seeds", "",
             f"- budget: {budget}, seeds {' '.join(map(str, args.seeds))} (model init, data "
             f"order, augmentation), DeepSpeed engine, world size 1, {device}; "
             + (f"assembled from the kept runs' metrics in {wall:.0f} s" if args.from_saved
                and not args.reprobe else f"total wall time {wall / 60:.1f} min (training, "
                "probes and data preparation)") + "; 'train s' = mean training seconds per run"]
    if cfg is not None and pcfg is not None:
        s = cfg.data.synth3d
        enc = cfg.encoder
        lines += [
            f"- synth3d: encoder {enc.model} (stem {enc.stem}"
            + (f", {enc.kwargs}" if enc.kwargs else "") + f"), {cfg.data.image_size} px, batch "
            f"{cfg.data.batch_size}, data {s.classes} classes x {s.instances_per_class} objects x "
            f"{s.views} renderings (seed {s.seed}), poses "
            + ("uniform on SO(3)" if s.max_angle_deg is None else
               f"within {s.max_angle_deg:g} degrees of the canonical pose (probe set too)")
            + f", per rendering: background hue {'drawn' if s.background_per_view else 'fixed'}, "
            f"light {'drawn' if s.light_per_view else 'fixed'}, object hue jitter "
            f"+-{s.hue_jitter_per_view:g} turns",
            f"- synth3d probes: {pcfg.max_train} probe-train / {pcfg.max_test} probe-test "
            f"held-out objects, backbone features; class = linear probe top-1; rot R² = relative "
            "rotation quaternion regressed from [f(x), f(Tx)] by ridge and by an MLP, "
            "scikit-learn R² unless marked 'SIE est.' (SIE's global-mean R²); 4-rot = linear "
            "probe for 0/90/180/270-degree rotations of the probe images; pred. loss = the "
            "predictor's loss term (SIE: MSE of W(g) z against z'; seq-JEPA: 1 - cos) with the "
            "true actions, with the actions of other rows, and for predicting 'no change' (z' "
            "= z; seq-JEPA: the last observed view's encoding), mean of 4 training batches; "
            "action use = shuffled / true (1.00: the action is ignored)"]
    if ccfg is not None and cpcfg is not None:
        lines += [
            f"- CIFAR-10: configs/<objective>-cifar10.yaml, encoder {ccfg.encoder.model} (stem "
            f"{ccfg.encoder.stem}), {ccfg.data.image_size} px, batch {ccfg.data.batch_size}; "
            f"probes on {cpcfg.max_train} train / {cpcfg.max_test} test images: class top-1, "
            "4-rot, hue invariance (1: f(Tx) = f(x)) and the HSV hue shift (+-U(0.05, 0.25) "
            "turns) regressed from [f(x), f(Tx)]"]
    lines += [f"- machine at the end: {machine_line()}",
              f"- command: `{command_line(SCRIPT, argv)}`", ""]
    if rows:
        lines += ["### Synthetic 3D objects (mean ± sd over seeds)", "",
                  table(rows, SYNTH3D_COLUMNS), ""]
    if cifar_rows:
        lines += ["### CIFAR-10 (mean ± sd over seeds)", "", table(cifar_rows, CIFAR_COLUMNS), ""]
    lines += ["### Paper claims (yes = beyond twice the seed spread of the paired margin; "
              "R² = MLP read-out, scikit-learn estimator; nothing tuned)", "", *checks]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60,
                        help="optimizer steps per synth3d run (the LR/EMA schedules span them)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds; every claim is decided over them")
    parser.add_argument("--image-size", type=int, default=32,
                        help="synth3d training and probe image side (the data is rendered at it)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="synth3d batch; default: the configs' (64)")
    parser.add_argument("--objectives", nargs="*", choices=list(VARIANTS),
                        default=list(DEFAULT_SYNTH3D), help="synth3d rows (none: skip the part)")
    parser.add_argument("--probe-objects", type=int, default=3072,
                        help="held-out objects probed: 2/3 probe-train, 1/3 probe-test; every "
                        "one gives a regressor pair (the rotation read-out needs thousands)")
    parser.add_argument("--cifar-objectives", nargs="*", choices=list(CIFAR_OBJECTIVES),
                        default=list(CIFAR_OBJECTIVES), help="CIFAR-10 rows (none: skip)")
    parser.add_argument("--cifar-steps", type=int, default=40,
                        help="optimizer steps per CIFAR-10 run")
    parser.add_argument("--cifar-batch-size", type=int, default=64,
                        help="CIFAR-10 batch (the configs' 256 costs 4x per step)")
    parser.add_argument("--cifar-probe-images", type=int, default=2000,
                        help="CIFAR-10 images probed (2/3 from train, 1/3 from test)")
    parser.add_argument("--cifar-dir", type=Path, default=cifar10_dir(),
                        help="folder with CIFAR-10 train-*.tar and test-*.tar shards")
    parser.add_argument("--cifar-set", dest="cifar_overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override for the CIFAR-10 runs only")
    parser.add_argument("--save-dir", type=Path, default=None,
                        help="keep every trained objective here (safetensors + JSON)")
    parser.add_argument("--from-saved", type=Path, default=None, metavar="DIR",
                        help="probe the objectives kept in DIR by --save-dir instead of training")
    parser.add_argument("--reprobe", action="store_true",
                        help="with --from-saved: probe the kept weights again instead of reading "
                        "the kept metrics")
    parser.add_argument("--probe", dest="probe_overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="probe setting (pretrain.probes.config."
                        "ProbesConfig), repeatable, e.g. --probe mlp_steps=200")
    add_common_arguments(parser)
    parser.set_defaults(encoder=None)  # the configs' encoder unless given
    args = parser.parse_args(argv)
    if args.steps < 1 or args.cifar_steps < 1:
        parser.error("--steps and --cifar-steps must be positive")
    if not args.objectives and not args.cifar_objectives:
        parser.error("nothing to run: give --objectives or --cifar-objectives")
    if args.cifar_objectives and not any(args.cifar_dir.glob("train-*.tar")):
        parser.error(f"no CIFAR-10 shards in {args.cifar_dir} (--cifar-dir, or "
                     "--cifar-objectives with no names to skip that part)")
    return args


def measured(cfg: RunConfig, args: argparse.Namespace, key: str, steps: int,
             device: torch.device, probe: Callable[[TrainResult], dict[str, Metrics]]
             ) -> tuple[dict[str, Metrics], int, float]:
    """Row name -> metrics of one run, with its steps and training seconds. Trains (or loads,
    with ``--from-saved``) and probes; with ``--save-dir`` keeps the weights and the metrics
    (``key.metrics.json``), which ``--from-saved`` then reads back instead of probing again
    (unless ``--reprobe``). So runs can be split over processes that share one ``--save-dir``,
    and one ``--from-saved`` call assembles the report."""
    kept = None if args.from_saved is None else args.from_saved / f"{key}.metrics.json"
    if kept is not None and kept.is_file() and not args.reprobe:
        data = json.loads(kept.read_text())
        return data["rows"], data["steps"], data["seconds"]
    if args.from_saved is not None:
        result = load_result(cfg, args.from_saved, key, device)
    else:
        result = train_for(cfg, steps=steps, device=device)
        if args.save_dir is not None:
            save_result(result, args.save_dir, key)
    rows = probe(result)
    if args.save_dir is not None:
        (args.save_dir / f"{key}.metrics.json").write_text(json.dumps(
            {"rows": rows, "steps": result.steps, "seconds": result.seconds}, indent=1))
    out = rows, result.steps, result.seconds
    del result
    gc.collect()
    return out


def main(argv: Sequence[str] | None = None) -> str:
    """Train, probe and report; returns the markdown report (also printed)."""
    started = time.perf_counter()
    args = parse_args(argv)
    configure(args)
    device = default_device()
    seeds = list(dict.fromkeys(args.seeds))
    rows: dict[str, Runs] = {}
    cifar_rows: dict[str, Runs] = {}
    first = pcfg = ccfg = cpcfg = None
    essl_base = (cifar_config("essl", args, seeds[0]) if "essl" in args.cifar_objectives
                 else run_config("essl", args, seeds[0])).objective.essl.base
    with single_process_group(device):
        if args.objectives:
            configs = {name: run_config(name, args, seeds[0]) for name in args.objectives}
            check_same_setting(configs)  # every config fails fast here, before any training
            first = next(iter(configs.values()))
            pcfg = probes_config(first, args.probe_objects, args.probe_overrides,
                                 hue="care" in args.objectives)
            probe_set = None
            for name in args.objectives:
                for seed in seeds:
                    cfg = prepare_data(run_config(name, args, seed))

                    def probe(result: TrainResult, name: str = name, cfg: RunConfig = cfg
                              ) -> dict[str, Metrics]:
                        nonlocal probe_set
                        probe_set = probe_set or load_probe_set("synth3d", pcfg)
                        return synth3d_metrics(name, result, probe_set, pcfg, device, cfg,
                                               rot4="essl" in args.objectives)

                    measures, steps, seconds = measured(cfg, args, f"{name}-seed{seed}",
                                                        args.steps, device, probe)
                    for row, metrics in measures.items():
                        rows.setdefault(row, Runs(row)).add(
                            seed, metrics, *((steps, seconds) if row == name else (None, None)))
                    log.info("%s seed %d: %s", name, seed, rows[name].by_seed[seed])
        if args.cifar_objectives:
            ccfg = cifar_config(args.cifar_objectives[0], args, seeds[0])
            cpcfg = cifar_probes_config(args)
            cifar_set = None
            for name in args.cifar_objectives:
                for seed in seeds:
                    def probe(result: TrainResult, name: str = name) -> dict[str, Metrics]:
                        nonlocal cifar_set
                        cifar_set = cifar_set or load_probe_set(cpcfg.data, cpcfg)
                        return {name: cifar_metrics(result, cifar_set, cpcfg, device)}

                    measures, steps, seconds = measured(
                        cifar_config(name, args, seed), args, f"cifar10-{name}-seed{seed}",
                        args.cifar_steps, device, probe)
                    cifar_rows.setdefault(name, Runs(name)).add(seed, measures[name], steps,
                                                                seconds)
                    log.info("cifar10 %s seed %d: %s", name, seed, cifar_rows[name].by_seed[seed])
    checks = paper_checks(rows, essl_base, cifar_rows)
    report = format_report(list(rows.values()), list(cifar_rows.values()), checks, first, pcfg,
                           ccfg, cpcfg, args, device, time.perf_counter() - started, argv)
    return emit(report, args.out)


if __name__ == "__main__":
    main()
