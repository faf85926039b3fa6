"""Fused, fixed-shape image ops: every row goes through every op; neutral parameters make it a no-op.

The reference ops (``augment.ops``) pick the rows an op applies to with host index lists. These run
each op on the whole batch with per-row parameters instead, so the op sequence and every shape are
independent of the data: no ``.item()``, ``nonzero``, ``bool(tensor)`` or host copy, and
``torch.compile(fullgraph=True)`` and CUDA-graph capture work. Tests hold them to the reference ops.

Constant tensors (``PixelGrid``, ``Colour``) are built once per device by ``augment.program`` and
passed in, never made from Python lists here: on a GPU that would be a host-to-device copy that
waits for the stream.

- ``geometry``: crop -> flip -> rotation as one ``grid_sample`` (the three maps composed).
- ``colour_jitter``: brightness/contrast/saturation/hue in each row's ``jitter_order``.
- ``grayscale``, ``gaussian_blur`` (per-row kernels, grouped convolution), ``solarize``,
  ``normalise``; ``quarter_turn`` (exact ``rot90`` of a finished view).

The small matrix products (``colour_jitter``, ``grayscale``) run in float32; with TF32 matmuls
switched on (``torch.backends.cuda.matmul.allow_tf32``, off by default) their results are rounded to
TF32 (about 1e-3), like cuDNN convolutions, kornia's blur included, already are by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's and kornia's rgb_to_grayscale

# Smallest sigma used for a blur kernel. At or below it the taps next to the centre,
# exp(-1 / (2 sigma^2)) <= exp(-5e5), are 0 in float32, so the kernel is exactly the delta kernel:
# rows that skip the blur (sigma 0) get the identity from the same formula.
DELTA_SIGMA = 1e-3


@dataclass(frozen=True)
class PixelGrid:
    """The output pixels of a ``size x size`` view and the map from crop boxes to sampling points.

    ``offsets``: ``size^2 x 2`` output pixel ``(x, y)`` relative to the centre ``half = (size-1)/2``.
    A crop-pixel offset ``q`` samples the source at ``centre + slope * q`` in ``grid_sample``
    coordinates (``align_corners=True``: -1 and 1 are the centres of the first and last source
    pixel), where the crop's first and last pixels sample the centres of the box's corner pixels:
    ``x = x0 W + (x1 W - 1 - x0 W) (half + q) / (size - 1)``, i.e.
    ``slope = (x1 - x0) W k - k`` and ``centre = x0 W g - 1 + half slope`` with ``g = 2 / (W - 1)``
    and ``k = g / (size - 1)``. ``span_scale = (W k, H k)``, ``span_shift = -(k_x, k_y)``,
    ``start_scale = (W g_x, H g_y)``, ``start_shift = (-1, -1)``.
    """

    offsets: Tensor
    span_scale: Tensor
    span_shift: Tensor
    start_scale: Tensor
    start_shift: Tensor
    size: int

    @classmethod
    def build(cls, size: int, height: int, width: int, device: torch.device | str | None = None) -> PixelGrid:
        steps = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
        y, x = torch.meshgrid(steps, steps, indexing="ij")
        extent = torch.tensor([width, height], dtype=torch.float32)
        to_grid = 2.0 / (extent - 1.0).clamp_min(1.0)
        per_pixel = to_grid / max(size - 1, 1)
        return cls(
            offsets=torch.stack((x, y), dim=-1).reshape(size * size, 2).to(device),
            span_scale=(extent * per_pixel).to(device),
            span_shift=(-per_pixel).to(device),
            start_scale=(extent * to_grid).to(device),
            start_shift=torch.full((2,), -1.0).to(device),
            size=size,
        )


@dataclass(frozen=True)
class Colour:
    """Constants of the colour ops: ``luma`` (3), ``eye`` (3 x 3), ``hue_channels`` (5, 3, 1)."""

    luma: Tensor
    eye: Tensor
    hue_channels: Tensor

    @classmethod
    def build(cls, device: torch.device | str | None = None) -> Colour:
        return cls(luma=torch.tensor(LUMA).to(device), eye=torch.eye(3).to(device),
                   hue_channels=torch.tensor([5.0, 3.0, 1.0]).to(device))


def geometry(sources: Tensor, crop_box: Tensor, flip: Tensor, angle: Tensor | None, grid: PixelGrid,
             scale: float = 1.0) -> Tensor:
    """Crop + resize, horizontal flip and rotation of ``sources`` in one bilinear ``grid_sample``.

    Args:
        sources: ``N x C x H x W`` float images; the output is multiplied by ``scale`` (1/255 turns
            uint8 levels into [0, 1] at no cost).
        crop_box: ``N x 4`` normalised ``(x0, y0, x1, y1)`` (``augment.sampling``); ``flip``: ``N``
            0/1; ``angle``: ``N`` degrees counter-clockwise as displayed, or ``None`` when no row
            of the batch can be rotated (the rotation maths is then left out).
        grid: ``PixelGrid`` of the output side and the sources' size, on their device.

    The reference ops resample twice: crop to ``size x size`` (``ops.crop_resize``), mirror, then
    rotate about the centre with zero fill (``kornia.geometry.transform.rotate``). Here each output
    pixel offset ``p`` is mapped back through the rotation, ``q = R(-angle) p`` with ``q_x`` negated
    for flipped rows, then onto the crop box (``PixelGrid``), so the source is sampled once. Where
    ``q`` leaves the crop, the reference's bilinear zero fill fades the crop's edge pixel by
    ``1 - d`` per axis (``d``: pixels outside); the same weight is applied here to the edge value
    (``q`` clamped to the crop). Without rotation this equals the reference up to float rounding;
    with rotation it differs by the reference's second interpolation only.
    """
    n, size = sources.shape[0], grid.size
    half = (size - 1) / 2.0
    slope = torch.addcmul(grid.span_shift, crop_box[:, 2:] - crop_box[:, :2], grid.span_scale)
    centre = torch.add(torch.addcmul(grid.start_shift, crop_box[:, :2], grid.start_scale), slope, alpha=half)
    mirror = 1.0 - 2.0 * flip  # -1 mirrors x
    fade = None
    if angle is None:
        offsets = grid.offsets
        slope[:, :1].mul_(mirror[:, None])
    else:
        radians = torch.deg2rad(angle)
        cos, sin = torch.cos(radians), torch.sin(radians)
        # As row vectors q = p @ [[c, s], [-s, c]] (kornia's rotation inverted), first column mirrored.
        rotation = torch.stack((mirror * cos, sin, -mirror * sin, cos), dim=-1).view(n, 2, 2)
        offsets = torch.matmul(grid.offsets, rotation)
        fade = (1.0 + half - offsets.abs()).clamp_(0.0, 1.0).prod(dim=-1)
        offsets = offsets.clamp(-half, half)
    coords = torch.addcmul(centre[:, None], offsets, slope[:, None]).view(n, size, size, 2)
    out = F.grid_sample(sources, coords, mode="bilinear", padding_mode="border", align_corners=True)
    if fade is not None:
        return out.mul_((fade * scale).view(n, 1, size, size))
    return out.mul_(scale) if scale != 1.0 else out


def jitter_slots(factors: Tensor, order: Tensor, eye: Tensor, shuffled: bool, hue: bool = True) -> Tensor:
    """Blend factor and target of the brightness/contrast/saturation slots around one hue step.

    ``factors``: ``N x 4`` (brightness, contrast, saturation, hue); ``order``: ``N x 4`` op indices in
    the order applied (``augment.sampling``); ``eye``: ``Colour.eye``. Hue is the one jitter op that
    is not affine in RGB. Fixing its place between 6 linear slots (3 before, 3 after) lets every row
    run one program: a row whose hue comes at step ``p`` puts its ``p`` earlier ops in slots
    ``3 - p .. 2`` and its later ones in ``3 .. 5 - p``; unused slots are the identity. With
    ``shuffled=False`` (every row in the order 0, 1, 2, 3) or ``hue=False`` (no row shifts hue) the
    three linear ops fill slots 0-2 in their order.

    Returns ``L x N x 3``: per slot and row the factor ``f`` and the (contrast, saturation) flags
    ``(c, s)``; the slot maps ``x -> clamp(f x + (1 - f) g, 0, 1)`` with ``g`` = 0 (brightness),
    the mean gray level (contrast) or the gray image (saturation); identity is ``(1, 0, 0)``.
    """
    n = factors.shape[0]
    rows = torch.cat((factors[:, :3, None], eye[:, 1:].expand(n, 3, 2)), dim=-1)  # N x op x (f, c, s)
    if shuffled:
        position = order.argsort(dim=-1)  # position[:, op]: the step at which op runs
        linear, hue_step = position[:, :3], position[:, 3:]
        # linear - hue_step + 3 is 0..2 before the hue step and 4..6 after it; // 4 is 1 after it.
        shifted = linear - hue_step + 3
        slot = shifted - shifted // 4
        if not hue:
            slot = slot + hue_step - 3  # the rank among the three linear ops
        rows = eye[0].expand(n, 6 if hue else 3, 3).scatter(1, slot[..., None].expand(n, 3, 3), rows)
    return rows.transpose(0, 1)


def colour_jitter(images: Tensor, factors: Tensor, order: Tensor, colour: Colour,
                  shuffled: bool = True, hue: bool = True) -> Tensor:
    """torchvision ColorJitter per row in its ``order``: ``N x 3 x H x W`` in [0, 1] -> same shape.

    Each linear slot (``jitter_slots``) is an affine colour map per row, ``x -> M x + t`` with
    ``M = f I + (1 - f) s 1 w^T`` and ``t = (1 - f) c (w . mean(x)) 1`` (``w``: luma), which is
    ``f x + (1 - f) g`` for the three ops, applied with one batched matmul and clamped to [0, 1]
    as torchvision does after every op. Identity slots (``M = I``, ``t = 0``) leave rows unchanged
    exactly. ``hue=False`` leaves the hue step out (no row of the batch can shift hue).
    """
    n, c, height, width = images.shape
    x = images.reshape(n, c, height * width)
    table = jitter_slots(factors, order, colour.eye, shuffled, hue)
    keep = 1.0 - table[..., :1]  # 1 - f, L x N x 1
    spread = colour.luma.expand(3, 3)  # spread @ x: the gray image on every channel
    gray_weight = (keep * table[..., 2:]).unsqueeze(-1)  # (1 - f) s
    matrices = torch.addcmul(table[..., 0, None, None] * colour.eye, gray_weight, spread)
    offsets = (keep * table[..., 1:2]).unsqueeze(-1) * spread  # t = offsets @ mean(x)
    hue_after = 3 if shuffled and hue else table.shape[0]
    for k, (matrix, offset) in enumerate(zip(matrices.unbind(0), offsets.unbind(0), strict=True)):
        if hue and k == hue_after:
            x = shift_hue(x, factors[:, 3], colour.hue_channels)
        x = torch.baddbmm(torch.bmm(offset, x.mean(dim=-1, keepdim=True)), matrix, x).clamp_(0.0, 1.0)
    if hue and hue_after == table.shape[0]:
        x = shift_hue(x, factors[:, 3], colour.hue_channels)
    return x.view(n, c, height, width)


def shift_hue(images: Tensor, turns: Tensor, channels: Tensor) -> Tensor:
    """Rotate the HSV hue of RGB ``N x 3 x P`` images in [0, 1] by ``turns`` (``N``) turns.

    The closed form of ``augment.ops.shift_hue`` (equal to kornia's and torchvision's ``adjust_hue``)
    in fewer ops: ``torch.max`` gives the value V and the first maximal channel (the sextant, ties as
    torchvision), ``roll`` the channel differences, and output channel ``n`` is
    ``V - C clamp(min(k, 4 - k), 0, 1)`` with ``k = (n' + h') mod 6``, ``n' = channels[n]``
    (``Colour.hue_channels``: 5, 3, 1 for R, G, B).
    """
    value, first = images.max(dim=1, keepdim=True)
    chroma = value - images.amin(dim=1, keepdim=True)
    differences = images.roll(-1, dims=1) - images.roll(-2, dims=1)  # g - b, b - r, r - g
    # Gray pixels (chroma 0) have difference 0, hence hue 0, as in the reference.
    sextant = differences.gather(1, first) / chroma.clamp_min(torch.finfo(images.dtype).tiny)
    shift = torch.add(channels[:, None], turns[:, None, None], alpha=6.0)  # N x 3 x 1
    k = torch.remainder(torch.add(sextant, first, alpha=2) + shift, 6.0)
    return torch.addcmul(value, chroma, torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0), value=-1.0)


def grayscale(images: Tensor, flag: Tensor, colour: Colour) -> Tensor:
    """Rows with ``flag`` (``N`` bool) replaced by their luma on every channel, others unchanged."""
    n = images.shape[0]
    gray = torch.matmul(colour.luma, images.flatten(2)).view(n, 1, *images.shape[2:])
    return torch.where(flag.view(n, 1, 1, 1), gray, images)


def blur_taps(kernel_size: int, device: torch.device | str | None = None) -> Tensor:
    """``-d^2 / 2`` for the kernel offsets ``d`` (the exponent of a Gaussian tap, times sigma^-2)."""
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    return (offsets * offsets * -0.5).to(device)


def gaussian_blur(images: Tensor, sigma: Tensor, taps: Tensor) -> Tensor:
    """Per-row Gaussian blur (``sigma``: ``N``, pixels; ``taps``: ``blur_taps(kernel)``, odd kernel).

    Reflect borders, one grouped convolution per axis with a kernel per row; sigma 0 gives the delta
    kernel (see ``DELTA_SIGMA``), so rows that skip the blur pass through unchanged. Equal to
    ``kornia.filters.filter2d_separable`` with these kernels (checked by the tests), written out
    because kornia's version costs one more op per view, and the op budget (60 per view) is the
    point of this module; ``kornia.filters.gaussian_blur2d`` itself checks ``sigma > 0`` on the
    host (a device sync) and has no delta kernel.
    """
    n, c, height, width = images.shape
    kernel_size = taps.shape[0]
    radius = kernel_size // 2
    kernel = torch.exp(taps * sigma.clamp_min(DELTA_SIGMA).pow(-2)[:, None])
    kernel = (kernel / kernel.sum(dim=-1, keepdim=True)).repeat_interleave(c, dim=0)
    padded = F.pad(images, (radius,) * 4, mode="reflect").view(1, n * c, height + 2 * radius, -1)
    rows = F.conv2d(padded, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    out = F.conv2d(rows, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    return out.view(n, c, height, width)


def solarize(images: Tensor, threshold: Tensor) -> Tensor:
    """``x -> 1 - x`` where ``x >= threshold`` (``N``, per row; above 1 for rows that skip it)."""
    return torch.where(images >= threshold.view(-1, 1, 1, 1), 1.0 - images, images)


def normalise(images: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """``(x - mean) / std`` as one fused ``x * scale + bias`` (``scale = 1/std``, ``bias = -mean/std``)."""
    return torch.addcmul(bias.view(1, -1, 1, 1), images, scale.view(1, -1, 1, 1))


def quarter_turn(view: Tensor, params: dict[str, Tensor], turns: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Rotate ``view`` by ``turns * 90`` degrees counter-clockwise as displayed and record it.

    ``torch.rot90`` over (H, W) is exact and commutes with every photometric op and the
    per-channel normalisation, so turning the finished view equals turning inside the op chain.
    ``rotation_angle`` becomes ``angle + 90 turns`` wrapped to ``[-180, 180)``.
    """
    angle = torch.remainder(params["rotation_angle"] + (90.0 * turns + 180.0), 360.0) - 180.0
    return torch.rot90(view, turns, dims=(-2, -1)), {**params, "rotation_angle": angle}
