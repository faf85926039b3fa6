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
    """Share of dimensions whose std over L2-normalised rows is below ``threshold / sqrt(D)``.

    ``1 / sqrt(D)`` is the per-dimension std of isotropic unit vectors, so ``threshold`` is a
    fraction of the healthy spread, independent of the width ``D``."""
    u = F.normalize(z.double(), dim=1, eps=1e-12)
    std = u.std(dim=0, unbiased=True) if u.shape[0] > 1 else torch.zeros(u.shape[1])
    return float((std < threshold / u.shape[1] ** 0.5).double().mean())


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
