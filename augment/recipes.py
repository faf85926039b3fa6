"""Named view recipes: which views an objective gets, cut from which decoded view, at which size.

A recipe builder takes the run's ``AugmentConfig`` and returns a ``Recipe``. To add one, write a
builder and add it to ``RECIPES`` (an explicit dict; nothing registers itself at import time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from augment.view_config import ViewConfig


class RecipeOptions(Protocol):
    """What the recipe builders read from the run's ``augment.config.AugmentConfig``.

    A protocol rather than an import: ``AugmentConfig`` checks its ``recipe`` against ``RECIPES``,
    so importing it here would close an import circle.
    """

    @property
    def recipe(self) -> str: ...
    @property
    def views(self) -> Sequence[ViewConfig] | None: ...
    @property
    def crop_scale_min(self) -> float: ...
    @property
    def source(self) -> Literal["same", "distinct"]: ...
    @property
    def color_strength(self) -> float: ...
    @property
    def blur_p(self) -> float: ...
    @property
    def small_crop_size(self) -> int | None: ...
    @property
    def small_crop_scale(self) -> tuple[float, float]: ...
    @property
    def sequence_length(self) -> int: ...
    @property
    def render_augment(self) -> Literal["light", "none"]: ...


@dataclass(frozen=True)
class ViewSpec:
    """One output view: its op settings, the decoded view it is cut from, and its side in pixels.

    Attributes:
        config: the op settings (ignored when ``same_params_as`` is set).
        source: decoded view the view is cut from.
        output_size: side in pixels; ``None`` means ``output_fraction`` of the augmenter's
            ``output_size`` when that is set, else the augmenter's ``output_size``.
        output_fraction: side as a fraction of the augmenter's ``output_size`` (rounded, >= 1).
        chunked: sample one parameter set per chunk of ``AugmentConfig.chunk_size`` rows (CARE);
            the view's params then carry ``chunk`` (``B`` int64 chunk index).
        same_params_as: index of an earlier view whose params *and* pixels this view reuses.
        quarter_turns: rotate the finished view by ``k * 90`` degrees counter-clockwise as displayed
            (``torch.rot90``, exact); its ``rotation_angle`` param grows by ``90 k`` (wrapped).
    """

    config: ViewConfig
    source: int = 0
    output_size: int | None = None
    output_fraction: float | None = None
    chunked: bool = False
    same_params_as: int | None = None
    quarter_turns: int = 0

    def side(self, default: int) -> int:
        """Side in pixels of this view for an augmenter whose ``output_size`` is ``default``."""
        if self.output_size is not None:
            return self.output_size
        if self.output_fraction is not None:
            return max(1, round(self.output_fraction * default))
        return default


@dataclass(frozen=True)
class Recipe:
    """The views of one recipe, the view pairs that get relative transforms, and free-form flags.

    ``relative`` lists ``(i, j)`` output-view pairs; the pipeline fills ``ViewBatch.relative`` with
    the transformation from view ``i`` to view ``j`` for each (``augment.relative``).
    """

    views: tuple[ViewSpec, ...]
    flags: frozenset[str] = field(default_factory=frozenset)
    relative: tuple[tuple[int, int], ...] = ()


RecipeBuilder = Callable[[RecipeOptions], Recipe]


def source_index(cfg: RecipeOptions, view: int) -> int:
    """Decoded view that output view ``view`` is cut from: 0 for ``same``, ``view`` for ``distinct``."""
    return 0 if cfg.source == "same" else view


def _vicreg_views(cfg: RecipeOptions) -> tuple[ViewConfig, ViewConfig]:
    scale = (cfg.crop_scale_min, 1.0)
    common = dict(
        crop_scale=scale, flip_p=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1
    )
    first = ViewConfig(**common, grayscale_p=0.2, blur_p=1.0, solarize_p=0.0)
    second = ViewConfig(**common, grayscale_p=0.2, blur_p=0.1, solarize_p=0.2)
    return first, second


def vicreg_recipe(cfg: RecipeOptions) -> Recipe:
    """Two views with the asymmetric settings of VICReg (Bardes et al., ICLR 2022, appendix C.1).

    Both: crop scale ``(crop_scale_min, 1)``, flip 0.5, colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8,
    grayscale 0.2. Blur p 1.0 / 0.1 and solarization p 0.0 / 0.2 for the first / second view.
    """
    first, second = _vicreg_views(cfg)
    return Recipe(views=(ViewSpec(first, source_index(cfg, 0)), ViewSpec(second, source_index(cfg, 1))))


def simclr_view(cfg: RecipeOptions, crop_scale: tuple[float, float] | None = None) -> ViewConfig:
    """SimCLR's augmentation (Chen et al., ICML 2020, appendix A) at strength ``cfg.color_strength``.

    Crop scale ``(crop_scale_min, 1)``, flip 0.5, colour jitter ``(0.8s, 0.8s, 0.8s, 0.2s)`` with
    p 0.8 in random order, grayscale 0.2, Gaussian blur with p ``cfg.blur_p`` and sigma in
    ``[0.1, 2]`` with a kernel of 10% of the side. CIFAR settings: ``s = 0.5``, no blur.
    """
    s = cfg.color_strength
    return ViewConfig(
        crop_scale=crop_scale or (cfg.crop_scale_min, 1.0), flip_p=0.5, jitter_p=0.8,
        brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s, grayscale_p=0.2,
        blur_p=cfg.blur_p, solarize_p=0.0,
    )


def simclr_recipe(cfg: RecipeOptions) -> Recipe:
    """Two views drawn from the same distribution, :func:`simclr_view`."""
    view = simclr_view(cfg)
    return Recipe(views=(ViewSpec(view, source_index(cfg, 0)), ViewSpec(view, source_index(cfg, 1))))


def essl_recipe(cfg: RecipeOptions) -> Recipe:
    """E-SSL (Dangovski et al., ICLR 2022): two SimCLR views + one small crop in its 4 rotations.

    Views 0, 1: :func:`simclr_view`. View 2: a separately augmented crop of decoded view 0 with
    the same ops, scale ``small_crop_scale`` (0.2, 1) and side ``small_crop_size`` (default half the
    output side: 16 px at 32 px, as the official CIFAR-10 code). Views 3-5 reuse view 2's pixels and
    params turned by 90, 180, 270 degrees, so ``rotation_angle / 90`` of views 2-5 is the 4-way label.
    """
    view = simclr_view(cfg)
    small = simclr_view(cfg, crop_scale=cfg.small_crop_scale)
    size, fraction = (cfg.small_crop_size, None) if cfg.small_crop_size else (None, 0.5)
    crop = ViewSpec(small, 0, output_size=size, output_fraction=fraction)
    turns = tuple(replace(crop, same_params_as=2, quarter_turns=k) for k in (1, 2, 3))
    return Recipe(views=(ViewSpec(view, source_index(cfg, 0)), ViewSpec(view, source_index(cfg, 1)),
                         crop, *turns))


def care_recipe(cfg: RecipeOptions) -> Recipe:
    """CARE (Gupta et al., 2023): two independent views + a chunk-shared pair, all SimCLR-augmented.

    Views 0, 1: per-image augmentations (InfoNCE). Views 2, 3: both cut from decoded view 0 with one
    parameter set per chunk of ``chunk_size`` rows, i.e. within a chunk every image gets the same
    ``t`` (view 2) and the same ``t'`` (view 3), drawn independently per chunk (the equivariance
    loss). The official CIFAR code applies crop (0.08, 1), flip, jitter (0.4, 0.4, 0.4, 0.1) p 0.8,
    grayscale 0.2 and blur p 0.5 to all four: ``color_strength = 0.5, blur_p = 0.5``.
    """
    view = simclr_view(cfg)
    shared = ViewSpec(view, 0, chunked=True)
    return Recipe(views=(ViewSpec(view, source_index(cfg, 0)), ViewSpec(view, source_index(cfg, 1)),
                         shared, shared))


def _render_view(cfg: RecipeOptions) -> ViewConfig:
    if cfg.render_augment == "none":
        return ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                          grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
    return ViewConfig(crop_scale=(0.8, 1.0), flip_p=0.0, jitter_p=0.8, brightness=0.2, contrast=0.2,
                      saturation=0.0, hue=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


def _sequence_configs(cfg: RecipeOptions, count: int) -> list[ViewConfig]:
    """``count`` view configs: renders + light ops when distinct, else VICReg's first views + second."""
    if cfg.source == "distinct":
        return [_render_view(cfg)] * count
    first, second = _vicreg_views(cfg)
    return [first] * (count - 1) + [second]


