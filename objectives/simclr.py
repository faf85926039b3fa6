"""SimCLR: NT-Xent / InfoNCE on two views (Chen, Kornblith, Norouzi, Hinton, ICML 2020).

The pure :func:`nt_xent_loss` is the contrastive base of E-SSL (``objectives.essl``) and CARE
(``objectives.care``); :class:`SimCLR` is the thin module holding the projection head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from augment.batch import ViewBatch
from objectives.base import LossOutput, Objective, ViewNeeds
from objectives.distributed import gather_with_grad, rank
from objectives.heads import encode_together, full_precision, mlp


def nt_xent_loss(z_a: Tensor, z_b: Tensor, *, temperature: float = 0.5, gather: bool = True) -> Tensor:
    """NT-Xent of two ``n x d`` projection batches, Eq. (1) of the SimCLR paper.

    With ``u = z / ||z||`` and ``sim(u, v) = u . v``, for every anchor ``i`` of the ``2N`` views
    (``N`` images, two views each) with positive ``p(i)`` (the other view of the same image):
    ``l_i = -log( exp(sim_i,p(i) / tau) / sum_{k != i} exp(sim_ik / tau) )``; the loss is the
    mean of ``l_i`` over the anchors, ``L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]``. The
    denominator holds the positive and the ``2N - 2`` negatives (both views of every other image).

    Distribution: ``N`` is the *global* batch. Each rank's anchors are its own ``2n`` rows; the
    keys are both views of every rank, gathered with
    :func:`objectives.distributed.gather_with_grad` when ``gather`` is true (as the official
    TPU code's cross-replica concatenation). The returned value is the mean over this rank's
    anchors, so its mean over ranks is the global ``L``, and the averaged gradient equals the
    single-process gradient on the concatenated batch (``tests/test_objectives_distributed.py``).

    Paper vs official code: the official TensorFlow code sums the two views' mean losses
    (``loss_a + loss_b``, twice this value); we take the paper's mean, which only rescales the
    gradient. Inputs in 16-bit are computed in float32 with autocast disabled.
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"expected two n x d projections of equal shape, got {tuple(z_a.shape)} "
                         f"and {tuple(z_b.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        a, b = F.normalize(full_precision(z_a), dim=1), F.normalize(full_precision(z_b), dim=1)
        n, d = a.shape
        if gather:
            keys_a, keys_b = gather_with_grad(torch.cat([a, b], dim=1)).split(d, dim=1)
            offset = rank() * n  # this rank's rows inside the gathered keys
        else:
            keys_a, keys_b, offset = a, b, 0
        total = keys_a.shape[0]
        logits = torch.cat([a, b]) @ torch.cat([keys_a, keys_b]).T / temperature
        rows = torch.arange(n, device=a.device) + offset
        own = torch.cat([rows, rows + total])
        positive = torch.cat([rows + total, rows])
        is_self = torch.zeros_like(logits, dtype=torch.bool)
        is_self[torch.arange(2 * n, device=a.device), own] = True
        return F.cross_entropy(logits.masked_fill(is_self, float("-inf")), positive)


class SimCLRConfig(BaseModel):
    """Hyper-parameters of SimCLR; defaults follow the paper at CIFAR scale."""

    model_config = ConfigDict(extra="forbid")

    projector_dims: list[int] = Field(
        default_factory=lambda: [2048, 128], min_length=1,
        description="Output size of each projection layer (paper: hidden 2048 on ResNet-50, 128 out).",
    )
    projector_last_bias: bool = Field(False, description="Bias on the last projection Linear.")
    projector_last_norm: bool = Field(
        False, description="Affine-free BatchNorm after the last projection Linear (E-SSL's CIFAR code).")
    temperature: float = Field(0.5, gt=0, description="tau (0.5 at CIFAR scale, 0.1 on ImageNet).")


def projector(cfg: SimCLRConfig, num_features: int) -> nn.Sequential:
    """The projection head ``g`` described by ``cfg`` (hidden layers Linear-BN-ReLU)."""
    return mlp(num_features, list(cfg.projector_dims), last_bias=cfg.projector_last_bias,
               last_norm=cfg.projector_last_norm)


class SimCLR(Objective[SimCLRConfig]):
    """Encoder + projection head trained with :func:`nt_xent_loss` on views 0 and 1."""

    name = "simclr"
    config_cls = SimCLRConfig
    view_recipe = "simclr"

    @classmethod
    def view_needs(cls, cfg: SimCLRConfig) -> ViewNeeds:
        return ViewNeeds(views=2)

    def __init__(self, cfg: SimCLRConfig, encoder: nn.Module, num_features: int) -> None:
        super().__init__(cfg, encoder, num_features)
        self.projector = projector(cfg, num_features)

    def compute_loss(self, batch: ViewBatch) -> LossOutput:
        """Loss on views 0 and 1; embeddings of view 0 for probes."""
        n = batch.batch_size
        features = encode_together(self.encoder, batch.views[:2])
        z = self.projector(features)
        loss = nt_xent_loss(z[:n], z[n:], temperature=self.cfg.temperature, gather=True)
        return LossOutput(loss=loss, terms={"nt_xent": loss.detach()},
                          embeddings={"backbone": features[:n].detach(), "projection": z[:n].detach()})
