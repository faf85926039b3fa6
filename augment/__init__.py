"""View generation: per-sample params drawn from a CPU generator, applied on the images' device.

``ViewAugmenter(cfg, mean, std, output_size)(images_uint8, generator, chunks=None)`` returns a
``ViewBatch`` whose ``params`` hold, per view, the values actually applied (neutral where an op was
skipped); ``params_to_vector`` flattens them in the fixed ``PARAM_VECTOR_LAYOUT``. Recipes (named
view sets) live in ``augment.recipes.RECIPES``. The default engine is the fused, sync-free program
(``augment.program`` over ``augment.fused``); ``augment.ops`` holds the reference ops it is tested
against (``augment.reference``).
"""

from augment.batch import ViewBatch
from augment.config import AugmentConfig
from augment.ops import apply_view
from augment.pipeline import ViewAugmenter
from augment.relative import RELATIVE_LAYOUTS, relative_dim, relative_vectors
from augment.recipes import RECIPES, Recipe, ViewSpec, build_recipe
from augment.reference import ReferenceViewAugmenter
from augment.sampling import (
    PARAM_KEYS,
    PARAM_VECTOR_LAYOUT,
    neutral_params,
    params_to_vector,
    sample_view_params,
)
from augment.view_config import ViewConfig

__all__ = [
    "PARAM_KEYS",
    "PARAM_VECTOR_LAYOUT",
    "RECIPES",
    "RELATIVE_LAYOUTS",
    "AugmentConfig",
    "Recipe",
    "ReferenceViewAugmenter",
    "ViewAugmenter",
    "ViewBatch",
    "ViewConfig",
    "ViewSpec",
    "apply_view",
    "build_recipe",
    "neutral_params",
    "params_to_vector",
    "relative_dim",
    "relative_vectors",
    "sample_view_params",
]
