"""Exponential-moving-average (EMA) target networks, kept safe under DeepSpeed.

:class:`EMATarget` holds a frozen copy of an online module whose parameters are turned into
*buffers*. That one choice does three jobs:

- the optimizer never sees them (``pretrain.train.optim.param_groups`` walks ``parameters()``);
- DeepSpeed's bf16/fp16 mode casts *parameters* only, so the EMA weights stay float32: a
  momentum of 0.996 moves a weight by 0.4% of its gap to the online weight per step, below
  bf16's 8-bit mantissa resolution, and a bf16 EMA would barely move;
- they are persistent buffers of the objective, so every checkpoint of the engine's module
  state holds them (with the ``updates`` counter), and resuming restores them exactly.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

LOW_PRECISION = (torch.float16, torch.bfloat16)


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """``final - (final - base) (cos(pi k / K) + 1) / 2`` with ``k = step``, ``K = total_steps``.

    BYOL's schedule (Grill et al., 2020, Sec. 3.2): ``base`` at step 0, ``final`` at the end;
    ``step`` is clamped to ``[0, K]``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def _parameters_to_buffers(module: nn.Module) -> None:
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, param.detach().clone().float())


class EMATarget(nn.Module):
    """A frozen float32 copy of ``online`` updated by ``update_(online, momentum)``.

    Only the online *parameters* are averaged; the copy's own BatchNorm running statistics follow
    its own forward passes, as in the official seq-JEPA and BYOL code.
    """

    def __init__(self, online: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(online)
        _parameters_to_buffers(self.module)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_(self, online: nn.Module, momentum: float) -> None:
        """``target <- momentum * target + (1 - momentum) * online`` for every online parameter."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        target = dict(self.module.named_buffers())
        pairs = [(target[name], param) for name, param in online.named_parameters()]
        if not pairs:
            return
        targets = [t for t, _ in pairs]
        sources = [p.detach().to(t.dtype) for t, p in pairs]
        torch._foreach_lerp_(targets, sources, 1.0 - momentum)
        self.updates += 1

    def forward(self, x: Tensor) -> Tensor:
        """The target's output without gradient; 16-bit inputs run under autocast on fp32 weights."""
        if x.dtype not in LOW_PRECISION:
            with torch.no_grad():
                return self.module(x)
        with torch.no_grad(), torch.autocast(x.device.type, dtype=x.dtype):
            return self.module(x.float())
