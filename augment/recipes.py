"""Named view recipes: which views an objective gets, cut from which decoded view, at which size.

A recipe builder takes the run's ``AugmentConfig`` and returns a ``Recipe``. To add one, write a
builder and add it to ``RECIPES`` (an explicit dict; nothing registers itself at import time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from augment.config import ViewConfig

if TYPE_CHECKING:
    from augment.config import AugmentConfig


@dataclass(frozen=True)
class ViewSpec:
    """One output view: its op settings, the decoded view it is cut from, and its side in pixels.

    ``output_size`` ``None`` means the augmenter's ``output_size`` (the encoder's input size).
    """

    config: ViewConfig
    source: int = 0
    output_size: int | None = None


@dataclass(frozen=True)
class Recipe:
    """The views of one recipe plus free-form flags for objectives (e.g. ``"relative"``)."""

    views: tuple[ViewSpec, ...]
    flags: frozenset[str] = field(default_factory=frozenset)


RecipeBuilder = Callable[["AugmentConfig"], Recipe]


def source_index(cfg: AugmentConfig, view: int) -> int:
    """Decoded view that output view ``view`` is cut from: 0 for ``same``, ``view`` for ``distinct``."""
    return 0 if cfg.source == "same" else view


def vicreg_recipe(cfg: AugmentConfig) -> Recipe:
    """Two views with the asymmetric settings of VICReg (Bardes et al., ICLR 2022, appendix C.1).

    Both: crop scale ``(crop_scale_min, 1)``, flip 0.5, colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8,
    grayscale 0.2. Blur p 1.0 / 0.1 and solarization p 0.0 / 0.2 for the first / second view.
    """
    scale = (cfg.crop_scale_min, 1.0)
    common = dict(
        crop_scale=scale, flip_p=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1
    )
    first = ViewConfig(**common, grayscale_p=0.2, blur_p=1.0, solarize_p=0.0)
    second = ViewConfig(**common, grayscale_p=0.2, blur_p=0.1, solarize_p=0.2)
    return Recipe(views=(ViewSpec(first, source_index(cfg, 0)), ViewSpec(second, source_index(cfg, 1))))


RECIPES: dict[str, RecipeBuilder] = {
    "vicreg": vicreg_recipe,
}


def build_recipe(cfg: AugmentConfig) -> Recipe:
    """The recipe ``cfg.recipe`` with ``cfg.views`` (when given) replacing its per-view op settings."""
    recipe = RECIPES[cfg.recipe](cfg)
    if cfg.views is None:
        return recipe
    if len(cfg.views) != len(recipe.views):
        raise ValueError(
            f"augment.views: recipe {cfg.recipe!r} has {len(recipe.views)} views, "
            f"got {len(cfg.views)} view configs"
        )
    views = tuple(replace(spec, config=view) for spec, view in zip(recipe.views, cfg.views, strict=True))
    return replace(recipe, views=views)
