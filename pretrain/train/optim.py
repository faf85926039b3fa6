"""Optimizer parameter groups and LARS (You et al., 2017), used as DeepSpeed client optimizer."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with decay, and 1-D parameters (biases, norm scales) without it.

    The 1-D group is flagged ``lars_exclude`` so LARS leaves it unadapted, as in the LARS
    setups of SimCLR/VICReg/BYOL."""
    decay, no_decay = [], []
    for param in module.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lars_exclude": False}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio.

    For each parameter w with gradient g (not excluded): ``u = g + wd * w``;
    ``ratio = eta * ||w|| / ||u||`` when both norms are positive, else 1; ``u <- ratio * u``;
    ``m <- momentum * m + u``; ``w <- w - lr * m``. Excluded parameters use ``u = g + wd * w``
    with ratio 1 (their wd is 0 in ``param_groups``).
    """

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 0.0,
                 momentum: float = 0.9, eta: float = 0.02) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                update = w.grad.add(w, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    update.mul_(self._trust_ratio(w, update, group["eta"]))
                state = self.state[w]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(w)
                buf: Tensor = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update)
                w.add_(buf, alpha=-group["lr"])
        return loss

    @staticmethod
    def _trust_ratio(w: Tensor, update: Tensor, eta: float) -> Tensor:
        w_norm, u_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(update)
        ratio = eta * w_norm / u_norm
        return torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))
