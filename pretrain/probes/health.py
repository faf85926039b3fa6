"""Representation health: effective rank, collapsed dimensions, positive/negative cosines."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.probes.invariance import mean_cross_cosine, mean_pair_cosine


def rankme(z: Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023, eq. 1): exp of the entropy of the normalised singular
    values, ``exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / ||sigma||_1 + eps``.

    Between 1 and min(N, D); about k for a rank-k matrix (exactly k when its k non-zero singular
    values are equal). ``z`` is used as given (not centred), as in the paper."""
    sigma = torch.linalg.svdvals(z.double())
    total = sigma.sum()
    if not total > 0:
        return 0.0
    p = sigma / total + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def collapsed_fraction(z: Tensor, threshold: float = 0.01) -> float:
    """Share of dimensions whose std over the rows is below ``threshold * s / sqrt(D)``, with
    ``s = sqrt(mean_i |z_i|^2)`` the root-mean-square row norm.

    ``s / sqrt(D)`` is the per-dimension std of isotropic features of that size, so
    ``threshold`` is a fraction of a healthy spread; the measure does not depend on the scale of
    ``z`` (one global scale, not per-row normalisation, so constant dimensions stay constant).
    Identical rows (complete collapse) give 1."""
    z = z.double()
    n, d = z.shape
    scale = z.pow(2).sum(dim=1).mean().sqrt()
    if n < 2 or not scale > 0:
        return 1.0
    std = z.std(dim=0, unbiased=True)
    return float((std < threshold * scale / d ** 0.5).double().mean())


def pair_cosines(z1: Tensor, z2: Tensor) -> tuple[float, float]:
    """(mean positive-pair cosine, mean negative-pair cosine) of two views' embeddings ``B x D``:
    positives are rows ``(z1_i, z2_i)``, negatives all ``(z1_i, z2_j)`` with ``i != j``.
    Usable on training embeddings (e.g. ``LossOutput.embeddings``) as well."""
    n = z1.shape[0]
    u1 = F.normalize(z1.double(), dim=1, eps=1e-12)
    u2 = F.normalize(z2.double(), dim=1, eps=1e-12)
    pos = mean_pair_cosine(z1, z2)
    if n < 2:
        return pos, float("nan")
    cross = u1.sum(0).dot(u2.sum(0)) - (u1 * u2).sum()
    return pos, float(cross / (n * (n - 1)))


def health_metrics(z: Tensor, threshold: float = 0.01, eps: float = 1e-7) -> dict[str, float]:
    """``rankme``, ``collapsed_frac`` and ``neg_cos`` (mean cosine of different rows) of ``z``."""
    return {"rankme": rankme(z, eps), "collapsed_frac": collapsed_fraction(z, threshold),
            "neg_cos": mean_cross_cosine(z)}
