"""The explicit objective registry: built from the classes, each name written once."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

import objectives
from augment.recipes import RECIPES
from objectives.base import Objective, ViewNeeds
from objectives.registry import (
    OBJECTIVES,
    build_objective,
    get_objective,
    is_objective,
    list_objectives,
    registry_of,
)
from objectives.vicreg import VICReg, VICRegConfig
from pretrain.config.objective import ObjectiveConfig
from pretrain.config.schema import RunConfig


def test_registry_names_config_sections_and_declared_names_agree() -> None:
    assert list_objectives() == sorted(OBJECTIVES) == sorted(
        ["vicreg", "simclr", "essl", "care", "sie", "seq_jepa"])
    sections = set(ObjectiveConfig.model_fields) - {"name"}
    assert sections == set(OBJECTIVES)
    for name, cls in OBJECTIVES.items():
        assert issubclass(cls, Objective) and cls.name == name and is_objective(name)
        assert ObjectiveConfig.model_fields[name].annotation is cls.config_cls
        assert cls.config_cls.model_config.get("extra") == "forbid"
        assert cls.view_recipe in RECIPES
        # Defaults written once: the run config's section is the config class's default.
        assert getattr(RunConfig().objective, name) == cls.config_cls()
        assert isinstance(cls.view_needs(cls.config_cls()), ViewNeeds)
        for option in cls.recipe_options:
            assert option in cls.config_cls.model_fields, (name, option)


def test_vicreg_is_registered_with_its_config() -> None:
    assert get_objective("vicreg") is VICReg and VICReg.config_cls is VICRegConfig
    assert not is_objective("simclrr")


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(KeyError) as info:
        get_objective("simclrr")
    message = str(info.value)
    assert "simclrr" in message
    for name in list_objectives():
        assert name in message


def test_a_name_declared_twice_or_a_class_without_declarations_is_refused() -> None:
    class Twin(VICReg):
        pass

    with pytest.raises(ValueError, match="'vicreg' declared by both VICReg and Twin"):
        registry_of([VICReg, Twin])

    class Undeclared(Objective):
        pass

    with pytest.raises(TypeError, match="Undeclared does not declare name"):
        registry_of([Undeclared])


def test_build_objective_instantiates_with_encoder() -> None:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    model = build_objective("vicreg", VICRegConfig(expander_dims=[8, 4]), encoder, 6)
    assert isinstance(model, VICReg)
    assert model.encoder is encoder and model.num_features == 6 and model.cfg.expander_dims == [8, 4]
    assert model.needs == ViewNeeds(views=2)
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
    assert objectives.list_objectives is list_objectives
