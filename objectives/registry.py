"""Explicit registry: objective name -> (objective class, config class). No import-time magic.

Adding an objective is one line in ``OBJECTIVES`` (import its module here first).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel
from torch import nn

from objectives.base import Objective
from objectives.care import CARE, CAREConfig
from objectives.essl import ESSL, ESSLConfig
from objectives.seq_jepa import SeqJEPA, SeqJEPAConfig
from objectives.sie import SIE, SIEConfig
from objectives.simclr import SimCLR, SimCLRConfig
from objectives.vicreg import VICReg, VICRegConfig


@dataclass(frozen=True)
class ObjectiveSpec:
    """What the platform needs to know to build an objective from its name."""

    objective_cls: type[Objective]
    config_cls: type[BaseModel]


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "vicreg": ObjectiveSpec(VICReg, VICRegConfig),
    "simclr": ObjectiveSpec(SimCLR, SimCLRConfig),
    "essl": ObjectiveSpec(ESSL, ESSLConfig),
    "care": ObjectiveSpec(CARE, CAREConfig),
    "sie": ObjectiveSpec(SIE, SIEConfig),
    "seq_jepa": ObjectiveSpec(SeqJEPA, SeqJEPAConfig),
}


def objective_names() -> list[str]:
    """Registered objective names, sorted."""
    return sorted(OBJECTIVES)


def get_spec(name: str) -> ObjectiveSpec:
    """The spec registered under ``name``; ``KeyError`` naming the known objectives otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise KeyError(
            f"unknown objective {name!r}; known objectives: {', '.join(objective_names())}"
        ) from None


def build_objective(name: str, cfg: BaseModel, encoder: nn.Module, num_features: int) -> Objective:
    """Instantiate objective ``name`` around ``encoder`` (whose pooled output has ``num_features``).

    ``cfg`` must be an instance of the objective's ``config_cls`` (validate raw YAML with
    ``get_spec(name).config_cls.model_validate(...)`` first).
    """
    spec = get_spec(name)
    if not isinstance(cfg, spec.config_cls):
        raise TypeError(f"objective {name!r} expects a {spec.config_cls.__name__} config, "
                        f"got {type(cfg).__name__}")
    return spec.objective_cls(cfg, encoder, num_features)  # type: ignore[call-arg]
