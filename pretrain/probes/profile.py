"""The invariance profile and headline figures as tables: one source for the model card
(Markdown) and ``pretrain show`` (terminal text)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pretrain.probes.plots import transforms_in

# Figures that sum an encoder up: copied onto the model version as tags (the full set stays in
# the run's metrics and in the model card's table).
HEADLINE = ("probe/linear_top1", "probe/knn_top1", "probe/health/rankme",
            "probe/health/collapsed_frac")
HEADLINE_LABELS = {"probe/linear_top1": "linear probe top-1", "probe/knn_top1": "kNN top-1",
                   "probe/health/rankme": "RankMe (effective rank)",
                   "probe/health/collapsed_frac": "collapsed dimensions"}


_SERIES = ("probe/invariance/", "probe/equivariance_r2/", "probe/equivariance_r2_mlp/")


@dataclass(frozen=True)
class ProfileRow:
    transform: str
    invariance: float
    r2_ridge: float
    r2_mlp: float


def profile_rows(metrics: dict[str, float]) -> list[ProfileRow]:
    """Per transformation (canonical order): invariance s_T and equivariance R^2 (ridge, MLP)."""
    def value(key: str) -> float:
        return float(metrics.get(key, math.nan))

    # A NaN is not logged to MLflow, so a transformation may have an R^2 but no invariance.
    named = {f"probe/invariance/{k.rsplit('/', 1)[1]}": 0.0 for k in metrics
             if k.startswith(_SERIES)}
    return [ProfileRow(t, value(f"probe/invariance/{t}"), value(f"probe/equivariance_r2/{t}"),
                       value(f"probe/equivariance_r2_mlp/{t}")) for t in transforms_in(named)]


def headline(metrics: dict[str, float]) -> dict[str, float]:
    """The headline figures present in ``metrics``, in :data:`HEADLINE` order."""
    return {k: float(metrics[k]) for k in HEADLINE if k in metrics}


def headline_tags(metrics: dict[str, float]) -> dict[str, str]:
    """Headline figures as model-version tags (4 decimals; NaN left out)."""
    return {k: f"{v:.4f}" for k, v in headline(metrics).items() if not math.isnan(v)}


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def profile_markdown(rows: list[ProfileRow]) -> str:
    lines = ["| transformation | invariance | equivariance R² (linear) | equivariance R² (MLP) |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r.transform} | {_fmt(r.invariance)} | {_fmt(r.r2_ridge)} | {_fmt(r.r2_mlp)} |"
              for r in rows]
    return "\n".join(lines)


def profile_text(rows: list[ProfileRow]) -> str:
    width = max([len("transformation"), *(len(r.transform) for r in rows)])
    lines = [f"{'transformation':<{width}}  invariance  R² linear  R² MLP",
             f"{'-' * width}  ----------  ---------  ------"]
    lines += [f"{r.transform:<{width}}  {_fmt(r.invariance):>10}  {_fmt(r.r2_ridge):>9}  "
              f"{_fmt(r.r2_mlp):>6}" for r in rows]
    return "\n".join(lines)


def format_headline(value: float, key: str) -> str:
    if math.isnan(value):
        return "n/a"
    if key.endswith("_top1") or key.endswith("_frac"):
        return f"{100 * value:.1f}%"
    return f"{value:.1f}"
