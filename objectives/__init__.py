"""Self-supervised objectives: pure loss functions, thin modules with heads, and a registry."""

from objectives.base import LossOutput, Objective, ViewNeeds, ViewsMissing
from objectives.distributed import gather_with_grad, is_distributed, rank, world_size
from objectives.care import CARE, CAREConfig, care_equivariance_loss, care_loss
from objectives.ema import EMATarget, cosine_momentum
from objectives.essl import ESSL, ESSLConfig, essl_loss, quarter_turn_labels, rotation_loss
from objectives.heads import encode_together, expander, ln_mlp, mlp
from objectives.registry import (
    OBJECTIVES,
    build_objective,
    get_objective,
    is_objective,
    list_objectives,
)
from objectives.seq_jepa import SeqJEPA, SeqJEPAConfig, action_tokens, negative_cosine_loss
from objectives.sie import SIE, SIEConfig, hypernetwork_predict, sie_loss
from objectives.simclr import SimCLR, SimCLRConfig, nt_xent_loss
from objectives.vicreg import (
    VICReg,
    VICRegConfig,
    covariance_term,
    invariance_term,
    variance_term,
    vicreg_loss,
)

__all__ = [
    "CARE",
    "CAREConfig",
    "EMATarget",
    "ESSL",
    "ESSLConfig",
    "SIE",
    "SIEConfig",
    "SeqJEPA",
    "SeqJEPAConfig",
    "SimCLR",
    "SimCLRConfig",
    "action_tokens",
    "care_equivariance_loss",
    "care_loss",
    "cosine_momentum",
    "encode_together",
    "essl_loss",
    "hypernetwork_predict",
    "ln_mlp",
    "negative_cosine_loss",
    "nt_xent_loss",
    "quarter_turn_labels",
    "rotation_loss",
    "sie_loss",
    "OBJECTIVES",
    "LossOutput",
    "Objective",
    "ViewNeeds",
    "ViewsMissing",
    "VICReg",
    "VICRegConfig",
    "build_objective",
    "covariance_term",
    "expander",
    "gather_with_grad",
    "get_objective",
    "invariance_term",
    "is_distributed",
    "mlp",
    "is_objective",
    "list_objectives",
    "rank",
    "variance_term",
    "vicreg_loss",
    "world_size",
]
