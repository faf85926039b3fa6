"""PNG figures of probe metrics (matplotlib, Agg backend: no display needed).

- ``plot_invariance_profile``: one model; per transformation, its invariance score next to the
  equivariance R^2 of the ridge and MLP read-outs.
- ``plot_comparison``: several models; invariance (top) and equivariance R^2 (bottom) per
  transformation, one colour per model.

Bars are drawn on a fixed scale (-0.5 to 1) so that figures of different runs compare at a
glance; a value below the scale is drawn to its edge, hatched, and labelled with its true value.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from pretrain.probes.config import TRANSFORMS_2D, TRANSFORMS_3D  # noqa: E402

Y_MIN, Y_MAX = -0.5, 1.25  # headroom above 1 for the value labels
LABELS = {"crop": "random\nresized crop", "flip": "horizontal\nflip", "rotation": "rotation\n90°",
          "brightness": "brightness", "contrast": "contrast", "saturation": "saturation",
          "hue": "hue", "grayscale": "grayscale", "blur": "blur", "object_rotation":
          "3D object\nrotation", "object_hue": "3D object\nhue", "light": "3D light\ndirection"}
SERIES = (("probe/invariance/", "invariance $s_T$  (1 = ignores T)", "#3a6ea5"),
          ("probe/equivariance_r2/", "equivariance $R^2$, ridge  (T linearly readable)", "#e08a2c"),
          ("probe/equivariance_r2_mlp/", "equivariance $R^2$, MLP  (T readable)", "#4f9a55"))
MODEL_COLOURS = ("#3a6ea5", "#e08a2c", "#4f9a55", "#b2474a", "#7b5ea7", "#8c6d4f", "#d17ab8",
                 "#6b6b6b")


def transforms_in(metrics: dict[str, float]) -> list[str]:
    """Transformations with an invariance score, in the canonical order (2D, then 3D)."""
    found = {k.removeprefix("probe/invariance/") for k in metrics if k.startswith("probe/invariance/")}
    known = [t for t in (*TRANSFORMS_2D, *TRANSFORMS_3D) if t in found]
    return known + sorted(found - set(known))


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def _bars(ax: Axes, x: list[float], values: list[float], width: float, colour: str,
          annotate: bool) -> None:
    def finite(v: float | None) -> bool:
        return v is not None and not math.isnan(v)

    shown = [max(v, Y_MIN) if finite(v) else 0.0 for v in values]
    bars = ax.bar(x, shown, width, color=colour, edgecolor="white", linewidth=0.5)
    for bar, value in zip(bars, values):
        centre = bar.get_x() + bar.get_width() / 2
        if finite(value) and value < Y_MIN:
            bar.set_hatch("////")
            ax.text(centre, Y_MIN + 0.02, _fmt(value), ha="center", va="bottom", fontsize=7,
                    rotation=90, fontweight="bold", color="#222222",
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "linewidth": 0})
        elif annotate:
            top = bar.get_height()
            ax.text(centre, top + 0.02 if top >= 0 else top - 0.02, _fmt(value), ha="center",
                    va="bottom" if top >= 0 else "top", fontsize=7, rotation=90,
                    color="#222222")


def _legend(ax: Axes, entries: list[tuple[str, str]], ncol: int, anchor_y: float) -> None:
    handles = [Patch(facecolor=colour, label=label) for label, colour in entries]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, anchor_y), ncol=ncol,
              fontsize=9, frameon=False)


def _axes_style(ax: Axes, names: list[str], ylabel: str) -> None:
    ax.set_xticks(range(len(names)), [LABELS.get(n, n) for n in names], fontsize=9)
    ax.set_ylim(Y_MIN, Y_MAX)
    ax.set_yticks([-0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel(ylabel, fontsize=10)
    ax.axhline(0.0, color="#444444", linewidth=0.8)
    ax.axhline(1.0, color="#999999", linewidth=0.8, linestyle=":")
    ax.grid(axis="y", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    n3d = sum(n in TRANSFORMS_3D for n in names)
    if 0 < n3d < len(names):
        split = len(names) - n3d - 0.5
        ax.axvline(split, color="#999999", linewidth=0.8, linestyle="--")
        ax.text(split + 0.1, 1.0, "3D scene changes (re-rendered) →", fontsize=8,
                color="#666666", va="bottom", transform=ax.get_xaxis_transform())


def _summary(metrics: dict[str, float]) -> str:
    parts = []
    if "probe/linear_top1" in metrics:
        parts.append(f"linear top-1 {100 * metrics['probe/linear_top1']:.1f}%")
    if "probe/knn_top1" in metrics:
        parts.append(f"kNN top-1 {100 * metrics['probe/knn_top1']:.1f}%")
    if "probe/health/rankme" in metrics:
        parts.append(f"RankMe {metrics['probe/health/rankme']:.1f}")
    return "  ·  ".join(parts)


def plot_invariance_profile(metrics: dict[str, float], path: str | Path, *,
                            title: str = "Invariance profile", subtitle: str = "") -> Path:
    """Write the invariance-profile PNG of one probe pass to ``path``; returns ``path``."""
    names = transforms_in(metrics)
    series = [s for s in SERIES if any(f"{s[0]}{n}" in metrics for n in names)]
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.05 * len(names) + 2.0), 5.2), dpi=120)
    for i, (prefix, label, colour) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        _bars(ax, xs, [metrics.get(f"{prefix}{n}", math.nan) for n in names], width, colour,
              annotate=True)
    _axes_style(ax, names, "score")
    _legend(ax, [(label, colour) for _, label, colour in series], len(series), -0.16)
    lines = [line for line in (subtitle, _summary(metrics)) if line]
    fig.suptitle(title, fontsize=13, fontweight="bold", y=0.98)
    if lines:
        ax.set_title("\n".join(lines), fontsize=9, color="#444444")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def plot_comparison(models: dict[str, dict[str, float]], path: str | Path, *,
                    title: str = "Invariance profiles compared") -> Path:
    """Write one PNG comparing several models (``label -> metrics``): invariance on top,
    equivariance R^2 (MLP read-out where present, else ridge) below."""
    names: list[str] = []
    for metrics in models.values():
        names += [n for n in transforms_in(metrics) if n not in names]
    names = [t for t in (*TRANSFORMS_2D, *TRANSFORMS_3D) if t in names] + \
        [n for n in names if n not in (*TRANSFORMS_2D, *TRANSFORMS_3D)]
    use_mlp = all(any(k.startswith("probe/equivariance_r2_mlp/") for k in m) for m in models.values())
    eq_prefix = "probe/equivariance_r2_mlp/" if use_mlp else "probe/equivariance_r2/"
    width = 0.8 / max(len(models), 1)
    fig, axes = plt.subplots(2, 1, figsize=(max(9.0, 1.1 * len(names) + 2.5), 8.5), dpi=120,
                             sharex=True)
    annotate = len(models) <= 3
    entries = []
    for i, (label, metrics) in enumerate(models.items()):
        colour = MODEL_COLOURS[i % len(MODEL_COLOURS)]
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(names))]
        summary = _summary(metrics)
        entries.append((f"{label}  ({summary})" if summary else label, colour))
        _bars(axes[0], xs, [metrics.get(f"probe/invariance/{n}", math.nan) for n in names],
              width, colour, annotate)
        _bars(axes[1], xs, [metrics.get(f"{eq_prefix}{n}", math.nan) for n in names], width,
              colour, annotate)
    _axes_style(axes[0], names, "invariance $s_T$\n(1 = ignores T)")
    _axes_style(axes[1], names, f"equivariance $R^2$ ({'MLP' if use_mlp else 'ridge'})\n"
                "(1 = T readable)")
    axes[0].tick_params(labelbottom=True)
    _legend(axes[1], entries, 1, -0.22)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out
