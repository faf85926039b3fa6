"""Invariance per transformation: how little T moves a representation, relative to a swap.

    s_T = (mean_i cos(f(x_i), f(T x_i)) - b) / (1 - b),
    b   = mean_{i != j} cos(f(x_i), f(x_j))

1 means f is exactly invariant to T, 0 means T moves f(x) as far (in cosine) as replacing the
image by another one, negative means further. Pure functions over feature tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def mean_pair_cosine(a: Tensor, b: Tensor) -> float:
    """Mean over rows of cos(a_i, b_i) (zero rows count as cosine 0)."""
    if a.shape[0] == 0:
        return float("nan")
    return float(F.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12).mean())


def mean_cross_cosine(z: Tensor) -> float:
    """Mean cosine between representations of different rows, over all ordered pairs i != j.

    Uses sum_{i != j} <u_i, u_j> = |sum_i u_i|^2 - sum_i |u_i|^2 for unit rows u, so it costs
    O(N D) instead of O(N^2 D)."""
    n = z.shape[0]
    if n < 2:
        return float("nan")
    u = F.normalize(z.double(), dim=1, eps=1e-12)
    total = u.sum(dim=0)
    off_diagonal = total.dot(total) - (u * u).sum()
    return float(off_diagonal / (n * (n - 1)))


def invariance_score(fx: Tensor, ftx: Tensor, baseline: float) -> float:
    """s_T from paired features ``fx``, ``ftx`` (``N x D``) and the different-image baseline
    ``b``; NaN when ``b`` is (numerically) 1, i.e. the representation has collapsed."""
    if not 1.0 - baseline > 1e-9:
        return float("nan")
    return (mean_pair_cosine(fx, ftx) - baseline) / (1.0 - baseline)


def invariance_scores(fx: Tensor, transformed: dict[str, tuple[Tensor, Tensor]],
                      baseline: float | None = None) -> dict[str, float]:
    """s_T for each ``name -> (f(T x), changed mask)`` sharing the originals ``fx``; only rows
    that T changed enter the mean. ``baseline`` defaults to ``mean_cross_cosine(fx)``."""
    b = mean_cross_cosine(fx) if baseline is None else baseline
    out = {}
    for name, (ftx, changed) in transformed.items():
        rows = torch.nonzero(changed, as_tuple=True)[0]
        out[name] = invariance_score(fx[rows], ftx[rows], b) if rows.numel() else math.nan
    return out
