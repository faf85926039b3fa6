"""Objective, view recipe and data: do they fit together? Checked before anything starts.

Every objective declares what it reads (:meth:`objectives.base.Objective.view_needs`: how many
views, which relative transform between views and how many of them) and the recipe it was
written for (``view_recipe``, the default of ``augment.recipe``). Which views and relative
transforms a batch carries follows from the recipe (its views and view pairs), from
``augment.source`` (latent transforms need views cut from different renderings) and from the data
(latent transforms need the latents). The rules mirror :func:`augment.relative.relative_vectors`,
which computes them; without this check a mismatch surfaced in every Ray worker after the
cluster had started. What is declared but not checkable from the config alone (a per-view param
such as CARE's chunk ids) is checked on every batch by ``Objective.check_views``.

``LATENTS_NEEDED`` is the one table naming the latents each latent transform is computed from.
"""

from __future__ import annotations

import json
from typing import Protocol

from augment.config import AugmentConfig
from augment.relative import RELATIVE_LAYOUTS
from pretrain.config.objective import ObjectiveSelection


class _Data(Protocol):
    @property
    def path(self) -> str | None: ...


class RunSections(Protocol):
    """The parts of a ``RunConfig`` these checks read. A protocol rather than ``RunConfig``
    itself: the schema runs :func:`recipe_problem` while it validates, so importing it here
    would close an import circle."""

    @property
    def objective(self) -> ObjectiveSelection: ...
    @property
    def augment(self) -> AugmentConfig: ...
    @property
    def data(self) -> _Data: ...

# Relative transforms computed from per-view latents (augment.relative.relative_vectors).
LATENTS_NEEDED: dict[str, tuple[str, ...]] = {
    "rotation": ("quaternion",),
    "rotation_hue": ("quaternion", "object_hue", "background_hue"),
}
assert set(LATENTS_NEEDED) <= set(RELATIVE_LAYOUTS)


def required_action(cfg: RunSections) -> str | None:
    """The ``ViewBatch.relative`` key the selected objective reads, or None."""
    return cfg.objective.view_needs().action


def recipe_problem(cfg: RunSections) -> str | None:
    """Why the recipe cannot give the objective the views or the relative transforms it declared
    (one line naming the key), or None. Part of config validation."""
    from augment.recipes import build_recipe

    needs = cfg.objective.view_needs()
    name, recipe = cfg.objective.name, build_recipe(cfg.augment)
    own = cfg.objective.objective_cls().view_recipe
    use_own = f"use augment.recipe={own} (its own recipe)"
    if len(recipe.views) < needs.views:
        return (f"augment.recipe: objective {name} reads {needs.views} views, recipe "
                f"{cfg.augment.recipe!r} makes {len(recipe.views)}; {use_own}")
    if len(recipe.relative) < needs.actions:
        return (f"augment.recipe: objective {name} reads {needs.actions} relative transform(s) "
                f"{needs.action!r} between views, recipe {cfg.augment.recipe!r} makes "
                f"{len(recipe.relative)}; {use_own}")
    return None


def first_sample_latents(url: str) -> set[str]:
    """Names of the per-view latents in the first sample of shard ``url`` (empty for images)."""
    from pretrain.data.format import LATENTS_KEY
    from pretrain.data.sources import iter_shard

    for sample in iter_shard(url, 0, 1):
        raw = sample.get(LATENTS_KEY)
        if raw is None:
            return set()
        try:
            latents = json.loads(raw)
        except ValueError:
            return set()
        return set(latents) if isinstance(latents, dict) else set()
    return set()


def data_problem(cfg: RunSections, first_shard: str) -> str | None:
    """Why the views and the data at ``first_shard`` cannot give the objective its latent action
    (views cut from one rendering, or data without latents), or None. Checked when the data is
    known, just before training starts; :func:`recipe_problem` is part of config validation."""
    from augment.recipes import build_recipe

    action = required_action(cfg)
    needed = LATENTS_NEEDED.get(action or "")
    if not needed:
        return None
    name, recipe = cfg.objective.name, build_recipe(cfg.augment)
    sources = [spec.source for spec in recipe.views]
    if any(sources[i] == sources[j] for i, j in recipe.relative):
        return (f"augment.source: objective.{name}.action={action} needs views cut from different "
                f"renderings (augment.source=distinct and multi-view data); with augment.source="
                f"{cfg.augment.source} use objective.{name}.action=augment")
    missing = [name for name in needed if name not in first_sample_latents(first_shard)]
    if not missing:
        return None
    name = cfg.objective.name
    return (f"objective.{name}.action: {action!r} is computed from the latents "
            f"{', '.join(missing)}, which the data at {cfg.data.path} does not hold (plain "
            "images); "
            f"use synthetic 3D data, or objective.{name}.action=augment with augment.source=same")
