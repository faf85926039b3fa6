"""Linear probe: multinomial logistic regression on frozen, standardised features.

Full-batch L-BFGS (strong Wolfe line search) from zero weights, so a fit is deterministic for
given features. The L2 penalty is chosen from a grid on the last 20% of the probe-train rows,
then the model is refit on all of them and scored once on probe-test.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LinearProbeResult:
    """Top-1 accuracy (fraction) on probe-test and the L2 penalty that was selected."""

    top1: float
    weight_decay: float


def standardize(train: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Scale columns to zero mean and unit std using ``train``'s statistics (constant columns
    become 0)."""
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True) if train.shape[0] > 1 else torch.ones_like(mean)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return tuple((t - mean) / std for t in (train, *others))


def fit_logistic(x: Tensor, y: Tensor, num_classes: int, weight_decay: float,
                 max_iter: int = 200) -> tuple[Tensor, Tensor]:
    """Weights ``D x C`` and bias ``C`` minimising mean cross-entropy + ``wd / 2 * |W|^2``."""
    x = x.double()
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach()


def predict_logistic(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return (x.double() @ weight + bias).argmax(dim=1)


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *,
                 weight_decays: list[float] | tuple[float, ...] = (1e-4,),
                 max_iter: int = 200) -> LinearProbeResult:
    """Fit on (``train_x``, ``train_y``), report top-1 on (``test_x``, ``test_y``)."""
    classes = int(max(train_y.max(), test_y.max())) + 1
    decays = list(weight_decays)
    best = decays[0]
    n_val = train_x.shape[0] // 5
    if len(decays) > 1 and n_val >= 1:
        fit_x, val_x = standardize(train_x[:-n_val], train_x[-n_val:])
        fit_y, val_y = train_y[:-n_val], train_y[-n_val:]
        scores = []
        for wd in decays:
            w, b = fit_logistic(fit_x, fit_y, classes, wd, max_iter)
            scores.append(float((predict_logistic(val_x, w, b) == val_y).double().mean()))
        # Ties go to the strongest penalty (the simplest model that does as well).
        best = max(zip(scores, decays))[1]
    tr, te = standardize(train_x, test_x)
    w, b = fit_logistic(tr, train_y, classes, best, max_iter)
    top1 = float((predict_logistic(te, w, b) == test_y).double().mean())
    return LinearProbeResult(top1=top1, weight_decay=best)
