"""Objective, view recipe and data: do they fit together? Checked before anything starts.

An objective declares the recipe it was written for (``Objective.view_recipe``, used as the
default), and its settings may name the relative transform it reads between views: a field
``action`` (a key of ``ViewBatch.relative``), unless a field ``action_conditioning`` turns actions
off. Which relative transforms a batch carries follows from the recipe (its view pairs), from
``augment.source`` (latent transforms need views cut from different renderings) and from the data
(latent transforms need the latents). The rules mirror :func:`augment.relative.relative_vectors`,
which computes them; without this check a mismatch surfaced as a ``KeyError`` in every Ray worker
after the cluster had started.

The objectives carry no class-level declaration of the actions they read, so the ``action`` /
``action_conditioning`` field names are the declaration read here; ``LATENTS_NEEDED`` is the one
table, naming the latents each latent transform is computed from.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from augment.relative import RELATIVE_LAYOUTS

if TYPE_CHECKING:
    from pretrain.config.schema import RunConfig

# Relative transforms computed from per-view latents (augment.relative.relative_vectors).
LATENTS_NEEDED: dict[str, tuple[str, ...]] = {
    "rotation": ("quaternion",),
    "rotation_hue": ("quaternion", "object_hue", "background_hue"),
}
assert set(LATENTS_NEEDED) <= set(RELATIVE_LAYOUTS)


def required_action(cfg: "RunConfig") -> str | None:
    """The ``ViewBatch.relative`` key the selected objective reads, or None."""
    settings = cfg.objective.settings()
    if getattr(settings, "action_conditioning", True) is False:
        return None
    action = getattr(settings, "action", None)
    return action if isinstance(action, str) else None


def recipe_problem(cfg: "RunConfig") -> str | None:
    """Why the recipe cannot give the objective its action (no view pairs at all; one line naming
    the key), or None. Part of config validation."""
    from augment.recipes import build_recipe
    from objectives.registry import get_spec

    action = required_action(cfg)
    if action is None:
        return None
    name, recipe = cfg.objective.name, build_recipe(cfg.augment)
    own = get_spec(name).objective_cls.view_recipe
    if not recipe.relative:
        return (f"augment.recipe: objective {name} reads the relative transform {action!r} "
                f"between views, which recipe {cfg.augment.recipe!r} does not produce; use "
                f"augment.recipe={own} (its own recipe)")
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


def data_problem(cfg: "RunConfig", first_shard: str) -> str | None:
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
