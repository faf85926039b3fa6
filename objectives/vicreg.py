"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce, LeCun, ICLR 2022).

Pure loss terms over tensors (reused by SIE and other objectives) plus a thin
:class:`VICReg` module that holds the expander.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from augment.batch import ViewBatch
from objectives.base import LossOutput, Objective, ViewNeeds
from objectives.distributed import gather_with_grad
from objectives.heads import expander


def invariance_term(z_a: Tensor, z_b: Tensor) -> Tensor:
    """Eq. (5): ``s(Z, Z') = 1/n sum_i ||z_i - z'_i||^2``, here also averaged over dimensions.

    The mean over both batch and dimensions (plain MSE) is what the published coefficients
    ``lambda = mu = 25`` are tuned for.
    """
    return F.mse_loss(z_a, z_b)


def variance_term(z: Tensor, *, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """Eqs. (1)-(2): ``v(Z) = 1/d sum_j max(0, gamma - sqrt(Var(z^j) + eps))``.

    ``Var`` is the unbiased (``1/(n-1)``) variance of dimension ``j`` over the ``n`` rows of
    ``z`` (``n x d``); ``eps`` keeps the square root differentiable at zero variance.
    """
    if z.shape[0] < 2:
        raise ValueError(f"variance_term needs at least 2 rows, got {z.shape[0]}")
    std = torch.sqrt(z.var(dim=0, correction=1) + eps)
    return F.relu(gamma - std).mean()


def covariance_term(z: Tensor) -> Tensor:
    """Eqs. (3)-(4): ``c(Z) = 1/d sum_{i != j} C(Z)_{ij}^2`` with the unbiased covariance.

    ``C(Z) = 1/(n-1) sum_k (z_k - mean)(z_k - mean)^T`` over the ``n`` rows of ``z`` (``n x d``).
    """
    n, d = z.shape
    if n < 2:
        raise ValueError(f"covariance_term needs at least 2 rows, got {n}")
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    # Zeroing the diagonal instead of subtracting its squares avoids cancellation in float32.
    off_diagonal = cov.masked_fill(torch.eye(d, dtype=torch.bool, device=z.device), 0.0)
    return off_diagonal.pow(2).sum() / d


def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    *,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather: bool = True,
) -> dict[str, Tensor]:
    """VICReg loss of two ``n x d`` embedding batches, Eq. (6), as the official code weighs it.

    ``total = sim_coeff * s(Z, Z') + std_coeff * (v(Z) + v(Z')) / 2 + cov_coeff * (c(Z) + c(Z'))``

    Convention: Eq. (6) of the paper writes ``mu * [v(Z) + v(Z')]``; the official
    implementation (facebookresearch/vicreg) *averages* the two views' variance terms, and the
    published ``lambda = mu = 25, nu = 1`` are balanced for that. We follow the official code:
    the ``variance`` term is halved, the ``covariance`` term is the plain sum of both views.
    So the published ``mu = 25`` is ``std_coeff`` here; Eq. (6) read literally with ``mu = 25``
    would weigh the variance twice as strongly (its ``mu`` equals ``std_coeff / 2``).

    Distribution: ``invariance`` uses this rank's rows (its mean over ranks is the global MSE);
    ``variance`` and ``covariance`` use the rows of every rank gathered with
    :func:`objectives.distributed.gather_with_grad` when ``gather`` is true (a no-op in a single
    process). Half / bfloat16 inputs are computed in float32 with autocast disabled, because
    ``d x d`` covariances and square roots near zero are unreliable in 16-bit.

    Returns:
        ``invariance``, ``variance``, ``covariance`` (unweighted, as defined above) and ``total``.
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"expected two n x d embeddings of equal shape, got {tuple(z_a.shape)} "
                         f"and {tuple(z_b.shape)}")
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        if z_a.dtype in (torch.float16, torch.bfloat16):
            z_a, z_b = z_a.float(), z_b.float()
        invariance = invariance_term(z_a, z_b)
        if gather:
            # One collective for both views instead of two.
            both = gather_with_grad(torch.cat([z_a, z_b], dim=1))
            z_a, z_b = both.split(z_a.shape[1], dim=1)
        variance = (variance_term(z_a, gamma=gamma, eps=eps)
                    + variance_term(z_b, gamma=gamma, eps=eps)) / 2
        covariance = covariance_term(z_a) + covariance_term(z_b)
        total = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return {"invariance": invariance, "variance": variance, "covariance": covariance,
            "total": total}


class VICRegConfig(BaseModel):
    """Hyper-parameters of VICReg; defaults follow the paper except the expander width."""

    model_config = ConfigDict(extra="forbid")

    expander_dims: list[int] = Field(
        default_factory=lambda: [2048, 2048, 2048], min_length=1,
        description="Output size of each expander layer (paper: 8192 x 3 on ResNet-50).",
    )
    sim_coeff: float = Field(25.0, ge=0, description="lambda: weight of the invariance term.")
    std_coeff: float = Field(
        25.0, ge=0, description="mu: weight of the view-averaged variance term (see vicreg_loss).")
    cov_coeff: float = Field(1.0, ge=0, description="nu: weight of the covariance term.")
    gamma: float = Field(1.0, gt=0, description="Target standard deviation per dimension.")
    eps: float = Field(1e-4, gt=0, description="Added to the variance inside the square root.")


class VICReg(Objective[VICRegConfig]):
    """Encoder + expander trained with :func:`vicreg_loss` on two views.

    Both views go through the encoder and expander in ONE call on their concatenation: one
    kernel launch sequence instead of two, and BatchNorm statistics are taken over both views
    together (the official code runs the views separately, so its statistics are per view;
    joint statistics over all views of one resolution are common practice, e.g. DINO's
    multi-crop wrapper).
    """

    name = "vicreg"
    config_cls = VICRegConfig
    view_recipe = "vicreg"

    @classmethod
    def view_needs(cls, cfg: VICRegConfig) -> ViewNeeds:
        return ViewNeeds(views=2)

    def __init__(self, cfg: VICRegConfig, encoder: nn.Module, num_features: int) -> None:
        super().__init__(cfg, encoder, num_features)
        self.expander = expander(num_features, list(cfg.expander_dims))

    def compute_loss(self, batch: ViewBatch) -> LossOutput:
        """Loss on views 0 and 1; embeddings of view 0 for probes."""
        view_a, view_b = batch.views[0], batch.views[1]
        if view_a.shape != view_b.shape:
            raise ValueError(f"VICReg views must have equal shapes to be encoded together, got "
                             f"{tuple(view_a.shape)} and {tuple(view_b.shape)}")
        n = view_a.shape[0]
        features = self.encoder(torch.cat([view_a, view_b], dim=0))
        z = self.expander(features)
        z_a, z_b = z[:n], z[n:]
        cfg = self.cfg
        out = vicreg_loss(z_a, z_b, sim_coeff=cfg.sim_coeff, std_coeff=cfg.std_coeff,
                          cov_coeff=cfg.cov_coeff, gamma=cfg.gamma, eps=cfg.eps, gather=True)
        terms = {k: out[k].detach() for k in ("invariance", "variance", "covariance")}
        embeddings = {"backbone": features[:n].detach(), "projection": z_a.detach()}
        return LossOutput(loss=out["total"], terms=terms, embeddings=embeddings)
