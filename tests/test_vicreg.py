"""VICReg loss against loop-based formulas of the paper, known answers, and the module."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from augment.batch import ViewBatch
from objectives.heads import expander
from objectives.vicreg import (
    VICReg,
    VICRegConfig,
    covariance_term,
    invariance_term,
    variance_term,
    vicreg_loss,
)

# ---------------------------------------------------------------- loop references (paper)


def _loop_invariance(a: list[list[float]], b: list[list[float]]) -> float:
    """Eq. (5), averaged over rows and dimensions."""
    n, d = len(a), len(a[0])
    total = 0.0
    for i in range(n):
        for j in range(d):
            total += (a[i][j] - b[i][j]) ** 2
    return total / (n * d)


def _loop_column_means(z: list[list[float]]) -> list[float]:
    n, d = len(z), len(z[0])
    return [sum(z[i][j] for i in range(n)) / n for j in range(d)]


def _loop_variance(z: list[list[float]], gamma: float, eps: float) -> float:
    """Eqs. (1)-(2) with the unbiased variance."""
    n, d = len(z), len(z[0])
    means = _loop_column_means(z)
    total = 0.0
    for j in range(d):
        var = sum((z[i][j] - means[j]) ** 2 for i in range(n)) / (n - 1)
        total += max(0.0, gamma - math.sqrt(var + eps))
    return total / d


def _loop_covariance(z: list[list[float]]) -> float:
    """Eqs. (3)-(4): squared off-diagonal covariances (1/(n-1)), summed, divided by d."""
    n, d = len(z), len(z[0])
    means = _loop_column_means(z)
    total = 0.0
    for j in range(d):
        for k in range(d):
            if j == k:
                continue
            cov = sum((z[i][j] - means[j]) * (z[i][k] - means[k]) for i in range(n)) / (n - 1)
            total += cov**2
    return total / d


def _rand(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------- terms vs loops


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_terms_match_loop_formulas(seed: int) -> None:
    z_a, z_b = _rand(8, 5, seed) * 0.7, _rand(8, 5, seed + 100) * 0.7 + 0.3
    a, b = z_a.tolist(), z_b.tolist()
    assert invariance_term(z_a, z_b).item() == pytest.approx(_loop_invariance(a, b), rel=1e-12)
    for gamma, eps in [(1.0, 1e-4), (0.5, 1e-2)]:
        got = variance_term(z_a, gamma=gamma, eps=eps).item()
        assert got == pytest.approx(_loop_variance(a, gamma, eps), rel=1e-12)
        assert got > 0  # std 0.7 < gamma=1: the hinge is active, so the check is not vacuous
    assert covariance_term(z_a).item() == pytest.approx(_loop_covariance(a), rel=1e-12)


@pytest.mark.parametrize(
    ("coeffs", "gamma", "eps"),
    [((25.0, 25.0, 1.0), 1.0, 1e-4), ((2.0, 3.0, 5.0), 0.8, 1e-3)],
)
def test_total_matches_loop_formula(
    coeffs: tuple[float, float, float], gamma: float, eps: float
) -> None:
    sim, std, cov = coeffs
    z_a, z_b = _rand(8, 5, 7) * 0.6, _rand(8, 5, 8) * 0.6
    a, b = z_a.tolist(), z_b.tolist()
    out = vicreg_loss(z_a, z_b, sim_coeff=sim, std_coeff=std, cov_coeff=cov, gamma=gamma, eps=eps)
    inv = _loop_invariance(a, b)
    var = (_loop_variance(a, gamma, eps) + _loop_variance(b, gamma, eps)) / 2  # official halving
    covariance = _loop_covariance(a) + _loop_covariance(b)
    assert out["invariance"].item() == pytest.approx(inv, rel=1e-12)
    assert out["variance"].item() == pytest.approx(var, rel=1e-12)
    assert out["covariance"].item() == pytest.approx(covariance, rel=1e-12)
    assert out["total"].item() == pytest.approx(sim * inv + std * var + cov * covariance, rel=1e-12)
    assert set(out) == {"invariance", "variance", "covariance", "total"}


def test_half_precision_inputs_are_computed_in_float32() -> None:
    z_a, z_b = _rand(8, 5, 3), _rand(8, 5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vicreg_loss(z_a.bfloat16(), z_b.bfloat16())
    # The reference: the float32 loss of exactly the rounded inputs. Only float32 arithmetic
    # may differ from it (a version computing in bf16 would be off by ~1e-3 relative).
    rounded = vicreg_loss(z_a.bfloat16().float(), z_b.bfloat16().float())
    assert out["total"].dtype == torch.float32
    for term in ("invariance", "variance", "covariance", "total"):
        assert out[term].item() == pytest.approx(rounded[term].item(), rel=1e-6), term


# ---------------------------------------------------------------- known answers


def test_identical_embeddings_have_zero_invariance() -> None:
    z = _rand(8, 5, 11)
    assert vicreg_loss(z, z.clone())["invariance"].item() == 0.0


def test_wide_embeddings_have_zero_variance_term() -> None:
    z = _rand(8, 5, 12)
    z = (z - z.mean(0)) / z.std(0) * 1.5  # every dimension has std exactly 1.5 >= gamma
    assert variance_term(z, gamma=1.0, eps=1e-4).item() == 0.0


def test_collapsed_embeddings_have_maximal_variance_term() -> None:
    z = torch.full((8, 5), 3.0, dtype=torch.float64)
    assert variance_term(z, gamma=1.0, eps=1e-4).item() == pytest.approx(1.0 - math.sqrt(1e-4))


def test_whitened_batch_has_zero_covariance_and_variance() -> None:
    n, d = 8, 5
    x = _rand(n, d, 13)
    # Orthonormal columns spanning the centred data are themselves zero-mean; scaling by
    # sqrt(n-1) makes the unbiased covariance exactly the identity.
    q, _ = torch.linalg.qr(x - x.mean(0))
    z = q * math.sqrt(n - 1)
    assert covariance_term(z).item() == pytest.approx(0.0, abs=1e-20)
    assert variance_term(z, gamma=1.0, eps=1e-4).item() == 0.0
    # Correlating two dimensions must show up: the check can fail.
    z_corr = z.clone()
    z_corr[:, 1] = z[:, 0]
    assert covariance_term(z_corr).item() == pytest.approx(_loop_covariance(z_corr.tolist()))
    assert covariance_term(z_corr).item() > 0.1


def test_invalid_shapes_raise() -> None:
    with pytest.raises(ValueError):
        vicreg_loss(_rand(8, 5, 0), _rand(8, 4, 1))
    with pytest.raises(ValueError):
        variance_term(_rand(1, 5, 0))


# ---------------------------------------------------------------- config, heads, module


def test_config_defaults_and_extra_forbid() -> None:
    cfg = VICRegConfig()
    assert cfg.expander_dims == [2048, 2048, 2048]
    coeffs = (cfg.sim_coeff, cfg.std_coeff, cfg.cov_coeff, cfg.gamma, cfg.eps)
    assert coeffs == (25.0, 25.0, 1.0, 1.0, 1e-4)
    with pytest.raises(ValidationError, match="not_a_key"):
        VICRegConfig(not_a_key=1)
    with pytest.raises(ValidationError):
        VICRegConfig(expander_dims=[])


def test_expander_structure() -> None:
    head = expander(12, [16, 16, 7])
    kinds = [type(m) for m in head]
    block = [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert kinds == block + block + [nn.Linear]
    assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [16, 16, 7]
    assert head[-1].bias is None
    assert head(torch.randn(4, 12)).shape == (4, 7)
    assert [type(m) for m in expander(12, [7])] == [nn.Linear]


class _CountingEncoder(nn.Module):
    """Small conv encoder that records the batch size of every call."""

    def __init__(self, num_features: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_features, 3, padding=1)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.conv(x).mean(dim=(2, 3))


def _views(b: int, size: int, seed: int) -> ViewBatch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(b, 3, size, size, generator=g) for _ in range(2)]
    return ViewBatch(views=views, params=[{}, {}])


def test_module_encodes_once_and_gradient_reaches_encoder() -> None:
    torch.manual_seed(0)
    encoder = _CountingEncoder(6)
    cfg = VICRegConfig(expander_dims=[16, 8])
    model = VICReg(cfg, encoder, num_features=6)
    batch = _views(4, 8, 1)
    out = model(batch)
    assert encoder.calls == [8]  # both views, one call
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert encoder.conv.weight.grad.abs().sum() > 0


def test_module_forward_with_timm_resnet() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    encoder = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    cfg = VICRegConfig(expander_dims=[32, 32, 16])
    model = VICReg(cfg, encoder, num_features=encoder.num_features)
    assert model.name == "vicreg" and model.view_recipe == "vicreg"
    b = 4
    out = model(_views(b, 32, 2))
    assert out.loss.ndim == 0 and out.loss.requires_grad
    assert set(out.terms) == {"invariance", "variance", "covariance"}
    for term in out.terms.values():
        assert term.ndim == 0 and not term.requires_grad
    assert out.embeddings["backbone"].shape == (b, encoder.num_features)
    assert out.embeddings["projection"].shape == (b, 16)
    assert not any(e.requires_grad for e in out.embeddings.values())
    t = out.terms
    expected = (cfg.sim_coeff * t["invariance"] + cfg.std_coeff * t["variance"]
                + cfg.cov_coeff * t["covariance"])
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    out.loss.backward()
    assert encoder.conv1[0].weight.grad.abs().sum() > 0
