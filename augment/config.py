"""Typed configuration of view augmentation: one ``AugmentConfig`` per run (``ViewConfig`` per view).

``ViewConfig`` lives in ``augment.view_config`` (re-exported here); the recipes import only that
module, so this one can check recipe names against ``augment.recipes.RECIPES`` without a circle.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from augment.recipes import RECIPES
from augment.view_config import ViewConfig, area_fraction_pair

__all__ = ["AugmentConfig", "ViewConfig"]


class AugmentConfig(BaseModel):
    """Augmentation section of the run config (``augment.*``).

    The recipe names the views an objective needs; ``views`` replaces the recipe's per-view op
    settings (it must list as many views as the recipe has), keeping its sources and sizes.
    """

    model_config = ConfigDict(extra="forbid")

    recipe: str = Field("vicreg", description="Named view recipe, a key of augment.recipes.RECIPES.")
    crop_scale_min: float = Field(
        0.08,
        gt=0.0,
        le=1.0,
        description="Lower bound of the crop area fraction for recipe-built views "
        "(0.08 as in the papers; 32-px data usually uses 0.2).",
    )
    source: Literal["same", "distinct"] = Field(
        "same",
        description="'same': every view is cut from decoded view 0; 'distinct': view i comes from "
        "decoded view i (multi-view synthetic 3D data).",
    )
    views: list[ViewConfig] | None = Field(
        None, description="Per-view op settings replacing the recipe's (crop scale included)."
    )
    # Recipe-specific options (see augment.recipes for which recipe reads which).
    color_strength: float = Field(
        1.0,
        gt=0.0,
        le=2.5,
        description="SimCLR colour-distortion strength s of the simclr/essl/care recipes: jitter "
        "(0.8s, 0.8s, 0.8s, 0.2s) with p 0.8 (SimCLR: 1.0 on ImageNet, 0.5 on CIFAR).",
    )
    blur_p: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Gaussian-blur probability of the simclr/essl/care recipes "
        "(SimCLR: 0.5 on ImageNet, 0 on CIFAR; CARE keeps 0.5 on CIFAR; E-SSL uses 0).",
    )
    small_crop_size: int | None = Field(
        None,
        ge=4,
        description="E-SSL: side of the rotated small crop in pixels; None = half the output size.",
    )
    small_crop_scale: tuple[float, float] = Field(
        (0.2, 1.0), description="E-SSL: area-fraction range of the rotated small crop."
    )
    # Objective settings the recipes read: in a run they are objective.care.chunk_size and
    # objective.seq_jepa.sequence_length, copied here by the run config (excluded from dumps,
    # so a resolved config names each once); the defaults serve standalone use of the augmenter.
    chunk_size: int = Field(
        16,
        ge=1,
        exclude=True,
        description="CARE: images per chunk sharing one sampled augmentation pair; a batch of B "
        "gets max(1, B // chunk_size) chunks (the paper's K = 16 chunks at batch 256).",
    )
    sequence_length: int = Field(
        3, ge=1, exclude=True,
        description="seq-JEPA: observed views M per sample (the recipe makes M + 1 views)."
    )
    render_augment: Literal["light", "none"] = Field(
        "light",
        description="pair/sequence recipes with source='distinct': ops on top of the distinct "
        "renderings. 'light': crop scale (0.8, 1) and brightness/contrast 0.2, no flip and no hue "
        "change (both would falsify the rotation and hue latents); 'none': resize only.",
    )
    engine: Literal["fused", "reference"] = Field(
        "fused",
        description="'fused': every op on every row with neutral parameters, fixed shapes, no "
        "host-device sync (augment.program); 'reference': the op-by-op implementation the fused "
        "one is tested against (augment.reference; slower, copies row indices to the device). "
        "Both draw the same params from the same generator.",
    )
    compile: Literal["none", "default", "cudagraphs"] = Field(
        "none",
        description="Fused engine only. 'default': torch.compile(fullgraph=True) of the device "
        "program (one compile per batch and image size, tens of seconds); 'cudagraphs': the same "
        "with CUDA-graph capture on CUDA (mode 'reduce-overhead'; a batch's views live in the "
        "graph's memory until the next call), plain compile elsewhere.",
    )

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, value: str) -> str:
        if value not in RECIPES:
            known = ", ".join(sorted(RECIPES))
            raise ValueError(f"augment.recipe: unknown recipe {value!r}; known recipes: {known}")
        return value

    @field_validator("small_crop_scale")
    @classmethod
    def _check_small_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        return area_fraction_pair(value, "small_crop_scale")

    @model_validator(mode="after")
    def _views_and_scale(self) -> AugmentConfig:
        if self.views is not None and "crop_scale_min" in self.model_fields_set:
            raise ValueError(
                "augment.crop_scale_min applies to recipe-built views only; with augment.views set, "
                "give crop_scale in each view instead"
            )
        return self

    @model_validator(mode="after")
    def _compile_needs_fused(self) -> AugmentConfig:
        if self.engine == "reference" and self.compile != "none":
            raise ValueError("augment.compile applies to augment.engine 'fused' only")
        return self
