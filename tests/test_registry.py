"""The explicit objective registry."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

import objectives
from objectives.base import Objective
from objectives.registry import (
    OBJECTIVES,
    ObjectiveSpec,
    build_objective,
    get_spec,
    objective_names,
)
from objectives.vicreg import VICReg, VICRegConfig


def test_vicreg_is_registered_with_its_config() -> None:
    assert "vicreg" in objective_names()
    spec = get_spec("vicreg")
    assert isinstance(spec, ObjectiveSpec)
    assert spec.objective_cls is VICReg
    assert spec.config_cls is VICRegConfig


def test_registry_keys_match_objective_names() -> None:
    assert objective_names() == sorted(OBJECTIVES)
    for name, spec in OBJECTIVES.items():
        assert issubclass(spec.objective_cls, Objective)
        assert issubclass(spec.config_cls, BaseModel)
        assert spec.objective_cls.name == name
        assert spec.config_cls.model_config.get("extra") == "forbid"


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(KeyError) as info:
        get_spec("simclrr")
    message = str(info.value)
    assert "simclrr" in message
    for name in objective_names():
        assert name in message


def test_build_objective_instantiates_with_encoder() -> None:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    model = build_objective("vicreg", VICRegConfig(expander_dims=[8, 4]), encoder, 6)
    assert isinstance(model, VICReg)
    assert model.encoder is encoder and model.num_features == 6
    assert model.expander(torch.randn(3, 6)).shape == (3, 4)


def test_build_objective_rejects_wrong_config_class() -> None:
    class OtherConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")

    with pytest.raises(TypeError, match="VICRegConfig"):
        build_objective("vicreg", OtherConfig(), nn.Identity(), 6)
    with pytest.raises(KeyError, match="vicreg"):
        build_objective("nope", VICRegConfig(), nn.Identity(), 6)


def test_package_exports_public_api() -> None:
    for name in objectives.__all__:
        assert hasattr(objectives, name), name
    assert objectives.build_objective is build_objective
