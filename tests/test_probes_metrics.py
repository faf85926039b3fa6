"""Probe metrics against direct, loop-based computations of their formulas and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pretrain.probes.equivariance import fit_mlp, fit_ridge, principal_projection, r2, r2_sie
from pretrain.probes.health import collapsed_fraction, pair_cosines, rankme
from pretrain.probes.invariance import invariance_score, mean_cross_cosine, mean_pair_cosine
from pretrain.probes.knn import knn_predict, knn_top1
from pretrain.probes.linear import linear_probe


pytestmark = pytest.mark.usefixtures("one_thread")


def _cos(a, b) -> float:
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def test_r2_estimators_match_their_formulas():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(30, 3, generator=g) * torch.tensor([1.0, 5.0, 0.2]) + torch.tensor([0.0, 3.0, -1.0])
    pred = y + 0.5 * torch.randn(30, 3, generator=g)
    rows, cols = y.tolist(), pred.tolist()
    per_output = []
    for j in range(3):
        mean_j = sum(r[j] for r in rows) / len(rows)
        ss_res = sum((r[j] - p[j]) ** 2 for r, p in zip(rows, cols))
        ss_tot = sum((r[j] - mean_j) ** 2 for r in rows)
        per_output.append(1 - ss_res / ss_tot)
    assert r2(y, pred) == pytest.approx(sum(per_output) / 3, abs=1e-12)
    grand = sum(sum(r) for r in rows) / (3 * len(rows))
    ss_res = sum((a - b) ** 2 for r, p in zip(rows, cols) for a, b in zip(r, p))
    ss_tot = sum((a - grand) ** 2 for r in rows for a in r)
    assert r2_sie(y, pred) == pytest.approx(1 - ss_res / ss_tot, abs=1e-12)
    # Outputs on different scales and offsets: the global mean makes SIE's variant larger here.
    assert r2_sie(y, pred) > r2(y, pred)
    assert r2(y, y) == 1.0 and r2_sie(y, y) == 1.0
    assert r2(y, y.mean(0, keepdim=True).expand_as(y)) == pytest.approx(0.0, abs=1e-12)


def test_r2_constant_output_follows_sklearn():
    y = torch.tensor([[1.0, 2.0], [1.0, 4.0], [1.0, 6.0]])
    exact_const = torch.tensor([[1.0, 2.0], [1.0, 4.0], [1.0, 6.0]])
    wrong_const = torch.tensor([[0.5, 2.0], [1.0, 4.0], [1.0, 6.0]])
    assert r2(y, exact_const) == 1.0
    assert r2(y, wrong_const) == pytest.approx(0.5)  # (0 + 1) / 2
    sklearn = pytest.importorskip("sklearn.metrics")
    assert r2(y, wrong_const) == pytest.approx(sklearn.r2_score(y.numpy(), wrong_const.numpy()))


def test_ridge_is_the_closed_form_solution():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = x @ torch.randn(5, 2, generator=g, dtype=torch.float64) + 0.1 * torch.randn(40, 2, generator=g, dtype=torch.float64)
    alpha = 3.0
    # Direct: standardise x, centre, solve the normal equations (Xs^T Xs + a I) W = Xs^T Yc.
    xn = x.numpy()
    xs = (xn - xn.mean(0)) / xn.std(0, ddof=1)
    yc = y.numpy() - y.numpy().mean(0)
    w = np.linalg.solve(xs.T @ xs + alpha * np.eye(5), xs.T @ yc)
    x_new = torch.randn(7, 5, generator=g, dtype=torch.float64)
    xs_new = (x_new.numpy() - xn.mean(0)) / xn.std(0, ddof=1)
    expected = xs_new @ w + y.numpy().mean(0)
    got = fit_ridge(x, y, [alpha])(x_new)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_ridge_picks_the_mean_when_inputs_carry_no_signal():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(100, 20, generator=g), torch.randn(100, 2, generator=g)
    x_test, y_test = torch.randn(60, 20, generator=g), torch.randn(60, 2, generator=g)
    pred = fit_ridge(x, y, [1e-2, 1.0, 1e5])(x_test)
    assert abs(r2(y_test, pred)) < 0.1


def test_mlp_reads_a_bilinear_target_that_ridge_cannot():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(400, 2, generator=g)
    b = torch.randn(400, 2, generator=g)
    x = torch.cat((a, b), 1)
    y = (a * b).sum(1, keepdim=True)  # a dot product: zero linear correlation with x
    mlp = fit_mlp(x[:300], y[:300], hidden=64, steps=400, seed=0)
    ridge = fit_ridge(x[:300], y[:300], [1e-2, 1.0, 100.0])
    assert r2(y[300:], mlp(x[300:])) > 0.9
    assert r2(y[300:], ridge(x[300:])) < 0.1
    # Seeded: the same fit twice gives the same predictions.
    again = fit_mlp(x[:300], y[:300], hidden=64, steps=400, seed=0)
    assert torch.equal(mlp(x[300:]), again(x[300:]))


def test_principal_projection_matches_the_covariance_eigenvectors():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, 6, generator=g) @ torch.randn(6, 6, generator=g)
    centred = (x - x.mean(0)).double()
    values, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending
    reference = centred @ vectors[:, [-1, -2, -3]]
    got = principal_projection(x, 3)(x).double()
    for k in range(3):  # each direction up to its sign
        sign = torch.sign((got[:, k] * reference[:, k]).sum())
        assert torch.allclose(got[:, k], sign * reference[:, k], atol=1e-3)


def test_mlp_on_principal_directions_reads_a_bilinear_target_hidden_in_many_dimensions():
    # [a, b] mixed into 300 dimensions, plus weak isotropic noise: the signal lives in the top
    # 4 principal directions, which the projection hands to the MLP.
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(1500, 2, generator=g), torch.randn(1500, 2, generator=g)
    x = torch.cat((a, b), 1) @ torch.randn(4, 300, generator=g)
    x = x + 0.3 * torch.randn(x.shape, generator=g)
    y = (a * b).sum(1, keepdim=True)
    mlp = fit_mlp(x[:1200], y[:1200], hidden=64, steps=400, seed=0, pca_dims=4)
    assert r2(y[1200:], mlp(x[1200:])) > 0.8


def test_knn_matches_a_loop():
    g = torch.Generator().manual_seed(4)
    train_x, test_x = torch.randn(50, 6, generator=g), torch.randn(15, 6, generator=g)
    train_y = torch.randint(0, 4, (50,), generator=g)
    k, t = 7, 0.07
    expected = []
    for q in test_x.tolist():
        sims = sorted(((_cos(q, r), int(c)) for r, c in zip(train_x.tolist(), train_y)),
                      reverse=True)[:k]
        votes = [0.0] * 4
        for s, c in sims:
            votes[c] += math.exp(s / t)
        expected.append(max(range(4), key=lambda c: (votes[c], -c)))
    got = knn_predict(train_x, train_y, test_x, k=k, temperature=t, chunk=4)
    assert got.tolist() == expected
    test_y = torch.tensor(expected)
    test_y[:5] = (test_y[:5] + 1) % 4
    assert knn_top1(train_x, train_y, test_x, test_y, k=k, temperature=t) == pytest.approx(10 / 15)


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(5)
    centres = 4.0 * torch.eye(5, 16)
    y = torch.randint(0, 5, (300,), generator=g)
    x = centres[y] + 0.5 * torch.randn(300, 16, generator=g)
    result = linear_probe(x[:200], y[:200], x[200:], y[200:], weight_decays=[1e-4, 1e-2])
    assert result.top1 == 1.0
    # Labels unrelated to the features: near chance (1/5), so the probe is not vacuous.
    shuffled = y[torch.randperm(300, generator=g)]
    chance = linear_probe(x[:200], shuffled[:200], x[200:], shuffled[200:], weight_decays=[1e-2])
    assert chance.top1 < 0.45


def test_rankme_of_rank_k_matrices():
    g = torch.Generator().manual_seed(6)
    for k in (1, 3, 8):
        q1, _ = torch.linalg.qr(torch.randn(200, k, generator=g, dtype=torch.float64))
        q2, _ = torch.linalg.qr(torch.randn(64, k, generator=g, dtype=torch.float64))
        assert rankme(q1 @ q2.T) == pytest.approx(k, abs=1e-3)  # equal singular values: exactly k
        z = torch.randn(500, k, generator=g) @ torch.randn(k, 64, generator=g)
        assert k - 0.6 < rankme(z) <= k + 1e-3


def test_rankme_matches_its_formula():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(30, 10, generator=g) * torch.linspace(0.1, 3.0, 10)
    sigma = np.linalg.svd(z.numpy().astype(np.float64), compute_uv=False)
    total = sum(sigma)
    entropy = 0.0
    for s in sigma:
        p = s / total + 1e-7
        entropy -= p * math.log(p)
    assert rankme(z, eps=1e-7) == pytest.approx(math.exp(entropy), rel=1e-9)


def test_collapsed_fraction_counts_flat_dimensions():
    g = torch.Generator().manual_seed(8)
    z = torch.randn(200, 10, generator=g)
    z[:, 7:] = 3.0 + 1e-6 * torch.randn(200, 3, generator=g)  # 3 of 10 dimensions collapsed
    assert collapsed_fraction(z, threshold=0.01) == pytest.approx(0.3)
    assert collapsed_fraction(torch.randn(200, 10, generator=g)) == 0.0


def test_cosine_helpers_match_loops():
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g)
    la, lb = a.tolist(), b.tolist()
    pos = sum(_cos(x, y) for x, y in zip(la, lb)) / 12
    cross_a = sum(_cos(la[i], la[j]) for i in range(12) for j in range(12) if i != j) / 132
    cross_ab = sum(_cos(la[i], lb[j]) for i in range(12) for j in range(12) if i != j) / 132
    assert mean_pair_cosine(a, b) == pytest.approx(pos, abs=1e-12)
    assert mean_cross_cosine(a) == pytest.approx(cross_a, abs=1e-12)
    assert pair_cosines(a, b) == pytest.approx((pos, cross_ab), abs=1e-12)
    assert invariance_score(a, b, cross_a) == pytest.approx((pos - cross_a) / (1 - cross_a))
    assert invariance_score(a, a, cross_a) == pytest.approx(1.0)
    assert math.isnan(invariance_score(a, b, 1.0))


def test_collapsed_fraction_is_scale_free_and_sees_complete_collapse():
    g = torch.Generator().manual_seed(10)
    z = torch.randn(100, 8, generator=g)
    z[:, :2] *= 1e-4
    assert collapsed_fraction(z) == collapsed_fraction(1e6 * z) == pytest.approx(0.25)
    assert collapsed_fraction(torch.ones(50, 8) * 2.0) == 1.0


def test_ridge_with_more_columns_than_rows_is_the_closed_form_solution():
    # The dual branch of the ridge path (columns > rows) against the normal equations.
    g = torch.Generator().manual_seed(6)
    x = torch.randn(12, 30, generator=g, dtype=torch.float64)
    y = torch.randn(12, 3, generator=g, dtype=torch.float64)
    alpha = 0.5
    xn = x.numpy()
    xs = (xn - xn.mean(0)) / xn.std(0, ddof=1)
    w = np.linalg.solve(xs.T @ xs + alpha * np.eye(30), xs.T @ (y.numpy() - y.numpy().mean(0)))
    x_new = torch.randn(5, 30, generator=g, dtype=torch.float64)
    expected = (x_new.numpy() - xn.mean(0)) / xn.std(0, ddof=1) @ w + y.numpy().mean(0)
    np.testing.assert_allclose(fit_ridge(x, y, [alpha])(x_new).numpy(), expected, rtol=1e-9,
                               atol=1e-9)
