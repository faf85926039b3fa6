"""Linear warmup followed by cosine decay, as a pure function of the step."""

from __future__ import annotations

import math


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_factor: float) -> float:
    """LR multiplier at ``step`` (0-based): ``(step+1)/warmup`` during warmup, then a cosine from 1
    down to ``min_factor`` at the last step. ``total_steps <= warmup_steps`` keeps the warmup ramp."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """Picklable callable for ``torch.optim.lr_scheduler.LambdaLR`` (its state survives checkpoints)."""

    def __init__(self, total_steps: int, warmup_steps: int, min_factor: float) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_factor = min_factor

    def __call__(self, step: int) -> float:
        return warmup_cosine_factor(step, self.total_steps, self.warmup_steps, self.min_factor)
