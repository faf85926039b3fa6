"""CARE: Contrastive Augmentation-induced Rotational Equivariance (Gupta, Robinson, Lim, Villar,
Jegelka, "Structuring Representation Geometry with Rotationally Equivariant Contrastive Learning").

``L = InfoNCE + lambda * L_equi``. The batch is split into K chunks; within a chunk every image
gets the *same* two sampled augmentations ``t`` and ``t'``. With ``A = normalise(f(tX))`` and
``B = normalise(f(t'X))`` for the ``m`` images of a chunk (rows of unit projections),
``L_chunk = (2/m) sum_{i != j} (A A^T - B B^T)_ij^2`` and ``L_equi`` is the mean over chunks. No
rotation is learned: ``L_chunk`` is zero exactly when the two chunk embeddings have the same Gram
matrix, i.e. when an orthogonal map relates them (``B = A R``, ``R`` orthogonal). The result is
invariant to the augmentations only approximately (InfoNCE) and sensitive to them through a
rotation of the embedding sphere (e.g. colour).

Choices between paper and official code (github.com/Sharut/CARE, ``cifar10_cifar100_stl10``):

- The official code draws ``t, t'`` inside ``vmap(..., randomness='same')`` over the stacked
  chunks, which by vmap's semantics gives *every* chunk the same ``t, t'``; we follow the paper
  (independent ``t, t'`` per chunk, ``augment.recipes.care_recipe``).
- Chunks: the official code uses ``B // K`` rows per chunk and drops the remainder; our chunks
  come from the pipeline (``params["chunk"]`` of the chunk-shared views, sizes as
  ``torch.tensor_split``) and each chunk uses its own ``m``. The chunk count scales with the
  batch so that a chunk keeps ``CAREConfig.chunk_size`` = 16 images (the paper's K = 16 at
  batch 256): ``L_chunk`` grows with ``m``, so a fixed ``m`` keeps ``lambda`` meaningful.
- The independent pair and the chunk-shared pair are encoded in one call (joint BatchNorm
  statistics, see ``objectives.heads.encode_together``); the official code runs four calls.
- InfoNCE is :func:`objectives.simclr.nt_xent_loss` (the official ``infoNCE`` is the same loss
  with 2N - 2 negatives); lambda = 0.03, temperature 0.5 and the projector
  Linear(512, no bias)-BN-ReLU-Linear(128) are the official CIFAR-10 settings.
- ``L_equi`` is local to each rank (chunks never span ranks): its mean over ranks is the mean
  over all chunks when ranks hold equally many chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from augment.batch import ViewBatch
from objectives.base import LossOutput, Objective, ViewNeeds
from objectives.heads import encode_together, full_precision, mlp
from objectives.simclr import nt_xent_loss


def care_equivariance_loss(z_a: Tensor, z_b: Tensor, chunk: Tensor) -> Tensor:
    """``L_equi``: mean over chunks of ``(2/m) sum_{i != j in chunk} (A A^T - B B^T)_ij^2``.

    Args:
        z_a, z_b: ``n x d`` projections of ``tX`` and ``t'X`` (L2-normalised here: ``A``, ``B``).
        chunk: ``n`` chunk index of every row; rows of one chunk shared ``t`` and ``t'``.

    Computed on the full ``n x n`` Gram difference with a same-chunk mask, so no host sync or
    per-chunk loop is needed (``n`` is a per-rank batch: the matrix is small).
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2 or chunk.shape != z_a.shape[:1]:
        raise ValueError(f"expected n x d projections and n chunk ids, got {tuple(z_a.shape)}, "
                         f"{tuple(z_b.shape)} and {tuple(chunk.shape)}")
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        a, b = F.normalize(full_precision(z_a), dim=1), F.normalize(full_precision(z_b), dim=1)
        chunk = chunk.to(a.device)
        same = chunk[:, None] == chunk[None, :]
        off_diagonal = same & ~torch.eye(len(chunk), dtype=torch.bool, device=a.device)
        per_row = ((a @ a.T - b @ b.T).pow(2) * off_diagonal).sum(dim=1)
        inverse_size = 1.0 / same.sum(dim=1).to(a.dtype)  # 1 / m of the row's chunk
        # sum_c (2/m_c) sum_{i in c} per_row_i, divided by K = sum_i 1/m_c(i).
        return 2.0 * (per_row * inverse_size).sum() / inverse_size.sum()


def care_loss(info_nce: Tensor, equivariance: Tensor, equivariance_weight: float) -> Tensor:
    """``L = InfoNCE + lambda * L_equi``."""
    return info_nce + equivariance_weight * equivariance


class CAREConfig(BaseModel):
    """Hyper-parameters of CARE; defaults are the official CIFAR-10 script's.

    ``chunk_size`` is also read by the view recipe (``CARE.recipe_options``): the run config
    hands it to the augmenter, which samples the chunk-shared views.
    """

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(
        16, ge=1, description="Images per chunk sharing one sampled augmentation pair; a batch of "
        "B gets max(1, B // chunk_size) chunks (the paper's K = 16 chunks at batch 256).")

    projector_dims: list[int] = Field(default_factory=lambda: [512, 128], min_length=1,
                                      description="Projection widths (official: 512 hidden, 128 out).")
    projector_last_bias: bool = Field(True, description="Bias on the last projection Linear.")
    temperature: float = Field(0.5, gt=0, description="InfoNCE temperature.")
    equivariance_weight: float = Field(0.03, ge=0, description="lambda: weight of L_equi.")


class CARE(Objective[CAREConfig]):
    """Encoder + projector; views 0, 1 independent (InfoNCE), views 2, 3 chunk-shared (L_equi)."""

    name = "care"
    config_cls = CAREConfig
    view_recipe = "care"
    recipe_options = ("chunk_size",)

    @classmethod
    def view_needs(cls, cfg: CAREConfig) -> ViewNeeds:
        return ViewNeeds(views=4, params=((2, "chunk"),))

    def __init__(self, cfg: CAREConfig, encoder: nn.Module, num_features: int) -> None:
        super().__init__(cfg, encoder, num_features)
        self.projector = mlp(num_features, list(cfg.projector_dims), last_bias=cfg.projector_last_bias)

    def compute_loss(self, batch: ViewBatch) -> LossOutput:
        n = batch.batch_size
        features = encode_together(self.encoder, batch.views[:4])
        z = self.projector(features)
        z0, z1, z2, z3 = z.split(n)
        info_nce = nt_xent_loss(z0, z1, temperature=self.cfg.temperature, gather=True)
        equivariance = care_equivariance_loss(z2, z3, batch.params[2]["chunk"])
        terms = {"info_nce": info_nce.detach(), "equivariance": equivariance.detach()}
        return LossOutput(loss=care_loss(info_nce, equivariance, self.cfg.equivariance_weight),
                          terms=terms, embeddings={"backbone": features[:n].detach(),
                                                   "projection": z0.detach()})
