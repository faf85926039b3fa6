"""Equivariance per transformation: how well T's parameters can be read from [f(x), f(Tx)].

Two regressors, both fitted on pairs from probe-train images and scored on pairs from probe-test
images (held-out objects for the 3D data): a closed-form ridge regressor (penalty chosen by
5-fold cross-validation) and a small MLP (seeded, full-batch Adam, early-stopped on a validation
slice). Both fall back to the mean predictor unless they beat it significantly on held-out rows
of the training pairs, so "no information about T" reads as R^2 near 0, not as a large negative
number produced by fitting noise.
A linear read-out cannot recover relative quantities such as the relative angle of two
orientations (they are bilinear in [f(x), f(Tx)]), which is why SIE and seq-JEPA use MLP heads;
both numbers are reported.

Two R^2 estimators over targets ``N x P``:

- ``r2``: scikit-learn's ``r2_score`` (``multioutput="uniform_average"``): the mean over the P
  outputs of ``1 - SS_res_j / SS_tot_j``, each output's SS_tot around its own mean.
- ``r2_sie``: the variant in SIE's evaluation scripts (Garrido et al. 2023): one ratio,
  ``1 - sum_ij (y_ij - yhat_ij)^2 / sum_ij (y_ij - mean(y))^2`` with ``mean(y)`` the global mean
  over all entries; comparable with numbers reported by SIE, not with sklearn's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


Predictor = Callable[[Tensor], Tensor]


def r2(y_true: Tensor, y_pred: Tensor) -> float:
    """scikit-learn's R^2 (mean over outputs of per-output R^2). Like sklearn, an output with
    zero variance scores 1 when predicted exactly, else 0."""
    y, p = y_true.double().reshape(y_true.shape[0], -1), y_pred.double().reshape(y_true.shape[0], -1)
    ss_res = ((y - p) ** 2).sum(dim=0)
    ss_tot = ((y - y.mean(dim=0)) ** 2).sum(dim=0)
    per_output = torch.where(ss_tot > 0, 1.0 - ss_res / ss_tot.clamp_min(1e-300),
                             (ss_res == 0).double())
    return float(per_output.mean())


def r2_sie(y_true: Tensor, y_pred: Tensor) -> float:
    """SIE's R^2: ``1 - SS_res / SS_tot`` with SS_tot around the global mean of all entries."""
    y, p = y_true.double(), y_pred.double()
    ss_tot = ((y - y.mean()) ** 2).sum()
    ss_res = ((y - p) ** 2).sum()
    if not ss_tot > 0:
        return 1.0 if float(ss_res) == 0.0 else 0.0
    return float(1.0 - ss_res / ss_tot)


