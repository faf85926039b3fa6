"""SIE: Split Invariant-Equivariant representations (Garrido, Najman, LeCun, ICML 2023).

The backbone representation is split into an invariant part (first half by default) and an
equivariant part (the last ``equivariant_dims`` features), each with its own projector. The
invariant embeddings of the two views are pulled together; the equivariant embedding of view 1
is mapped by a predictor conditioned on the transformation ``g`` from view 1 to view 2,
``W(g) z`` with ``W(g) = sum_k g_k A_k`` (a bias-free linear hypernetwork from ``g`` to a square
matrix), and must match the equivariant embedding of view 2. VICReg's variance and covariance
regularise the concatenated embeddings ``Z = [Z_inv ; Z_equi]`` of each view and the variance
regularises the predictions ``P``:

``L = 10 MSE(z_inv, z'_inv) + 4.5 MSE(W(g) z_equi, z'_equi) + 10 (v(Z) + v(Z') + v(P)) / 2
+ 1 (c(Z) + c(Z'))``, with ``v`` and ``c`` of ``objectives.vicreg`` on the gathered global batch.

Choices between paper and official code (github.com/facebookresearch/SIE, ``src/models.py``,
class ``SIE``):

- The official loss weighs the predictor term ``equi_factor * sim_coeff``; its argparse default
  ``equi_factor = 4.5`` gives 45 while its README runs ``--equi-factor 0.45``, i.e. 4.5. We take
  4.5 (``SIEConfig.equi_coeff`` is the absolute weight).
- Projector widths: each part gets the shared widths scaled by its share of the representation
  and rounded (the official ``mlp * ratio``): 2048-2048-2048 on a 512-d ResNet-18 split 256/256
  gives 1024-1024-1024 per part.
- ``g``: the official code feeds scipy's ``as_quat()`` of ``R_1^-1 R_2`` (``[x, y, z, w]``, sign not
  fixed); we feed the canonical ``[w, x, y, z]`` (``w >= 0``) of ``augment.relative`` ('rotation',
  4-d) or its 6-d rotation + hue variant, or the 16-d augmentation-parameter difference on
  image data. ``W(g) z`` is evaluated as ``sum_k g_k (A_k z)`` (``B x K x d`` memory) instead of
  building the official ``B x d x d`` per-sample matrices; the arithmetic is the same.
- Start of the basis ``A`` (``SIEConfig.basis_init``): the official code builds the hypernetwork
  as ``nn.Linear(K, d * d)``, so ``A`` starts uniform with bound ``1/sqrt(K)`` (``"official"``).
  ``W(g)`` is then a random map whose gain on a unit vector is about ``sqrt(d / 12)`` (4.6 at
  d = 256): the first predictor MSE is 9-32 times that of predicting "no change", and at short
  budgets the encoder shrinks its embeddings instead of learning pose (issue 10: action use
  1.00, rotation R^2 0 after 300 steps). Our default ``"scaled"`` divides that bound by
  ``sqrt(d)`` (bound ``1/sqrt(K d)``, gain about ``1/sqrt(12)``), a near-silent start from which
  the predictor grows with the data; ``"zero"`` starts ``A`` at 0 (``W(g) = 0``). The official
  start stays available for long runs that reproduce the paper's setting.
- The two views go through the backbone in one call (joint BatchNorm statistics).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from augment.batch import ViewBatch
from augment.relative import relative_dim
from objectives.base import FeatureColumns, LossOutput, Objective, ViewNeeds
from objectives.distributed import gather_with_grad
from objectives.heads import encode_together, expander, full_precision
from objectives.vicreg import covariance_term, variance_term

Action = Literal["rotation", "rotation_hue", "augment"]
BasisInit = Literal["official", "scaled", "zero"]


def init_basis(k: int, d: int, how: str) -> Tensor:
    """``K x d x d`` start of the hypernetwork basis (see the module docstring): ``official``
    U(+-1/sqrt(K)), ``scaled`` U(+-1/sqrt(K d)), ``zero`` all zeros."""
    if how == "zero":
        return torch.zeros(k, d, d)
    bounds = {"official": 1.0 / math.sqrt(k), "scaled": 1.0 / math.sqrt(k * d)}
    if how not in bounds:
        raise ValueError(f"unknown SIE basis_init {how!r}; choose official, scaled or zero")
    return torch.empty(k, d, d).uniform_(-bounds[how], bounds[how])


def hypernetwork_predict(z: Tensor, g: Tensor, basis: Tensor) -> Tensor:
    """``W(g) z`` per row with ``W(g) = sum_k g_k A_k``.

    Args:
        z: ``n x d`` equivariant embeddings of view 1.
        g: ``n x K`` transformation vectors.
        basis: ``K x d x d`` matrices ``A_k`` (row = output index, as ``nn.Linear`` weights).
    """
    square = basis.ndim == 3 and basis.shape[1:] == (z.shape[1], z.shape[1])
    if not square or g.shape != (z.shape[0], basis.shape[0]):
        raise ValueError(f"shapes do not fit W(g) z: z {tuple(z.shape)}, g {tuple(g.shape)}, "
                         f"basis {tuple(basis.shape)}")
    return torch.einsum("nk,nki->ni", g.to(z.dtype), torch.einsum("kij,nj->nki", basis, z))


def sie_loss(
    inv_a: Tensor,
    inv_b: Tensor,
    equi_a: Tensor,
    equi_b: Tensor,
    prediction: Tensor,
    *,
    sim_coeff: float = 10.0,
    equi_coeff: float = 4.5,
    std_coeff: float = 10.0,
    cov_coeff: float = 1.0,
    pred_variance: bool = True,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather: bool = True,
) -> dict[str, Tensor]:
    """The SIE loss of the module docstring from the embeddings of both views and the predictions.

    ``invariance`` and ``equivariance`` are local MSEs (their mean over ranks is the global
    value); ``variance`` = ``(v(Z) + v(Z')) / 2``, ``pred_variance`` = ``v(P) / 2`` and
    ``covariance`` = ``c(Z) + c(Z')`` use the rows of every rank, gathered in one collective.
    ``pred_variance=False`` drops ``v(P)`` (the paper's SIE-without-variance ablation).

    Returns:
        the unweighted terms above and the weighted ``total``.
    """
    with torch.autocast(device_type=inv_a.device.type, enabled=False):
        inv_a, inv_b, equi_a, equi_b, prediction = (
            full_precision(t) for t in (inv_a, inv_b, equi_a, equi_b, prediction))
        invariance = F.mse_loss(inv_a, inv_b)
        equivariance = F.mse_loss(prediction, equi_b)
        z_a, z_b = torch.cat([inv_a, equi_a], dim=1), torch.cat([inv_b, equi_b], dim=1)
        widths = [z_a.shape[1], z_b.shape[1], prediction.shape[1]]
        both = torch.cat([z_a, z_b, prediction], dim=1)
        z_a, z_b, prediction = (gather_with_grad(both) if gather else both).split(widths, dim=1)
        variance = (variance_term(z_a, gamma=gamma, eps=eps)
                    + variance_term(z_b, gamma=gamma, eps=eps)) / 2
        p_variance = variance_term(prediction, gamma=gamma, eps=eps) / 2
        covariance = covariance_term(z_a) + covariance_term(z_b)
        total = (sim_coeff * invariance + equi_coeff * equivariance + std_coeff * variance
                 + cov_coeff * covariance)
        if pred_variance:
            total = total + std_coeff * p_variance
    return {"invariance": invariance, "equivariance": equivariance, "variance": variance,
            "pred_variance": p_variance, "covariance": covariance, "total": total}


class SIEConfig(BaseModel):
    """Hyper-parameters of SIE; defaults follow the paper (ResNet-18 on 3DIEBench)."""

    model_config = ConfigDict(extra="forbid")

    equivariant_dims: int | None = Field(
        None, ge=1, description="Features of the equivariant (last) part; None = half.")
    expander_dims: list[int] = Field(
        default_factory=lambda: [2048, 2048, 2048], min_length=1,
        description="Projector widths for the whole representation, split in proportion.")
    action: Action = Field("rotation", description="Key of ViewBatch.relative used as g.")
    sim_coeff: float = Field(10.0, ge=0, description="Weight of the invariant MSE.")
    equi_coeff: float = Field(4.5, ge=0, description="Weight of the predictor MSE (see module).")
    std_coeff: float = Field(10.0, ge=0, description="Weight of (v(Z) + v(Z') + v(P)) / 2.")
    cov_coeff: float = Field(1.0, ge=0, description="Weight of c(Z) + c(Z').")
    pred_variance: bool = Field(True, description="Include v(P) (False: the SIENoVar ablation).")
    gamma: float = Field(1.0, gt=0, description="Target standard deviation per dimension.")
    eps: float = Field(1e-4, gt=0, description="Added to the variance inside the square root.")
    basis_init: BasisInit = Field(
        "scaled", description="Start of the hypernetwork basis: official U(+-1/sqrt(K)), "
        "scaled U(+-1/sqrt(K d)) or zero (see the module docstring).")


def split_widths(dims: list[int], part: int, whole: int) -> list[int]:
    """Projector widths of a part holding ``part`` of ``whole`` features (official rounding)."""
    return [max(1, round(d * part / whole)) for d in dims]


class SIE(Objective[SIEConfig]):
    """Encoder, invariant and equivariant projectors and the hypernetwork predictor."""

    name = "sie"
    config_cls = SIEConfig
    view_recipe = "pair"

    @classmethod
    def view_needs(cls, cfg: SIEConfig) -> ViewNeeds:
        return ViewNeeds(views=2, action=cfg.action, actions=1)

    def __init__(self, cfg: SIEConfig, encoder: nn.Module, num_features: int) -> None:
        super().__init__(cfg, encoder, num_features)
        equi = cfg.equivariant_dims if cfg.equivariant_dims is not None else num_features // 2
        if not 0 < equi < num_features:
            raise ValueError(f"SIE equivariant_dims must be in [1, {num_features - 1}], got {equi}")
        self.inv_dims, self.equi_dims = num_features - equi, equi
        dims = list(cfg.expander_dims)
        self.projector_inv = expander(self.inv_dims, split_widths(dims, self.inv_dims, num_features))
        self.projector_equi = expander(self.equi_dims, split_widths(dims, equi, num_features))
        width, k = split_widths(dims, equi, num_features)[-1], relative_dim(cfg.action)
        self.basis = nn.Parameter(init_basis(k, width, cfg.basis_init))

    def _equivariant_pair(self, batch: ViewBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Backbone features of views 0 and 1 (rows view by view), the invariant and equivariant
        projections of both, and ``g``."""
        features = encode_together(self.encoder, batch.views[:2])
        inv, equi = features.split([self.inv_dims, self.equi_dims], dim=1)
        return features, self.projector_inv(inv), self.projector_equi(equi), \
            batch.relative[self.cfg.action][:, 0]

    def probe_features(self) -> dict[str, nn.Module]:
        """The invariant (first ``inv_dims``) and equivariant (last ``equi_dims``) parts of the
        backbone features: the paper probes each half for class and for rotation."""
        return {"invariant": FeatureColumns(0, self.inv_dims),
                "equivariant": FeatureColumns(self.inv_dims, self.num_features)}

    @torch.no_grad()
    def predictor_losses(self, batch: ViewBatch, permutation: Tensor) -> dict[str, Tensor]:
        """The predictor's MSE ``||W(g) z - z'||^2`` (the ``equivariance`` term) with the true
        ``g`` (``true``), with ``g`` taken from row ``permutation[i]`` (``shuffled``), and the MSE
        of predicting "no change", ``||z - z'||^2`` (``no_change``), on one batch."""
        self.check_views(batch)
        n = batch.batch_size
        _, _, z_equi, g = self._equivariant_pair(batch)
        z_a, z_b = z_equi[:n].float(), z_equi[n:].float()
        basis = self.basis.float()
        return {"true": F.mse_loss(hypernetwork_predict(z_a, g, basis), z_b),
                "shuffled": F.mse_loss(hypernetwork_predict(z_a, g[permutation], basis), z_b),
                "no_change": F.mse_loss(z_a, z_b)}

    def compute_loss(self, batch: ViewBatch) -> LossOutput:
        """Loss on views 0, 1 with ``g = batch.relative[action][:, 0]`` (view 0 -> view 1)."""
        n = batch.batch_size
        features, z_inv, z_equi, g = self._equivariant_pair(batch)
        inv, equi = features.split([self.inv_dims, self.equi_dims], dim=1)
        prediction = hypernetwork_predict(z_equi[:n], g, self.basis)
        c = self.cfg
        out = sie_loss(z_inv[:n], z_inv[n:], z_equi[:n], z_equi[n:], prediction,
                       sim_coeff=c.sim_coeff, equi_coeff=c.equi_coeff, std_coeff=c.std_coeff,
                       cov_coeff=c.cov_coeff, pred_variance=c.pred_variance, gamma=c.gamma,
                       eps=c.eps, gather=True)
        terms = {k: v.detach() for k, v in out.items() if k != "total"}
        embeddings = {"backbone": features[:n].detach(), "invariant": inv[:n].detach(),
                      "equivariant": equi[:n].detach(), "projection_inv": z_inv[:n].detach(),
                      "projection_equi": z_equi[:n].detach()}
        return LossOutput(loss=out["total"], terms=terms, embeddings=embeddings)
