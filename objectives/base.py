"""What every objective returns, and the small interface the engine relies on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from augment.batch import ViewBatch


@dataclass
class LossOutput:
    """Result of one objective forward pass.

    ``loss`` is the scalar to minimise; ``terms`` are named scalars logged as ``loss/<term>``
    (detached); ``embeddings`` are named ``B x D`` tensors that probes may attach to (detached).
    """

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    embeddings: dict[str, Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class: an encoder plus the heads of one self-supervised objective.

    Subclasses set ``name`` and ``view_recipe`` (the augmentation recipe they need), build
    their heads in ``__init__`` and implement ``forward(batch) -> LossOutput``. The backbone
    lives in ``self.encoder`` so that one module holds every trained parameter (DeepSpeed wraps
    it) and export takes exactly ``self.encoder``.
    """

    name: ClassVar[str]
    view_recipe: ClassVar[str]

    def __init__(self, encoder: nn.Module, num_features: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_features = num_features

    def forward(self, batch: ViewBatch) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Hook after each optimizer step (EMA targets update here). Default: nothing."""
