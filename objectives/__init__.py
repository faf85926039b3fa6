"""Self-supervised objectives: pure loss functions, thin modules with heads, and a registry."""

from objectives.base import LossOutput, Objective
from objectives.distributed import gather_with_grad, is_distributed, rank, world_size
from objectives.heads import expander, mlp
from objectives.registry import (
    OBJECTIVES,
    ObjectiveSpec,
    build_objective,
    get_spec,
    objective_names,
)
from objectives.vicreg import (
    VICReg,
    VICRegConfig,
    covariance_term,
    invariance_term,
    variance_term,
    vicreg_loss,
)

__all__ = [
    "OBJECTIVES",
    "LossOutput",
    "Objective",
    "ObjectiveSpec",
    "VICReg",
    "VICRegConfig",
    "build_objective",
    "covariance_term",
    "expander",
    "gather_with_grad",
    "get_spec",
    "invariance_term",
    "is_distributed",
    "mlp",
    "objective_names",
    "rank",
    "variance_term",
    "vicreg_loss",
    "world_size",
]
