"""The transformations T the invariance and equivariance probes apply, with their parameters.

Each T maps float images in [0, 1] (``N x 3 x H x W``, CPU) to ``Transformed``: the images,
the parameters an equivariance probe regresses, and which rows T actually changed (binary
transformations are applied to a random half, so the "was it applied" flag has variance; the
invariance score uses only changed rows). Everything is drawn from one seeded ``torch.Generator``
so a probe pass is reproducible.

2D ops reuse the training augmentation (``augment.ops``: the same kornia functions and
torchvision semantics); the 90-degree rotation uses ``torch.rot90`` because it is exact (a pure
permutation of pixels), which the known-answer invariance test relies on. 3D ops re-render the
same object (class and shape parameters from its latents) with a new rotation, hue or light.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_saturation_with_gray_subtraction,
)
from torch import Tensor

from augment.config import ViewConfig
from augment.ops import blur_rows, crop_resize, flip_rows, grayscale_rows, shift_hue
from augment.quaternion import quat_rotate, random_quaternion, relative_rotation
from augment.sampling import sample_crop_boxes
from pretrain.probes.config import TRANSFORMS_3D


@dataclass(frozen=True)
class Transformed:
    """``images`` (float, [0, 1]); ``params`` ``N x P`` float32 targets named ``param_names``;
    ``changed`` bool ``N``, rows where T was not the identity."""

    images: Tensor
    params: Tensor
    changed: Tensor
    param_names: tuple[str, ...]


TransformFn = Callable[[Tensor, dict[str, Tensor], torch.Generator], Transformed]


def _signed_magnitude(n: int, low: float, high: float, g: torch.Generator) -> Tensor:
    """Values with |v| uniform in [low, high] and a random sign (no near-identity draws)."""
    mag = low + (high - low) * torch.rand(n, generator=g)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    return mag * sign


def _coin(n: int, g: torch.Generator) -> Tensor:
    return (torch.rand(n, generator=g) < 0.5).float()


def _all(n: int) -> Tensor:
    return torch.ones(n, dtype=torch.bool)


def crop(x: Tensor, latents: dict[str, Tensor], g: torch.Generator) -> Transformed:
    """RandomResizedCrop as in training (``ViewConfig`` scale/ratio), resized back to H x W."""
    n, _, h, w = x.shape
    cfg = ViewConfig()
    box = sample_crop_boxes(n, h, w, cfg.crop_scale, cfg.crop_ratio, g)
    full = torch.tensor([0.0, 0.0, 1.0, 1.0])
    changed = (box - full).abs().amax(dim=1) > 0
    return Transformed(crop_resize(x, box, h), box, changed, ("x0", "y0", "x1", "y1"))


def flip(x: Tensor, latents: dict[str, Tensor], g: torch.Generator) -> Transformed:
    """Horizontal flip of a random half of the rows; parameter: the flag."""
    flag = _coin(x.shape[0], g)
    return Transformed(flip_rows(x, flag), flag[:, None], flag > 0.5, ("flipped",))


def rotation(x: Tensor, latents: dict[str, Tensor], g: torch.Generator) -> Transformed:
    """Rotation by 90, 180 or 270 degrees counter-clockwise (as displayed); parameters: the
    angle as (cos, sin)."""
    k = torch.randint(1, 4, (x.shape[0],), generator=g)
    out = x.clone()
    for turns in (1, 2, 3):
        rows = torch.nonzero(k == turns, as_tuple=True)[0]
        if rows.numel():
            out[rows] = torch.rot90(x[rows], turns, dims=(-2, -1))
    angle = k.float() * (math.pi / 2)
    return Transformed(out, torch.stack((angle.cos(), angle.sin()), 1), _all(x.shape[0]),
                       ("cos", "sin"))


def _factor_op(op: Callable[[Tensor, Tensor], Tensor], name: str) -> TransformFn:
    def apply(x: Tensor, latents: dict[str, Tensor], g: torch.Generator) -> Transformed:
        factor = 1.0 + _signed_magnitude(x.shape[0], 0.1, 0.4, g)
        return Transformed(op(x, factor).clamp(0.0, 1.0), factor[:, None], _all(x.shape[0]),
                           (name,))

    apply.__doc__ = f"{name} factor 1 +- U(0.1, 0.4) (torchvision semantics, see augment.ops)."
    return apply


def hue(x: Tensor, latents: dict[str, Tensor], g: torch.Generator) -> Transformed:
    """HSV hue shift by +-U(0.05, 0.25) turns; parameter: the shift in turns."""
    shift = _signed_magnitude(x.shape[0], 0.05, 0.25, g)
    return Transformed(shift_hue(x, shift), shift[:, None], _all(x.shape[0]), ("shift",))


def grayscale(x: Tensor, latents: dict[str, Tensor], g: torch.Generator) -> Transformed:
    """ITU-R 601 luma on a random half of the rows; parameter: the flag."""
    flag = _coin(x.shape[0], g)
    return Transformed(grayscale_rows(x, flag), flag[:, None], flag > 0.5, ("gray",))


def blur(x: Tensor, latents: dict[str, Tensor], g: torch.Generator) -> Transformed:
    """Gaussian blur with sigma ~ U(0.5, 2) px; kernel 13 px (3 sigma at sigma 2), smaller for
    tiny images; parameter: sigma."""
    n, _, h, _ = x.shape
    sigma = 0.5 + 1.5 * torch.rand(n, generator=g)
    kernel = min(13, h - 1 if h % 2 == 0 else h - 2)
    return Transformed(blur_rows(x, sigma, max(kernel, 3)), sigma[:, None], _all(n), ("sigma",))


def _render(latents: dict[str, Tensor], labels: Tensor, size: int, out_size: int,
            **override: Tensor) -> Tensor:
    from pretrain.data.synth3d.render import render_views

    values = {k: override.get(k, latents[k]) for k in
              ("quaternion", "object_hue", "background_hue", "light_dir")}
    images = render_views(labels, latents["shape_params"], values["quaternion"],
                          values["object_hue"], values["background_hue"], values["light_dir"],
                          size).float().div_(255.0)
    if size != out_size:
        images = F.interpolate(images, size=(out_size, out_size), mode="bilinear",
                               align_corners=False, antialias=size > out_size)
    return images


def object_rotation(x: Tensor, latents: dict[str, Tensor], g: torch.Generator) -> Transformed:
    """The same object in a new pose drawn like the probe set's poses (uniform on SO(3), or
    within ``latents["pose_max_angle_deg"]`` of the canonical pose when given); parameters: the
    relative rotation ``augment.quaternion.relative_rotation(q_x, q_Tx)`` as a canonical
    quaternion (w, x, y, z)."""
    limit = latents.get("pose_max_angle_deg")
    q_new = random_quaternion(x.shape[0], g,
                              max_angle_deg=None if limit is None else float(limit))
    images = _render(latents, latents["labels"], int(latents["render_size"]), x.shape[-1],
                     quaternion=q_new)
    rel = relative_rotation(latents["quaternion"], q_new)
    return Transformed(images, rel, _all(x.shape[0]), ("qw", "qx", "qy", "qz"))


def object_hue(x: Tensor, latents: dict[str, Tensor], g: torch.Generator) -> Transformed:
    """The same object with its hue shifted by +-U(0.1, 0.5) turns (wraps); parameters: the
    shift as (cos, sin) of 2 pi shift, continuous across the wrap."""
    shift = _signed_magnitude(x.shape[0], 0.1, 0.5, g)
    new_hue = torch.remainder(latents["object_hue"] + shift, 1.0)
    images = _render(latents, latents["labels"], int(latents["render_size"]), x.shape[-1],
                     object_hue=new_hue)
    turn = 2 * math.pi * shift
    return Transformed(images, torch.stack((turn.cos(), turn.sin()), 1), _all(x.shape[0]),
                       ("cos", "sin"))


def light(x: Tensor, latents: dict[str, Tensor], g: torch.Generator) -> Transformed:
    """The same object lit from a direction tilted by up to 60 degrees from its own; parameters:
    the new light direction (world frame, unit)."""
    tilt = random_quaternion(x.shape[0], g, max_angle_deg=60.0)
    new_light = quat_rotate(tilt, latents["light_dir"])
    new_light = new_light / new_light.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    images = _render(latents, latents["labels"], int(latents["render_size"]), x.shape[-1],
                     light_dir=new_light)
    return Transformed(images, new_light, _all(x.shape[0]), ("lx", "ly", "lz"))


TRANSFORMS: dict[str, TransformFn] = {
    "crop": crop,
    "flip": flip,
    "rotation": rotation,
    "brightness": _factor_op(adjust_brightness_accumulative, "brightness"),
    "contrast": _factor_op(adjust_contrast_with_mean_subtraction, "contrast"),
    "saturation": _factor_op(adjust_saturation_with_gray_subtraction, "saturation"),
    "hue": hue,
    "grayscale": grayscale,
    "blur": blur,
    "object_rotation": object_rotation,
    "object_hue": object_hue,
    "light": light,
}


def transform_seed(seed: int, name: str) -> int:
    """A per-transformation seed, stable across runs and Python processes (no ``hash()``)."""
    return seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))


def apply_transform(name: str, images: Tensor, seed: int,
                    latents: dict[str, Tensor] | None = None) -> Transformed:
    """Apply T ``name`` to ``images`` (uint8 or float in [0, 1]) with a generator seeded from
    ``(seed, name)``. 3D transformations need ``latents`` with the object's ``labels``,
    ``shape_params``, pose, hues, light and ``render_size``."""
    if name not in TRANSFORMS:
        raise KeyError(f"unknown transformation {name!r}; known: {', '.join(TRANSFORMS)}")
    if name in TRANSFORMS_3D and not latents:
        raise ValueError(f"transformation {name!r} needs synthetic 3D latents")
    x = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    g = torch.Generator().manual_seed(transform_seed(seed, name))
    out = TRANSFORMS[name](x, latents or {}, g)
    return Transformed(out.images.clamp(0.0, 1.0), out.params.float(), out.changed,
                       out.param_names)


__all__ = ["TRANSFORMS", "Transformed", "apply_transform", "transform_seed"]
