"""Typed configuration of view augmentation: one ``ViewConfig`` per view, one ``AugmentConfig`` per run."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

def _ordered_pair(value: tuple[float, float], name: str) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {value}")
    return value


class ViewConfig(BaseModel):
    """Probabilities and ranges of every op for one view (torchvision semantics).

    Op order on the device: crop+resize -> horizontal flip -> rotation -> colour jitter ->
    grayscale -> Gaussian blur -> solarize -> normalise. Geometric ops come first so that the
    photometric ops see exactly the pixels the encoder sees (rotation's zero-filled corners included).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    crop_scale: tuple[float, float] = Field(
        (0.08, 1.0), description="RandomResizedCrop area fraction range of the source image."
    )
    crop_ratio: tuple[float, float] = Field(
        (3.0 / 4.0, 4.0 / 3.0), description="Aspect-ratio (w/h) range, sampled log-uniformly."
    )
    flip_p: float = Field(0.5, ge=0.0, le=1.0, description="Horizontal flip probability.")
    jitter_p: float = Field(0.8, ge=0.0, le=1.0, description="Probability of applying colour jitter.")
    brightness: float = Field(0.4, ge=0.0, description="Brightness factor ~ U(max(0, 1-b), 1+b).")
    contrast: float = Field(0.4, ge=0.0, description="Contrast factor ~ U(max(0, 1-c), 1+c).")
    saturation: float = Field(0.2, ge=0.0, description="Saturation factor ~ U(max(0, 1-s), 1+s).")
    hue: float = Field(0.1, ge=0.0, le=0.5, description="Hue shift ~ U(-h, h), in turns.")
    jitter_random_order: bool = Field(
        True,
        description="Draw the order of the four jitter ops per sample (as torchvision does per image); "
        "otherwise brightness, contrast, saturation, hue. The order is recorded in params.",
    )
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0, description="RandomGrayscale probability.")
    blur_p: float = Field(1.0, ge=0.0, le=1.0, description="Gaussian blur probability.")
    blur_sigma: tuple[float, float] = Field((0.1, 2.0), description="Blur sigma ~ U(min, max), pixels.")
    blur_kernel_fraction: float = Field(
        0.1, gt=0.0, le=1.0, description="Blur kernel side as a fraction of the output side (made odd, >= 3)."
    )
    solarize_p: float = Field(0.0, ge=0.0, le=1.0, description="Solarization probability.")
    solarize_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Pixels >= threshold are inverted.")
    rotation_p: float = Field(0.0, ge=0.0, le=1.0, description="Probability of a random rotation.")
    rotation_degrees: float = Field(0.0, ge=0.0, le=180.0, description="Angle ~ U(-deg, deg), degrees.")

    @field_validator("crop_scale")
    @classmethod
    def _check_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] or value[1] > 1.0:
            raise ValueError(f"crop_scale must lie in (0, 1], got {value}")
        return _ordered_pair(value, "crop_scale")

    @field_validator("crop_ratio")
    @classmethod
    def _check_ratio(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0.0:
            raise ValueError(f"crop_ratio must be positive, got {value}")
        return _ordered_pair(value, "crop_ratio")

    @field_validator("blur_sigma")
    @classmethod
    def _check_sigma(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0.0:
            raise ValueError(f"blur_sigma must be positive (0 is the 'not applied' value), got {value}")
        return _ordered_pair(value, "blur_sigma")

    def blur_kernel_size(self, output_size: int) -> int:
        """Odd kernel side for ``output_size`` pixels: 3 at 32 px, 7 at 64 px, 23 at 224 px."""
        size = max(3, int(math.floor(self.blur_kernel_fraction * output_size)))
        return size if size % 2 == 1 else size + 1


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
    chunk_size: int = Field(
        16,
        ge=1,
        description="CARE: images per chunk sharing one sampled augmentation pair; a batch of B "
        "gets max(1, B // chunk_size) chunks (the paper's K = 16 chunks at batch 256).",
    )
    sequence_length: int = Field(
        3, ge=1, description="seq-JEPA: observed views M per sample (the recipe makes M + 1 views)."
    )
    render_augment: Literal["light", "none"] = Field(
        "light",
        description="pair/sequence recipes with source='distinct': ops on top of the distinct "
        "renderings. 'light': crop scale (0.8, 1) and brightness/contrast 0.2, no flip and no hue "
        "change (both would falsify the rotation and hue latents); 'none': resize only.",
    )

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, value: str) -> str:
        # Imported here: recipes.py imports ViewConfig from this module.
        from augment.recipes import RECIPES

        if value not in RECIPES:
            known = ", ".join(sorted(RECIPES))
            raise ValueError(f"augment.recipe: unknown recipe {value!r}; known recipes: {known}")
        return value

    @field_validator("small_crop_scale")
    @classmethod
    def _check_small_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] or value[1] > 1.0:
            raise ValueError(f"small_crop_scale must lie in (0, 1], got {value}")
        return _ordered_pair(value, "small_crop_scale")

    @model_validator(mode="after")
    def _views_and_scale(self) -> AugmentConfig:
        if self.views is not None and "crop_scale_min" in self.model_fields_set:
            raise ValueError(
                "augment.crop_scale_min applies to recipe-built views only; with augment.views set, "
                "give crop_scale in each view instead"
            )
        return self
