"""E-SSL: Equivariant Contrastive Learning (Dangovski, Jing, Loh, Han, Srivastava, Cheung, Agrawal,
Soljacic, ICLR 2022).

The representation stays invariant to the base method's augmentations and becomes *equivariant*
(predictive) to four-fold rotations: ``L = L_base + lambda * L_rot``, where ``L_rot`` is the
cross-entropy of a head on the *backbone* representation predicting which of the four rotations
(0, 90, 180, 270 degrees) was applied to a small, separately augmented crop; every such crop is
in the batch in all four rotations.

Choices between paper and official code (github.com/rdangovs/essl, ``cifar10/main.py``):

- Base losses are this platform's :func:`objectives.simclr.nt_xent_loss` (2N - 2 negatives, the
  SimCLR paper's loss) and :func:`objectives.vicreg.vicreg_loss`. The official CIFAR code's
  ``info_nce_loss`` contrasts each view only with the *other* view (N - 1 negatives, symmetrised);
  we keep the SimCLR definition that the paper names as its base.
- Projector (SimCLR base): the official CIFAR code's Linear-BN-ReLU-Linear-BN(affine-free) with
  2048-2048 widths; these are the defaults of ``ESSLConfig.simclr``.
- Rotation head: the official head for the SimCLR base, (Linear-LayerNorm-ReLU) x 2 + Linear with
  2048 hidden units (its SimSiam variant lacks the second ReLU; not reproduced).
- The rotated crops are produced by the ``essl`` view recipe (``augment.recipes.essl_recipe``),
  not inside the loss as the official ``rotate_images``; the labels are read from the views'
  ``rotation_angle`` params, so they describe the pixels actually seen.
- lambda = 0.4 and crop 16 px / scale (0.2, 1) at 32 px inputs are the paper's CIFAR-10 values.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from augment.batch import ViewBatch
from objectives.base import LossOutput, Objective, ViewNeeds
from objectives.heads import encode_together, expander, full_precision, ln_mlp
from objectives.simclr import SimCLRConfig, nt_xent_loss, projector
from objectives.vicreg import VICRegConfig, vicreg_loss

ROTATIONS = 4


def quarter_turn_labels(rotation_angle: Tensor) -> Tensor:
    """4-way class of each row: ``round(angle / 90) mod 4`` (0, 90, 180, 270 degrees CCW)."""
    return torch.remainder(torch.round(rotation_angle.float() / 90.0), ROTATIONS).long()


def rotation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """``L_rot = -1/n sum_i log softmax(logits_i)[labels_i]`` over the ``n`` rotated crops."""
    if logits.ndim != 2 or logits.shape[1] != ROTATIONS or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected n x {ROTATIONS} logits and n labels, got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.cross_entropy(full_precision(logits), labels)


def essl_loss(base: Tensor, rotation: Tensor, rotation_weight: float) -> Tensor:
    """``L = L_base + lambda * L_rot``."""
    return base + rotation_weight * rotation


class ESSLConfig(BaseModel):
    """Hyper-parameters of E-SSL; defaults are the paper's CIFAR-10 values."""

    model_config = ConfigDict(extra="forbid")

    base: Literal["simclr", "vicreg"] = Field("simclr", description="Invariant base objective.")
    simclr: SimCLRConfig = Field(
        default_factory=lambda: SimCLRConfig(projector_dims=[2048, 2048], projector_last_norm=True),
        description="Base settings when base='simclr' (projector of the official CIFAR code).",
    )
    vicreg: VICRegConfig = Field(default_factory=VICRegConfig,
                                 description="Base settings when base='vicreg'.")
    rotation_weight: float = Field(0.4, ge=0, description="lambda: weight of L_rot.")
    head_hidden_dims: list[int] = Field(
        default_factory=lambda: [2048, 2048],
        description="Hidden widths of the LayerNorm MLP rotation head (2048 at CIFAR scale).",
    )


class ESSL(Objective[ESSLConfig]):
    """Encoder + base projector + rotation head; views 0, 1 for the base, 2-5 rotated crops."""

    name = "essl"
    config_cls = ESSLConfig
    view_recipe = "essl"

    @classmethod
    def view_needs(cls, cfg: ESSLConfig) -> ViewNeeds:
        crops = range(2, 2 + ROTATIONS)
        return ViewNeeds(views=2 + ROTATIONS, params=tuple((i, "rotation_angle") for i in crops))

    def __init__(self, cfg: ESSLConfig, encoder: nn.Module, num_features: int) -> None:
        super().__init__(cfg, encoder, num_features)
        if cfg.base == "simclr":
            self.projector = projector(cfg.simclr, num_features)
        else:
            self.projector = expander(num_features, list(cfg.vicreg.expander_dims))
        self.rotation_head = ln_mlp(num_features, list(cfg.head_hidden_dims), ROTATIONS)

    def base_loss(self, z_a: Tensor, z_b: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The selected base loss and its detached terms."""
        if self.cfg.base == "simclr":
            loss = nt_xent_loss(z_a, z_b, temperature=self.cfg.simclr.temperature, gather=True)
            return loss, {"nt_xent": loss.detach()}
        v = self.cfg.vicreg
        out = vicreg_loss(z_a, z_b, sim_coeff=v.sim_coeff, std_coeff=v.std_coeff,
                          cov_coeff=v.cov_coeff, gamma=v.gamma, eps=v.eps, gather=True)
        return out["total"], {k: out[k].detach() for k in ("invariance", "variance", "covariance")}

    def compute_loss(self, batch: ViewBatch) -> LossOutput:
        """Base loss on views 0, 1; rotation loss on the four turned crops (views 2-5)."""
        n = batch.batch_size
        features = encode_together(self.encoder, batch.views[:2])
        z = self.projector(features)
        base, terms = self.base_loss(z[:n], z[n:])

        crops = batch.views[2:2 + ROTATIONS]
        labels = torch.cat([quarter_turn_labels(p["rotation_angle"])
                            for p in batch.params[2:2 + ROTATIONS]]).to(crops[0].device)
        logits = self.rotation_head(encode_together(self.encoder, crops))
        rotation = rotation_loss(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        terms |= {"base": base.detach(), "rotation": rotation.detach(),
                  "rotation_accuracy": accuracy}
        return LossOutput(loss=essl_loss(base, rotation, self.cfg.rotation_weight), terms=terms,
                          embeddings={"backbone": features[:n].detach(),
                                      "projection": z[:n].detach()})