def _validation_split(n: int) -> int:
    """Rows held out (the last ones) to choose a penalty or a stopping step."""
    return max(1, n // 5) if n >= 5 else 0


def _ridge_path(x: Tensor, y: Tensor, alphas: list[float] | tuple[float, ...]
                ) -> list[tuple[Tensor, Tensor]]:
    """Closed-form ridge fits for every alpha, with an unpenalised intercept: centre, one SVD,
    then ``W = V diag(s / (s^2 + alpha)) U^T Y`` per alpha."""
    x_mean, y_mean = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    u, s, vh = torch.linalg.svd(x - x_mean, full_matrices=False)
    projected = u.T @ (y - y_mean)
    fits = []
    for alpha in alphas:
        weight = vh.T @ ((s / (s * s + alpha))[:, None] * projected)
        fits.append((weight, y_mean - x_mean @ weight))
    return fits


def significant_gain(base: Tensor, errors: Tensor) -> bool:
    """Whether per-row ``errors`` beat the per-row ``base`` errors by more than two standard
    errors of the mean paired difference (noise on a small validation set is not a gain)."""
    gain = (base - errors).double()
    if gain.numel() < 2:
        return bool(gain.mean() > 0)
    return bool(gain.mean() > 2.0 * gain.std() / gain.numel() ** 0.5)


def fit_ridge(x: Tensor, y: Tensor, alphas: list[float] | tuple[float, ...] = (1.0,),
              folds: int = 5) -> Predictor:
    """Ridge regression on standardised inputs. With several ``alphas``, per-row
    ``folds``-fold cross-validated errors (contiguous folds; each output's error divided by its
    variance) choose the penalty: the lowest error among the alphas that beat the mean
    predictor significantly (``significant_gain``), refit on all rows; when none does, the
    prediction is the mean of ``y``. Returns ``predict(x_new)``."""
    x, y = x.double(), y.double()
    mean = x.mean(0, keepdim=True)
    std = x.std(0, keepdim=True) if x.shape[0] > 1 else torch.ones_like(mean)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    xs = (x - mean) / std
    n = x.shape[0]
    best: float | None = alphas[0]
    if len(alphas) > 1 and n >= 2 * folds:
        scale = y.var(0).clamp_min(1e-12)
        errors = torch.zeros(len(alphas), n, dtype=torch.float64)
        base = torch.zeros(n, dtype=torch.float64)
        for part in torch.arange(n).tensor_split(folds):
            keep = torch.ones(n, dtype=torch.bool)
            keep[part] = False
            base[part] = (((y[keep].mean(0) - y[part]) ** 2) / scale).mean(1)
            for i, (w, b) in enumerate(_ridge_path(xs[keep], y[keep], alphas)):
                errors[i, part] = (((xs[part] @ w + b - y[part]) ** 2) / scale).mean(1)
        useful = [i for i in range(len(alphas)) if significant_gain(base, errors[i])]
        best = alphas[min(useful, key=lambda i: float(errors[i].mean()))] if useful else None
    if best is None:
        y_mean = y.mean(0, keepdim=True)
        return lambda x_new: y_mean.expand(x_new.shape[0], -1).clone()
    ((w, b),) = _ridge_path(xs, y, [best])
    return lambda x_new: ((x_new.double() - mean) / std) @ w + b


def principal_projection(x: Tensor, dims: int) -> Callable[[Tensor], Tensor]:
    """``x -> (x - mean) @ V_k``: the top ``dims`` principal directions of the rows of ``x``
    (all of them when ``dims`` is larger than the rank allows)."""
    x = x.float()
    mean = x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    basis = vh[:dims].T
    return lambda rows: (rows.float() - mean) @ basis


def fit_mlp(x: Tensor, y: Tensor, *, hidden: int = 128, steps: int = 400, lr: float = 3e-3,
            weight_decay: float = 1e-4, seed: int = 0, eval_every: int = 20,
            pca_dims: int | None = None) -> Predictor:
    """Two-hidden-layer ReLU MLP on standardised inputs and targets, full-batch Adam, seeded.

    The output layer starts at zero, i.e. at the mean predictor (step 0). Every ``eval_every``
    steps the per-row validation errors (last 20% of rows) are compared with step 0's; a step
    can be kept only when its improvement over the mean predictor is significant
    (``significant_gain``), and of those the lowest error wins. Without signal
    in the inputs the mean predictor is kept, so the held-out R^2 stays near 0 instead of going
    far below it from fitting noise on a small validation slice.

    ``pca_dims``: first project the inputs on their top principal directions (fitted on these
    rows). With a few thousand pairs of 1,000-d features the MLP otherwise fits noise before it
    finds a nonlinear signal; the projection keeps the dominant, shared directions."""
    project = principal_projection(x, pca_dims) if pca_dims else None
    x, y = (project(x) if project else x.float()), y.float()
    x_mean, x_std = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(1e-6)
    y_mean, y_std = y.mean(0, keepdim=True), y.std(0, keepdim=True).clamp_min(1e-6)
    xs, ys = (x - x_mean) / x_std, (y - y_mean) / y_std
    n_val = _validation_split(x.shape[0])
    fit_x, fit_y = (xs[:-n_val], ys[:-n_val]) if n_val else (xs, ys)
    val_x, val_y = (xs[-n_val:], ys[-n_val:]) if n_val else (xs, ys)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                              nn.ReLU(), nn.Linear(hidden, y.shape[1]))
    nn.init.zeros_(model[-1].weight)
    nn.init.zeros_(model[-1].bias)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best_err, best_state, base = float("inf"), None, None
    with torch.enable_grad():
        for step in range(steps + 1):
            if step % eval_every == 0 or step == steps:
                with torch.no_grad():
                    rows = ((model(val_x) - val_y) ** 2).mean(dim=1)
                base = rows if base is None else base
                if (step == 0 or significant_gain(base, rows)) and float(rows.mean()) < best_err:
                    best_err = float(rows.mean())
                    best_state = {k: v.clone() for k, v in model.state_dict().items()}
            if step == steps:
                break
            opt.zero_grad()
            ((model(fit_x) - fit_y) ** 2).mean().backward()
            opt.step()
    model.load_state_dict(best_state)
    model.eval()

    def predict(x_new: Tensor) -> Tensor:
        x_new = project(x_new) if project else x_new.float()
        with torch.no_grad():
            return (model((x_new - x_mean) / x_std) * y_std + y_mean).double()

    return predict


@dataclass(frozen=True)
class EquivarianceScores:
    """Held-out R^2 of the ridge and MLP read-outs, under both estimators (see module doc)."""

    r2: float
    r2_sie: float
    r2_mlp: float | None = None
    r2_sie_mlp: float | None = None


def pair_inputs(fx: Tensor, ftx: Tensor) -> Tensor:
    """The regressors' input: ``[f(x), f(Tx)]`` concatenated per row."""
    return torch.cat((fx, ftx), dim=1)


def equivariance_scores(train_in: Tensor, train_y: Tensor, test_in: Tensor, test_y: Tensor, *,
                        alphas: list[float] | tuple[float, ...] = (1.0,), mlp: bool = True,
                        mlp_hidden: int = 128, mlp_steps: int = 400, mlp_lr: float = 3e-3,
                        mlp_weight_decay: float = 1e-4, mlp_pca_dims: int | None = None,
                        seed: int = 0) -> EquivarianceScores:
    """Fit both regressors on (``train_in``, ``train_y``) and score them on the test pairs."""
    ridge = fit_ridge(train_in, train_y, alphas)(test_in)
    scores = {"r2": r2(test_y, ridge), "r2_sie": r2_sie(test_y, ridge)}
    if mlp:
        pred = fit_mlp(train_in, train_y, hidden=mlp_hidden, steps=mlp_steps, lr=mlp_lr,
                       weight_decay=mlp_weight_decay, seed=seed, pca_dims=mlp_pca_dims)(test_in)
        scores |= {"r2_mlp": r2(test_y, pred), "r2_sie_mlp": r2_sie(test_y, pred)}
    return EquivarianceScores(**scores)
