"""Known answers of the equivariance read-outs at the size the fidelity suite probes.

Pairs ``[f(x), f(Tx)]`` of two 512-d features, 2,048 training and 1,024 held-out rows, with the
regressors' settings from ``ProbesConfig``'s defaults. Three settings whose answer is known:

(a) the target sits *linearly* in both halves at a low signal-to-noise ratio, where ridge reads
    R^2 0.1-0.3: an MLP contains every linear map, so the MLP read-out must read at least what
    ridge reads (the estimator that issue 10's tables showed at the mean predictor, R^2 -0.001,
    while ridge read 0.03-0.11, failed exactly this);
(b) the target is the *relative angle* of two orientations, one per half (bilinear in the two
    halves): ridge cannot read it, the MLP must;
(c) the target is independent of the features: both must read about 0, never far below.
"""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.probes.config import ProbesConfig
from pretrain.probes.equivariance import equivariance_scores

pytestmark = pytest.mark.usefixtures("one_thread")

N_TRAIN, N_TEST, DIMS = 2048, 1024, 512


def embedded(content: torch.Tensor, noise: float, g: torch.Generator) -> torch.Tensor:
    """``content`` (n x k) mixed into ``DIMS`` features by a random map, plus isotropic noise."""
    mixing = torch.randn(content.shape[1], DIMS, generator=g) / math.sqrt(content.shape[1])
    return content @ mixing + noise * torch.randn(content.shape[0], DIMS, generator=g)


def scores(x: torch.Tensor, y: torch.Tensor):
    cfg = ProbesConfig()
    return equivariance_scores(
        x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:], alphas=cfg.ridge_alphas,
        mlp_hidden=cfg.mlp_hidden, mlp_steps=cfg.mlp_steps, mlp_lr=cfg.mlp_lr,
        mlp_weight_decay=cfg.mlp_weight_decay, seed=0)


def test_mlp_reads_a_weak_linear_target_at_least_as_well_as_ridge():
    g = torch.Generator().manual_seed(10)
    n = N_TRAIN + N_TEST
    y = torch.randn(n, 4, generator=g)
    # Each view's features: the 4 target values and 8 nuisance factors, buried in noise.
    halves = [embedded(torch.cat((y, torch.randn(n, 8, generator=g)), 1), 12.0, g)
              for _ in range(2)]
    s = scores(torch.cat(halves, 1), y)
    assert 0.1 < s.r2 < 0.3, s  # the low-SNR regime the setting is meant to be
    assert s.r2_mlp >= s.r2 - 0.01, s


def test_mlp_reads_a_relative_angle_that_ridge_cannot():
    g = torch.Generator().manual_seed(11)
    n = N_TRAIN + N_TEST
    angles = torch.rand(2, n, generator=g) * 2 * math.pi
    halves = [embedded(torch.cat((torch.stack((a.cos(), a.sin()), 1),
                                 torch.randn(n, 6, generator=g)), 1) * 3.0, 2.0, g)
              for a in angles]
    turn = angles[1] - angles[0]
    s = scores(torch.cat(halves, 1), torch.stack((turn.cos(), turn.sin()), 1))
    assert s.r2 < 0.05, s  # bilinear in the two halves: no linear read-out
    assert s.r2_mlp > 0.8, s


def test_both_read_outs_read_nothing_from_unrelated_features():
    g = torch.Generator().manual_seed(12)
    n = N_TRAIN + N_TEST
    x = embedded(torch.randn(n, 64, generator=g), 0.5, g)
    s = scores(torch.cat((x, x.roll(1, 0)), 1), torch.randn(n, 4, generator=g))
    assert abs(s.r2) < 0.02, s
    assert abs(s.r2_mlp) < 0.02, s
