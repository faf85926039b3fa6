"""Figures over training seeds: mean ± sd cells, and verdicts that hold beyond the seed spread.

A claim is a per-seed *margin*, a number that is positive when the claim holds for that seed
(e.g. ``R²_SIE − R²_VICReg − 0.15``), computed from runs that share a seed, so the spread of
the margin is the spread of the paired difference. The verdict is **yes** only when the mean margin
is larger than twice its standard deviation over seeds, **no** when it is below minus twice that
(or exactly tied on every seed), and **no (within seed noise)** in between; with a single seed
there is no spread, so no verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

SeedValues = dict[int, float]  # seed -> value of one metric


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for fewer than two values)."""
    if not values:
        raise ValueError("mean_sd needs at least one value")
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) >= 2 else None)


def cell(values: Sequence[float | None], *, percent: bool = False, digits: int = 3) -> str:
    """``mean ± sd`` as a table cell (``60.0 ± 10.0%`` for percentages); just the mean for one
    value; '—' when nothing was measured."""
    present = [v for v in values if v is not None]
    if not present:
        return "—"
    scale, digits, unit = (100.0, 1, "%") if percent else (1.0, digits, "")
    mean, sd = mean_sd(present)
    text = f"{scale * mean:.{digits}f}"
    return text + unit if sd is None else f"{text} ± {scale * sd:.{digits}f}{unit}"


def verdict(margins: Sequence[float]) -> str:
    """``yes`` / ``no`` / ``no (within seed noise)`` / ``n/a (one seed)`` for per-seed margins."""
    mean, sd = mean_sd(margins)
    if sd is None:
        return "n/a (one seed)"
    if mean > 2.0 * sd:
        return "yes"
    # An exact tie on every seed (sd 0, mean 0) is a plain no, not noise.
    return "no" if mean < -2.0 * sd or sd == 0.0 else "no (within seed noise)"


def paired(series: Sequence[SeedValues | None]) -> list[tuple[float, ...]] | None:
    """Per seed, the values of every series that has that seed (``None`` if a series is missing
    or no seed is shared)."""
    if any(s is None for s in series):
        return None
    seeds = sorted(set.intersection(*(set(s) for s in series)))  # type: ignore[arg-type]
    if not seeds:
        return None
    return [tuple(s[k] for s in series) for k in seeds]  # type: ignore[index]


def decide(text: str, series: Sequence[SeedValues | None], margin: Callable[..., float],
           detail: Callable[..., str], precondition: Callable[..., float] | None = None) -> str:
    """A markdown line ``- text: **verdict** (detail; margin mean ± sd over n seeds)``.

    ``margin(*values)`` is the per-seed margin; ``detail(*means)`` describes the means of the
    series. ``precondition(*values)``, when given, must itself be positive beyond twice its seed
    spread, or the claim is n/a (e.g. no advantage to lose)."""
    rows = paired(series)
    if rows is None or any(math.isnan(v) for row in rows for v in row):
        return f"- {text}: **n/a** (not run)"
    means = [statistics.fmean(col) for col in zip(*rows)]
    margins = [margin(*row) for row in rows]
    m, sd = mean_sd(margins)
    spread = f"margin {m:+.3f}" + ("" if sd is None else f" ± {sd:.3f}") + f", {len(rows)} seed" \
        + ("s" if len(rows) != 1 else "")
    if precondition is not None and verdict([precondition(*row) for row in rows]) != "yes":
        return f"- {text}: **n/a** ({detail(*means)}; precondition not met beyond seed noise)"
    return f"- {text}: **{verdict(margins)}** ({detail(*means)}; {spread})"
