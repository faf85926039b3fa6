"""Typed op settings of one view (``ViewConfig``): probabilities and ranges, torchvision semantics.

Kept apart from ``augment.config`` so that the recipes, which build views, and the run config,
which names a recipe, do not import each other.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator


def ordered_pair(value: tuple[float, float], name: str) -> tuple[float, float]:
    """``value`` unchanged when it is a ``(low, high)`` pair with ``low <= high``; else ``ValueError``."""
    if value[0] > value[1]:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {value}")
    return value


def area_fraction_pair(value: tuple[float, float], name: str) -> tuple[float, float]:
    """A ``(low, high)`` range of crop areas as fractions of the image: within (0, 1], ordered."""
    if not 0.0 < value[0] or value[1] > 1.0:
        raise ValueError(f"{name} must lie in (0, 1], got {value}")
    return ordered_pair(value, name)


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
        return area_fraction_pair(value, "crop_scale")

    @field_validator("crop_ratio")
    @classmethod
    def _check_ratio(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0.0:
            raise ValueError(f"crop_ratio must be positive, got {value}")
        return ordered_pair(value, "crop_ratio")

    @field_validator("blur_sigma")
    @classmethod
    def _check_sigma(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0.0:
            raise ValueError(f"blur_sigma must be positive (0 is the 'not applied' value), got {value}")
        return ordered_pair(value, "blur_sigma")

    def blur_kernel_size(self, output_size: int) -> int:
        """Odd kernel side for ``output_size`` pixels: 3 at 32 px, 7 at 64 px, 23 at 224 px."""
        size = max(3, int(math.floor(self.blur_kernel_fraction * output_size)))
        return size if size % 2 == 1 else size + 1
