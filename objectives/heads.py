"""MLP heads (projectors, expanders, predictors) shared by objectives, and joint view encoding."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def encode_together(encoder: nn.Module, views: list[Tensor]) -> Tensor:
    """``encoder(cat(views))``: one call for views of equal shape, rows ordered view by view.

    One call means one kernel sequence and BatchNorm statistics over all these views together
    (the official codes of SimCLR/E-SSL/CARE/SIE/seq-JEPA run each view separately, so their
    statistics are per view; joint statistics per resolution are the common practice this
    platform follows, as in ``objectives.vicreg``).
    """
    shapes = {tuple(v.shape) for v in views}
    if len(shapes) != 1:
        raise ValueError(f"views encoded together must have equal shapes, got {sorted(shapes)}")
    return encoder(torch.cat(views, dim=0))


def mlp(
    in_dim: int,
    dims: list[int],
    *,
    last_bias: bool = False,
    last_norm: bool = False,
) -> nn.Sequential:
    """Build ``(Linear-BN-ReLU) x (len(dims) - 1)`` followed by a final ``Linear``.

    Args:
        in_dim: input feature size (the encoder's ``num_features``).
        dims: output size of every layer; the last entry is the embedding size.
        last_bias: give the final ``Linear`` a bias.
        last_norm: append an affine-free ``BatchNorm1d`` after the final ``Linear``
            (some objectives normalise their projection this way).

    Hidden ``Linear`` layers carry no bias because the ``BatchNorm1d`` right after them
    subtracts the batch mean and would cancel it.
    """
    if not dims:
        raise ValueError("mlp needs at least one output dimension in `dims`")
    if in_dim <= 0 or any(d <= 0 for d in dims):
        raise ValueError(f"mlp dimensions must be positive, got in_dim={in_dim}, dims={dims}")
    layers: list[nn.Module] = []
    prev = in_dim
    for hidden in dims[:-1]:
        layers += [nn.Linear(prev, hidden, bias=False),
                   nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        prev = hidden
    layers.append(nn.Linear(prev, dims[-1], bias=last_bias))
    if last_norm:
        layers.append(nn.BatchNorm1d(dims[-1], affine=False))
    return nn.Sequential(*layers)


def expander(in_dim: int, dims: list[int]) -> nn.Sequential:
    """VICReg expander: ``(Linear-BN-ReLU) x (len(dims) - 1) + Linear`` (no final bias).

    VICReg (Bardes et al., 2022, Sec. 4.1) uses ``dims = [8192, 8192, 8192]`` on ResNet-50.
    """
    return mlp(in_dim, dims, last_bias=False, last_norm=False)


def ln_mlp(in_dim: int, hidden_dims: list[int], out_dim: int) -> nn.Sequential:
    """``(Linear-LayerNorm-ReLU) x len(hidden_dims)`` followed by a ``Linear``, all with biases.

    E-SSL's rotation-prediction head (official CIFAR-10 code: hidden ``[2048, 2048]``, 4 outputs).
    LayerNorm instead of BatchNorm keeps the prediction of one image independent of the others'.
    """
    if in_dim <= 0 or out_dim <= 0 or any(d <= 0 for d in hidden_dims):
        raise ValueError(f"ln_mlp dimensions must be positive, got {in_dim}, {hidden_dims}, {out_dim}")
    layers: list[nn.Module] = []
    prev = in_dim
    for hidden in hidden_dims:
        layers += [nn.Linear(prev, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True)]
        prev = hidden
    layers.append(nn.Linear(prev, out_dim))
    return nn.Sequential(*layers)


def full_precision(x: Tensor) -> Tensor:
    """``x`` in float32 when it is 16-bit (losses and Gram/covariance matrices), unchanged otherwise."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
