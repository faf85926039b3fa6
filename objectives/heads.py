"""MLP heads (projectors, expanders, predictors) shared by objectives."""

from __future__ import annotations

from torch import nn


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
