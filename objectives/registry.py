"""Explicit registry: objective name -> objective class, built from the classes themselves.

Each class declares its ``name`` and ``config_cls`` (:class:`objectives.base.Objective`), so a
name is written once. Adding an objective is one import and one entry in ``_CLASSES``; nothing
registers itself at import time.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel
from torch import nn

from objectives.base import Objective
from objectives.care import CARE
from objectives.essl import ESSL
from objectives.seq_jepa import SeqJEPA
from objectives.sie import SIE
from objectives.simclr import SimCLR
from objectives.vicreg import VICReg

_CLASSES: tuple[type[Objective], ...] = (VICReg, SimCLR, ESSL, CARE, SIE, SeqJEPA)


def registry_of(classes: Iterable[type[Objective]]) -> dict[str, type[Objective]]:
    """``{cls.name: cls}``; a name declared twice, or a class without its declarations, is an
    error (raised when the registry is built, i.e. on import)."""
    registry: dict[str, type[Objective]] = {}
    for cls in classes:
        for attribute in ("name", "config_cls", "view_recipe"):
            if not hasattr(cls, attribute):
                raise TypeError(f"objective class {cls.__name__} does not declare {attribute}")
        if cls.name in registry:
            raise ValueError(f"objective name {cls.name!r} declared by both "
                             f"{registry[cls.name].__name__} and {cls.__name__}")
        registry[cls.name] = cls
    return registry


OBJECTIVES: dict[str, type[Objective]] = registry_of(_CLASSES)


def list_objectives() -> list[str]:
    """Registered objective names, sorted."""
    return sorted(OBJECTIVES)


def is_objective(name: str) -> bool:
    """Whether ``name`` is a registered objective."""
    return name in OBJECTIVES


def get_objective(name: str) -> type[Objective]:
    """The class registered under ``name``; ``KeyError`` naming the known objectives otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise KeyError(
            f"unknown objective {name!r}; known objectives: {', '.join(list_objectives())}"
        ) from None


def build_objective(name: str, cfg: BaseModel, encoder: nn.Module, num_features: int) -> Objective:
    """Instantiate objective ``name`` around ``encoder`` (whose pooled output has ``num_features``).

    ``cfg`` must be an instance of the objective's ``config_cls`` (validate raw YAML with
    ``get_objective(name).config_cls.model_validate(...)`` first); ``TypeError`` otherwise.
    """
    return get_objective(name)(cfg, encoder, num_features)
