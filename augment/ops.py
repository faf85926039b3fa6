"""Applying sampled params to a batch on the images' device, without per-sample loops.

Ops are kornia's functional ops, except two measured hot spots: the crop (one torch
``grid_sample``, see ``crop_resize``) and the hue shift (``shift_hue``).

Each op touches only the rows where it was applied (selected with ``index_select`` and written
back with ``index_copy``), so skipped rows stay bit-exact and ops that reject neutral values
(blur with sigma 0) never see them. Row selection reads the *host* (CPU) copy of the params, so
no device-to-host sync happens on a GPU.

Photometric semantics follow torchvision, hence the kornia variants chosen: brightness multiplies
(``adjust_brightness_accumulative``; kornia's ``adjust_brightness`` adds), contrast blends with the
mean gray level (``adjust_contrast_with_mean_subtraction``), saturation blends with the grayscale
image (``adjust_saturation_with_gray_subtraction``), hue rotates in HSV (``shift_hue``, equal to
kornia's ``adjust_hue`` but cheaper).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_saturation_with_gray_subtraction,
    solarize,
)
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import hflip, rotate
from torch import Tensor

from augment.sampling import JITTER_OPS
from augment.view_config import ViewConfig

RowFn = Callable[..., Tensor]


def apply_to_rows(
    images: Tensor, mask: Tensor, fn: RowFn, *values: Tensor, inplace: bool = False
) -> Tensor:
    """Return ``images`` with ``fn(rows, *values_of_rows)`` written into the rows where ``mask`` is set.

    ``mask`` should live on the CPU (a device mask costs one sync); ``values`` are per-row tensors,
    each picked on its own device. Rows outside the mask are returned untouched. ``inplace`` writes
    the rows into ``images`` itself (for callers that own it) instead of into a copy.
    """
    mask = mask.detach().to("cpu", torch.bool)
    count = int(mask.sum())
    if count == 0:
        return images
    if count == mask.numel():
        return fn(images, *values)
    host_rows = mask.nonzero().squeeze(1)
    rows = host_rows.to(images.device)
    picked_values = [v.index_select(0, host_rows.to(v.device)) for v in values]
    picked = fn(images.index_select(0, rows), *picked_values)
    if inplace:
        return images.index_copy_(0, rows, picked)
    return images.index_copy(0, rows, picked)


def crop_resize(images: Tensor, crop_box: Tensor, size: int) -> Tensor:
    """Cut each row's normalised box ``(x0, y0, x1, y1)`` and resize it to ``size x size`` (bilinear).

    The box covers pixels ``[x0 W, x1 W) x [y0 H, y1 H)``; the output's corner pixels sample the
    centres of the box's corner pixels (``align_corners=True``), so for a pixel-aligned box this is
    ``F.interpolate(images[..., y0H:y1H, x0W:x1W], size, mode="bilinear", align_corners=True)`` and
    equals ``kornia.geometry.transform.crop_and_resize`` on the box's corner pixel centres. Built
    directly as one ``grid_sample`` because kornia's generic warp (perspective solve plus
    elementwise grid transform) costs 3-4x more on the CPU for the same samples.
    """
    height, width = images.shape[-2:]
    box = crop_box.to(images.device, images.dtype)
    left, top = box[:, 0] * width, box[:, 1] * height
    right, bottom = box[:, 2] * width - 1.0, box[:, 3] * height - 1.0
    # Sampling grid in grid_sample's [-1, 1] coordinates (align_corners=True: -1 and 1 are the centres
    # of the first and last pixel). The crop is axis-aligned, so the grid is an outer product of one
    # row of x and one column of y: built by broadcasting, which is ~10x cheaper than affine_grid's bmm.
    steps = torch.linspace(0.0, 1.0, size, device=images.device, dtype=images.dtype)
    xs = (left[:, None] + (right - left)[:, None] * steps) * (2.0 / max(width - 1, 1)) - 1.0
    ys = (top[:, None] + (bottom - top)[:, None] * steps) * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


def flip_rows(images: Tensor, flip: Tensor) -> Tensor:
    """Mirror left-right the rows where ``flip`` (device, 0/1) is 1."""
    return torch.where(flip.to(images.device).view(-1, 1, 1, 1) > 0.5, hflip(images), images)


def rotate_rows(images: Tensor, angle: Tensor, host_angle: Tensor, inplace: bool = False) -> Tensor:
    """Rotate rows with a non-zero angle (degrees, counter-clockwise as displayed), zero fill."""

    def turn(x: Tensor, a: Tensor) -> Tensor:
        return rotate(x, a, padding_mode="zeros")

    return apply_to_rows(images, host_angle != 0, turn, angle, inplace=inplace)


def shift_hue(images: Tensor, turns: Tensor) -> Tensor:
    """Rotate the HSV hue of RGB ``images`` (``B x 3 x H x W`` in [0, 1]) by ``turns`` (``B``) turns.

    Same result as ``kornia.enhance.adjust_hue(images, 2 pi turns)`` (and torchvision's
    ``adjust_hue``) to float32 precision, about 3x faster on the CPU: a hue shift keeps each pixel's
    max (V) and chroma C = max - min, so the output is rebuilt straight from the shifted hue
    ``h' in [0, 6)`` with the closed-form HSV->RGB ``channel_n = V - C clamp(min(k, 4 - k), 0, 1)``,
    ``k = (n + h') mod 6`` and ``n = 5, 3, 1`` for R, G, B, without materialising HSV images.
    """
    red, green, blue = images.unbind(dim=-3)
    value = images.amax(dim=-3)
    chroma = value - images.amin(dim=-3)
    divisor = torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    # Sextant of the first maximal channel (ties as kornia/torchvision); gray pixels get hue 0.
    hue = torch.where(
        (red >= green) & (red >= blue),
        (green - blue) / divisor,
        torch.where(green >= blue, (blue - red) / divisor + 2.0, (red - green) / divisor + 4.0),
    )
    hue = torch.remainder(hue + 6.0 * turns.to(images).view(-1, 1, 1), 6.0)
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = torch.remainder(hue + offset, 6.0)
        channels.append(value - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(channels, dim=-3)


_JITTER_FNS: dict[str, RowFn] = {
    "brightness": adjust_brightness_accumulative,
    "contrast": adjust_contrast_with_mean_subtraction,
    "saturation": adjust_saturation_with_gray_subtraction,
    "hue": shift_hue,
}
_JITTER_NEUTRAL = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}


def color_jitter_rows(
    images: Tensor, params: dict[str, Tensor], host: dict[str, Tensor], inplace: bool = False
) -> Tensor:
    """torchvision ColorJitter per row, each row in its own ``jitter_order``.

    Step ``k`` applies, to every jittered row, the op at position ``k`` of its order; rows are grouped
    by op so each step costs one batched call per op. A row whose factor is neutral skips that op.
    """
    applied = host["jitter_applied"] > 0.5
    order = host["jitter_order"]
    if not inplace and bool(applied.any()):
        images = images.clone()  # one copy, then every step writes its rows in place
    for step in range(len(JITTER_OPS)):
        for op_index, name in enumerate(JITTER_OPS):
            mask = applied & (order[:, step] == op_index) & (host[name] != _JITTER_NEUTRAL[name])
            images = apply_to_rows(images, mask, _JITTER_FNS[name], params[name], inplace=True)
    return images


def _to_gray(images: Tensor) -> Tensor:
    return rgb_to_grayscale(images).expand_as(images).contiguous()


def grayscale_rows(images: Tensor, host_grayscale: Tensor, inplace: bool = False) -> Tensor:
    """Replace flagged rows by their luma (ITU-R 601, as torchvision) repeated on 3 channels."""
    return apply_to_rows(images, host_grayscale > 0.5, _to_gray, inplace=inplace)


def blur_rows(images: Tensor, sigma: Tensor, kernel_size: int, inplace: bool = False) -> Tensor:
    """Gaussian-blur rows with ``sigma > 0`` (per-row sigma, odd ``kernel_size``, reflect borders).

    Pass ``sigma`` on the CPU: kornia checks its positivity where it lives (a GPU sync otherwise).
    """

    def blur(x: Tensor, s: Tensor) -> Tensor:
        sigma_yx = s[:, None].expand(-1, 2)
        return gaussian_blur2d(x, (kernel_size, kernel_size), sigma_yx, border_type="reflect")

    return apply_to_rows(images, sigma > 0, blur, sigma, inplace=inplace)


def solarize_rows(
    images: Tensor, host_solarize: Tensor, threshold: float, inplace: bool = False
) -> Tensor:
    """Invert pixels ``>= threshold`` (``x -> 1 - x``) in flagged rows."""

    def invert(x: Tensor) -> Tensor:
        return solarize(x, thresholds=float(threshold))

    return apply_to_rows(images, host_solarize > 0.5, invert, inplace=inplace)


def apply_view(
    images: Tensor,
    params: dict[str, Tensor],
    cfg: ViewConfig,
    output_size: int,
    host: dict[str, Tensor] | None = None,
) -> Tensor:
    """One view: ``images`` (``B x 3 x H x W`` float in [0, 1]) -> ``B x 3 x size x size`` in [0, 1].

    Order: crop+resize, flip, rotation, colour jitter, grayscale, blur, solarize (not normalised).
    ``params`` live on the images' device; ``host`` is the same dict on the CPU (defaults to a copy
    of ``params``, which syncs on a GPU). ``cfg`` supplies the constants not stored per row (blur
    kernel size from ``output_size``, solarize threshold).
    """
    if host is None:
        host = {key: value.cpu() for key, value in params.items()}
    # Every tensor below is created here, so the row ops may write into it in place.
    out = crop_resize(images, params["crop_box"], output_size)
    out = flip_rows(out, params["flip"])
    out = rotate_rows(out, params["rotation_angle"], host["rotation_angle"], inplace=True)
    out = color_jitter_rows(out, params, host, inplace=True)
    out = grayscale_rows(out, host["grayscale"], inplace=True)
    kernel = cfg.blur_kernel_size(output_size)
    out = blur_rows(out, host["blur_sigma"], kernel, inplace=True)
    return solarize_rows(out, host["solarize"], cfg.solarize_threshold, inplace=True)
