"""Objectives declare the views they need once; the base class checks every batch against that
declaration, and the run config checks the recipe against it before anything starts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from augment.pipeline import ViewAugmenter
from augment.quaternion import random_quaternion
from augment.recipes import build_recipe
from objectives.base import Objective, ViewNeeds, ViewsMissing
from objectives.registry import OBJECTIVES
from pretrain.config import ConfigError, load_config
from pretrain.config.schema import RunConfig

SIZE, BATCH = 16, 4
# Small heads so that building every objective takes milliseconds; the needs do not depend on them.
SMALL = {"vicreg": {"expander_dims": [8]}, "simclr": {"projector_dims": [8]},
         "essl": {"head_hidden_dims": [8], "simclr": {"projector_dims": [8]}},
         "care": {"projector_dims": [8]}, "sie": {"expander_dims": [8]},
         "seq_jepa": {"action_embed_dim": 8, "predictor_hidden": 8, "num_layers": 1}}


def _run_config(name: str, **objective: object) -> RunConfig:
    """The run config of objective ``name`` on its own recipe, views cut from distinct
    renderings (so that latent actions exist), with as many decoded views as the recipe cuts."""
    section = {**SMALL[name], **objective}
    cfg = RunConfig(objective={"name": name, name: section}, augment={"source": "distinct"},
                    data={"views": 8, "image_size": SIZE})
    return cfg


def _batch(cfg: RunConfig):
    """One batch from the run's own augmenter, with the latents of synthetic 3D data."""
    recipe = build_recipe(cfg.augment)
    decoded = max(spec.source for spec in recipe.views) + 1
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (BATCH, decoded, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    latents = {"quaternion": random_quaternion(BATCH * decoded, g).view(BATCH, decoded, 4),
               "object_hue": torch.rand(BATCH, decoded, generator=g),
               "background_hue": torch.rand(BATCH, decoded, generator=g)}
    augmenter = ViewAugmenter(cfg.augment, (0.5,) * 3, (0.25,) * 3, SIZE)
    return augmenter(images, g, latents=latents)


def _model(cfg: RunConfig) -> Objective:
    encoder = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 8))
    return OBJECTIVES[cfg.objective.name](cfg.objective.settings(), encoder, 8)


def _without_each_need(needs: ViewNeeds, batch):
    """``(what was removed, a copy of batch lacking it)`` for every declared need."""
    fewer = dataclasses.replace(batch, views=batch.views[:needs.views - 1],
                                params=batch.params[:needs.views - 1])
    yield f"needs {needs.views} views, the batch has {needs.views - 1}", fewer
    for index, key in needs.params:
        params = [dict(p) for p in batch.params]
        del params[index][key]
        yield f"needs params[{index}][{key!r}]", dataclasses.replace(batch, params=params)
    if needs.action is not None:
        relative = {k: v for k, v in batch.relative.items() if k != needs.action}
        yield (f"needs the relative transform {needs.action!r}",
               dataclasses.replace(batch, relative=relative))
        short = {**batch.relative, needs.action: batch.relative[needs.action][:, :needs.actions - 1]}
        yield (f"needs {needs.actions} relative transform(s) {needs.action!r}",
               dataclasses.replace(batch, relative=short))


CASES = [(name, {}) for name in OBJECTIVES] + [
    ("sie", {"action": "rotation_hue"}), ("sie", {"action": "augment"}),
    ("seq_jepa", {"sequence_length": 2}), ("seq_jepa", {"action_conditioning": False})]


@pytest.mark.parametrize(("name", "settings"), CASES, ids=lambda c: str(c))
def test_the_own_recipe_gives_what_is_declared_and_each_missing_need_is_one_line(
        name: str, settings: dict) -> None:
    cfg = _run_config(name, **settings)
    model = _model(cfg)
    assert model.needs == type(model).view_needs(cfg.objective.settings()) == cfg.objective.view_needs()
    batch = _batch(cfg)
    model.check_views(batch)  # the objective's own recipe satisfies its declaration
    removed = list(_without_each_need(model.needs, batch))
    assert len(removed) >= 1
    for expected, lacking in removed:
        with pytest.raises(ViewsMissing) as caught:
            model(lacking)  # forward checks before any computation
        message = str(caught.value)
        assert message.startswith(f"objective {name}: {expected}"), message
        assert "\n" not in message


def test_the_declarations_of_each_objective() -> None:
    """The views and relative transforms each objective's docstring says it reads."""
    needs = {name: cls.view_needs(cls.config_cls()) for name, cls in OBJECTIVES.items()}
    assert needs["vicreg"] == needs["simclr"] == ViewNeeds(views=2)
    assert needs["essl"] == ViewNeeds(views=6, params=tuple((i, "rotation_angle") for i in range(2, 6)))
    assert needs["care"] == ViewNeeds(views=4, params=((2, "chunk"),))
    assert needs["sie"] == ViewNeeds(views=2, action="rotation", actions=1)
    assert needs["seq_jepa"] == ViewNeeds(views=4, action="rotation", actions=3)


def test_inconsistent_declarations_are_refused() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        ViewNeeds(views=2, action="rotation")  # an action but no count
    with pytest.raises(ValueError, match="outside"):
        ViewNeeds(views=2, params=((2, "chunk"),))


def test_recipe_options_reach_the_augmenter() -> None:
    """``objective.seq_jepa.sequence_length`` sets the sequence recipe's M; ``chunk_size`` the
    care recipe's chunks, whichever objective uses that recipe."""
    cfg = _run_config("seq_jepa", sequence_length=5)
    assert cfg.augment.sequence_length == 5 and len(build_recipe(cfg.augment).views) == 6
    batch = _batch(cfg)
    assert len(batch.views) == 6 and batch.relative["rotation"].shape[1] == 5
    care = RunConfig(objective={"name": "care", "care": {"chunk_size": 2}}, data={"batch_size": 8})
    assert care.augment.chunk_size == 2
    chunks = _batch(care).params[2]["chunk"]
    assert int(chunks.max()) + 1 == BATCH // 2
    borrowed = RunConfig(objective={"name": "simclr", "care": {"chunk_size": 2}},
                         augment={"recipe": "care"})
    assert borrowed.augment.chunk_size == 2


@pytest.mark.parametrize(("overrides", "message"), [
    (["objective.name=care", "augment.recipe=simclr"],
     "augment.recipe: objective care reads 4 views, recipe 'simclr' makes 2; use "
     "augment.recipe=care (its own recipe)"),
    (["objective.name=essl", "augment.recipe=care"],
     "augment.recipe: objective essl reads 6 views, recipe 'care' makes 4; use "
     "augment.recipe=essl (its own recipe)"),
    (["objective.name=seq_jepa", "augment.recipe=pair", "objective.seq_jepa.action=augment"],
     "augment.recipe: objective seq_jepa reads 4 views, recipe 'pair' makes 2"),
    (["objective.name=sie", "augment.recipe=vicreg", "objective.sie.action=augment"],
     "augment.recipe: objective sie reads 1 relative transform(s) 'augment' between views, "
     "recipe 'vicreg' makes 0; use augment.recipe=pair (its own recipe)"),
])
def test_a_recipe_short_of_the_declaration_is_refused_while_loading(overrides, message) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    assert str(caught.value).startswith(message), str(caught.value)


def test_another_recipe_that_gives_what_is_declared_is_accepted() -> None:
    # SIE reads one relative transform: the sequence recipe's first pair serves.
    cfg = load_config(None, ["objective.name=sie", "objective.sie.action=augment",
                             "augment.recipe=sequence"])
    assert cfg.augment.recipe == "sequence"