def pair_recipe(cfg: RecipeOptions) -> Recipe:
    """Two views + the relative transform from view 0 to view 1 (SIE, Garrido et al., ICML 2023).

    With ``source='distinct'`` the views are two renderings of the object (the true rotation is in
    ``relative['rotation']``) with ``render_augment`` ops on top, as SIE trains on 3DIEBench; with
    ``source='same'`` they are VICReg's two augmented views and only ``relative['augment']`` exists.
    """
    configs = _sequence_configs(cfg, 2)
    views = tuple(ViewSpec(c, source_index(cfg, k)) for k, c in enumerate(configs))
    return Recipe(views=views, relative=((0, 1),))


def sequence_recipe(cfg: RecipeOptions) -> Recipe:
    """``M = sequence_length`` observed views + 1 target view, with consecutive relative transforms.

    ``relative[kind][:, i]`` takes view ``i`` to view ``i + 1`` (``i < M``); the last one goes from the
    last observed view to the target (seq-JEPA, Ghaemi et al., NeurIPS 2025). Distinct sources:
    renderings with ``render_augment`` ops (the paper's 3DIEBench setting, data.views >= M + 1);
    same source: the released CIFAR-100 setting, VICReg's first-view ops for the observed views and
    its second-view ops for the target.
    """
    count = cfg.sequence_length + 1
    views = tuple(ViewSpec(c, source_index(cfg, k)) for k, c in enumerate(_sequence_configs(cfg, count)))
    return Recipe(views=views, relative=tuple((k, k + 1) for k in range(count - 1)))


RECIPES: dict[str, RecipeBuilder] = {
    "vicreg": vicreg_recipe,
    "simclr": simclr_recipe,
    "essl": essl_recipe,
    "care": care_recipe,
    "pair": pair_recipe,
    "sequence": sequence_recipe,
}


def build_recipe(cfg: RecipeOptions) -> Recipe:
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
