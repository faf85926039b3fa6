"""SIE: hypernetwork predictor and loss against loops, known answers, the split, the objective."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from augment import AugmentConfig, ViewAugmenter
from augment.quaternion import random_quaternion
from objectives.sie import SIE, SIEConfig, hypernetwork_predict, init_basis, sie_loss, split_widths


def test_predictor_matches_a_loop_over_the_basis() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, generator=g, dtype=torch.float64)
    actions = torch.randn(3, 2, generator=g, dtype=torch.float64)
    basis = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)
    got = hypernetwork_predict(z, actions, basis)
    for n in range(3):
        w = sum(actions[n, k] * basis[k] for k in range(2))
        for i in range(4):
            expected = sum(float(w[i, j]) * float(z[n, j]) for j in range(4))
            assert got[n, i].item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_identity_rotation_and_identity_first_basis_matrix_predict_z_exactly() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 6, generator=g)
    basis = torch.randn(4, 6, 6, generator=g)
    basis[0] = torch.eye(6)
    identity = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(5, -1)  # canonical [w, x, y, z]
    assert torch.equal(hypernetwork_predict(z, identity, basis), z)


def _variance(z: torch.Tensor) -> float:
    n, d = z.shape
    total = 0.0
    for j in range(d):
        mean = sum(float(z[i, j]) for i in range(n)) / n
        var = sum((float(z[i, j]) - mean) ** 2 for i in range(n)) / (n - 1)
        total += max(0.0, 1.0 - math.sqrt(var + 1e-4))
    return total / d


def _covariance(z: torch.Tensor) -> float:
    n, d = z.shape
    means = [sum(float(z[i, j]) for i in range(n)) / n for j in range(d)]
    total = 0.0
    for j in range(d):
        for k in range(d):
            if j != k:
                c = sum((float(z[i, j]) - means[j]) * (float(z[i, k]) - means[k]) for i in range(n))
                total += (c / (n - 1)) ** 2
    return total / d


def test_loss_matches_the_formula_written_out() -> None:
    g = torch.Generator().manual_seed(2)
    inv_a, inv_b, equi_a, equi_b, pred = (
        0.7 * torch.randn(6, d, generator=g, dtype=torch.float64) for d in (3, 3, 2, 2, 2))
    out = sie_loss(inv_a, inv_b, equi_a, equi_b, pred)
    mse_inv = float(((inv_a - inv_b) ** 2).sum()) / inv_a.numel()
    mse_equi = float(((pred - equi_b) ** 2).sum()) / pred.numel()
    z_a, z_b = torch.cat([inv_a, equi_a], 1), torch.cat([inv_b, equi_b], 1)
    v = (_variance(z_a) + _variance(z_b)) / 2
    vp = _variance(pred) / 2
    c = _covariance(z_a) + _covariance(z_b)
    for key, value in [("invariance", mse_inv), ("equivariance", mse_equi), ("variance", v),
                       ("pred_variance", vp), ("covariance", c)]:
        assert out[key].item() == pytest.approx(value, rel=1e-9), key
    expected = 10 * mse_inv + 4.5 * mse_equi + 10 * (v + vp) + 1 * c
    assert out["total"].item() == pytest.approx(expected, rel=1e-9)
    no_var = sie_loss(inv_a, inv_b, equi_a, equi_b, pred, pred_variance=False)["total"]
    assert no_var.item() == pytest.approx(expected - 10 * vp, rel=1e-9)


def test_defaults_take_the_readme_weight_and_split_widths_like_the_official_code() -> None:
    cfg = SIEConfig()
    assert (cfg.sim_coeff, cfg.equi_coeff, cfg.std_coeff, cfg.cov_coeff) == (10.0, 4.5, 10.0, 1.0)
    assert split_widths([2048, 2048, 2048], 256, 512) == [1024, 1024, 1024]
    assert split_widths([100], 1, 3) == [33]


def _pair_batch(batch: int = 6, size: int = 16, same_pose: bool = False):
    images = torch.randint(0, 256, (batch, 2, 3, size, size), dtype=torch.uint8)
    q = random_quaternion(batch * 2, torch.Generator().manual_seed(3)).view(batch, 2, 4)
    if same_pose:
        q[:, 1] = q[:, 0]
    latents = {"quaternion": q, "object_hue": torch.rand(batch, 2), "background_hue": torch.rand(batch, 2)}
    augmenter = ViewAugmenter(AugmentConfig(recipe="pair", source="distinct"), (0.5,) * 3, (0.25,) * 3, size)
    return augmenter(images, torch.Generator().manual_seed(0), latents=latents)


def test_same_pose_gives_the_identity_action() -> None:
    g = _pair_batch(same_pose=True).relative["rotation"][:, 0]
    torch.testing.assert_close(g, torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(6, -1))


def test_forward_backward_split_and_embeddings() -> None:
    torch.manual_seed(0)
    batch = _pair_batch()
    encoder = timm.create_model("test_resnet", num_classes=0)
    features = encoder.num_features
    model = SIE(SIEConfig(expander_dims=[16, 16]), encoder, features)
    assert model.view_recipe == "pair" and model.basis.shape == (4, 8, 8)
    out = model(batch)
    out.loss.backward()
    half = features // 2
    emb = out.embeddings
    torch.testing.assert_close(emb["invariant"], emb["backbone"][:, :half])
    torch.testing.assert_close(emb["equivariant"], emb["backbone"][:, half:])  # the last half
    assert emb["projection_inv"].shape == emb["projection_equi"].shape == (6, 8)
    assert set(out.terms) == {"invariance", "equivariance", "variance", "pred_variance", "covariance"}
    assert model.basis.grad.abs().sum() > 0 and all(not t.requires_grad for t in out.terms.values())


def test_uneven_split_and_missing_action() -> None:
    encoder = timm.create_model("test_resnet", num_classes=0)
    model = SIE(SIEConfig(equivariant_dims=32, expander_dims=[12], action="rotation_hue"), encoder,
                encoder.num_features)
    assert (model.inv_dims, model.equi_dims) == (encoder.num_features - 32, 32)
    assert model.basis.shape == (6, 4, 4)
    with pytest.raises(ValueError, match="equivariant_dims"):
        SIE(SIEConfig(equivariant_dims=encoder.num_features), encoder, encoder.num_features)
    batch = _pair_batch()
    batch.relative = {"augment": batch.relative["augment"]}
    with pytest.raises(ValueError, match="objective sie: needs the relative transform 'rotation_hue'"):
        model(batch)


@pytest.mark.parametrize(("how", "bound"), [("official", 0.5), ("scaled", 0.5 / 8.0), ("zero", 0.0)])
def test_basis_init_bounds(how: str, bound: float) -> None:
    """K = 4 actions, d = 64: official U(+-1/sqrt(K)), scaled U(+-1/sqrt(K d)), zero."""
    torch.manual_seed(0)
    basis = init_basis(4, 64, how)
    assert basis.shape == (4, 64, 64)
    assert float(basis.abs().max()) <= bound
    assert float(basis.abs().max()) >= 0.99 * bound  # the bound is reached, not a smaller one
    with pytest.raises(ValueError, match="basis_init"):
        init_basis(4, 64, "xavier")


def test_module_basis_follows_the_config() -> None:
    encoder = timm.create_model("test_resnet", num_classes=0)
    d = encoder.num_features
    model = SIE(SIEConfig(basis_init="zero", expander_dims=[16, 16]), encoder, d)
    assert not model.basis.any()
    assert SIEConfig().basis_init == "scaled"
