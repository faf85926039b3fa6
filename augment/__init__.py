"""View generation: sample per-sample params on the CPU, apply them with kornia on the device.

``ViewAugmenter(cfg, mean, std, output_size)(images_uint8, generator, chunks=None)`` returns a
``ViewBatch`` whose ``params`` hold, per view, the values actually applied (neutral where an op was
skipped); ``params_to_vector`` flattens them in the fixed ``PARAM_VECTOR_LAYOUT``. Recipes (named
view sets) live in ``augment.recipes.RECIPES``.
"""

from augment.batch import ViewBatch
from augment.config import AugmentConfig, ViewConfig
from augment.ops import apply_view
from augment.pipeline import ViewAugmenter
from augment.relative import RELATIVE_LAYOUTS, relative_dim, relative_vectors
from augment.recipes import RECIPES, Recipe, ViewSpec, build_recipe
from augment.sampling import (
    PARAM_KEYS,
    PARAM_VECTOR_LAYOUT,
    neutral_params,
    params_to_vector,
    sample_view_params,
)

__all__ = [
    "PARAM_KEYS",
    "PARAM_VECTOR_LAYOUT",
    "RECIPES",
    "RELATIVE_LAYOUTS",
    "AugmentConfig",
    "Recipe",
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
