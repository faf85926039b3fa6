"""Per-sample augmentation parameters: sampled on the CPU from an explicit generator.

Every call draws the same number of random values for a given batch size, whatever the
probabilities are, so the generator state after a call depends only on ``(seed, batch size,
chunks)``: seeding per (seed, step, rank) reproduces a run exactly after a resume.

Params of one view (every tensor has leading dimension ``B``; float32 unless noted):

- ``crop_box``: ``B x 4`` ``(x0, y0, x1, y1)``, fractions of the source width/height; the crop covers
  source pixels ``[x0 * W, x1 * W) x [y0 * H, y1 * H)`` (pixel-aligned, as torchvision).
- ``flip``: 1 where the crop was flipped left-right.
- ``jitter_applied``; ``brightness``, ``contrast``, ``saturation`` (factors, neutral 1);
  ``hue`` (shift in turns, neutral 0); ``jitter_order`` (``B x 4`` int64: op indices in the order
  applied, 0 brightness, 1 contrast, 2 saturation, 3 hue; neutral ``0, 1, 2, 3``).
- ``grayscale``; ``blur_applied``; ``blur_sigma`` (pixels, neutral 0); ``solarize``.
- ``rotation_angle``: degrees, counter-clockwise as displayed, neutral 0.

Rows where an op was skipped hold its neutral values, never the unused random draws.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from augment.config import ViewConfig

CROP_TRIES = 10
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
PARAM_KEYS = (
    "crop_box",
    "flip",
    "jitter_applied",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "jitter_order",
    "grayscale",
    "blur_applied",
    "blur_sigma",
    "solarize",
    "rotation_angle",
)
# Columns of params_to_vector; jitter_order is left out (it reorders, it does not parametrise).
PARAM_VECTOR_LAYOUT = (
    "crop_x0",
    "crop_y0",
    "crop_x1",
    "crop_y1",
    "flip",
    "jitter_applied",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "grayscale",
    "blur_applied",
    "blur_sigma",
    "solarize",
    "rotation_cos",
    "rotation_sin",
)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _central_crop(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's fallback crop size (h, w): the whole image, clipped to the ratio range."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return int(round(width / ratio[0])), width
    if in_ratio > ratio[1]:
        return height, int(round(height * ratio[1]))
    return height, width


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    tries: int = CROP_TRIES,
) -> Tensor:
    """RandomResizedCrop boxes, ``n x 4`` normalised ``(x0, y0, x1, y1)``, vectorised over tries.

    Each sample draws ``tries`` (area, log-ratio) candidates at once and keeps the first that fits
    the image; a sample with none falls back to torchvision's central crop. Sizes are rounded to
    whole pixels and the top-left corner is a uniform integer, as in torchvision.
    """
    # float64 so that rounding to whole pixels matches torchvision's Python-float arithmetic.
    draws = torch.rand(n, 2, tries, generator=generator, dtype=torch.float64)
    target = float(height * width) * (scale[0] + (scale[1] - scale[0]) * draws[:, 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[:, 1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    found = fits.any(dim=1)
    fb_h, fb_w = _central_crop(height, width, ratio)
    w = torch.where(found, w.gather(1, first).squeeze(1), float(fb_w))
    h = torch.where(found, h.gather(1, first).squeeze(1), float(fb_h))

    corner = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.minimum(torch.floor(corner[:, 0] * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(corner[:, 1] * (width - w + 1)), width - w)
    # torchvision centres the fallback crop instead of placing it at random.
    top = torch.where(found, top, float((height - fb_h) // 2))
    left = torch.where(found, left, float((width - fb_w) // 2))
    box = torch.stack([left / width, top / height, (left + w) / width, (top + h) / height], dim=1)
    return box.to(torch.float32)


def chunk_sizes(batch_size: int, chunks: int) -> list[int]:
    """Sizes of ``chunks`` contiguous chunks covering ``batch_size`` rows (as ``torch.tensor_split``)."""
    if not 1 <= chunks <= batch_size:
        raise ValueError(f"chunks must be in [1, batch size = {batch_size}], got {chunks}")
    base, extra = divmod(batch_size, chunks)
    return [base + 1 if k < extra else base for k in range(chunks)]


def _draw(
    cfg: ViewConfig, n: int, height: int, width: int, generator: torch.Generator
) -> dict[str, Tensor]:
    """``n`` independent parameter sets; the draw sequence is fixed, whatever ``cfg`` says."""
    crop_box = sample_crop_boxes(n, height, width, cfg.crop_scale, cfg.crop_ratio, generator)
    coins = torch.rand(n, 6, generator=generator, dtype=torch.float64)
    flip, jitter, gray, blur, solar, rot = (coins[:, k] for k in range(6))
    factors = {
        "brightness": _uniform(n, max(0.0, 1.0 - cfg.brightness), 1.0 + cfg.brightness, generator),
        "contrast": _uniform(n, max(0.0, 1.0 - cfg.contrast), 1.0 + cfg.contrast, generator),
        "saturation": _uniform(n, max(0.0, 1.0 - cfg.saturation), 1.0 + cfg.saturation, generator),
        "hue": _uniform(n, -cfg.hue, cfg.hue, generator),
    }
    order_keys = torch.rand(n, len(JITTER_OPS), generator=generator)
    sigma = _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], generator)
    angle = _uniform(n, -cfg.rotation_degrees, cfg.rotation_degrees, generator)

    jitter_on = jitter < cfg.jitter_p
    blur_on = blur < cfg.blur_p
    rot_on = rot < cfg.rotation_p
    neutral_order = torch.arange(len(JITTER_OPS)).expand(n, -1)
    order = order_keys.argsort(dim=1) if cfg.jitter_random_order else neutral_order
    params = {
        "crop_box": crop_box,
        "flip": (flip < cfg.flip_p).float(),
        "jitter_applied": jitter_on.float(),
        "brightness": torch.where(jitter_on, factors["brightness"], 1.0).float(),
        "contrast": torch.where(jitter_on, factors["contrast"], 1.0).float(),
        "saturation": torch.where(jitter_on, factors["saturation"], 1.0).float(),
        "hue": torch.where(jitter_on, factors["hue"], 0.0).float(),
        "jitter_order": torch.where(jitter_on[:, None], order, neutral_order).contiguous(),
        "grayscale": (gray < cfg.grayscale_p).float(),
        "blur_applied": blur_on.float(),
        "blur_sigma": torch.where(blur_on, sigma, 0.0).float(),
        "solarize": (solar < cfg.solarize_p).float(),
        "rotation_angle": torch.where(rot_on, angle, 0.0).float(),
    }
    return params


def sample_view_params(
    cfg: ViewConfig,
    batch_size: int,
    height: int,
    width: int,
    generator: torch.Generator,
    chunks: int | None = None,
) -> dict[str, Tensor]:
    """Sample one view's params for ``batch_size`` source images of ``height x width`` pixels (CPU).

    With ``chunks = K`` the batch is split into K contiguous chunks (sizes as ``torch.tensor_split``)
    and every row of a chunk shares one parameter set.
    """
    if generator.device.type != "cpu":
        raise ValueError(f"augmentation params are sampled on the CPU, got a {generator.device} generator")
    if chunks is None:
        return _draw(cfg, batch_size, height, width, generator)
    sizes = torch.tensor(chunk_sizes(batch_size, chunks))
    shared = _draw(cfg, chunks, height, width, generator)
    return {key: value.repeat_interleave(sizes, dim=0) for key, value in shared.items()}


def neutral_params(crop_box: Tensor) -> dict[str, Tensor]:
    """Params that only crop (``crop_box``: ``B x 4`` normalised) and leave every other op neutral."""
    n = crop_box.shape[0]
    zeros = torch.zeros(n, device=crop_box.device)
    ones = torch.ones(n, device=crop_box.device)
    return {
        "crop_box": crop_box.float(),
        "flip": zeros.clone(),
        "jitter_applied": zeros.clone(),
        "brightness": ones.clone(),
        "contrast": ones.clone(),
        "saturation": ones.clone(),
        "hue": zeros.clone(),
        "jitter_order": torch.arange(len(JITTER_OPS), device=crop_box.device).expand(n, -1).contiguous(),
        "grayscale": zeros.clone(),
        "blur_applied": zeros.clone(),
        "blur_sigma": zeros.clone(),
        "solarize": zeros.clone(),
        "rotation_angle": zeros.clone(),
    }


def params_to_vector(params: dict[str, Tensor]) -> Tensor:
    """Flatten one view's params to ``B x 16`` float32 in the order of ``PARAM_VECTOR_LAYOUT``.

    The rotation angle enters as (cos, sin) so that the vector is continuous across +-180 degrees.
    """
    missing = [key for key in PARAM_KEYS if key != "jitter_order" and key not in params]
    if missing:
        raise KeyError(f"params lack {missing}")
    radians = torch.deg2rad(params["rotation_angle"].float())
    scalars = [params[key].float() for key in PARAM_VECTOR_LAYOUT[4:14]]
    columns = [params["crop_box"].float(), *(s[:, None] for s in scalars), radians.cos()[:, None]]
    return torch.cat([*columns, radians.sin()[:, None]], dim=1)
