"""Batched torch renderer of the synthetic 3D objects: sphere tracing of the shape SDFs.

Camera: orthographic, looking down ``-z``; the image spans ``[-1, 1]^2`` in world ``x`` (right)
and ``y`` (up). Each view has its own class, shape parameters, object-to-world quaternion, hues and
light. Rays are traced in the *object* frame (ray origin and direction rotated once), so the SDFs
never see a rotation. Only rays inside the object's bounding sphere are traced, starting at the
sphere, and finished rays are dropped every step.

Colour: a two-tone pattern fixed in the object frame (the parity of which side of three planes
through ``PATTERN_CENTRE`` a surface point lies on, i.e. octants about an off-centre point), so
every rotation, including symmetries of the bare shape, changes the image. Tone 0 is the object hue
at full colour, tone 1 the same hue pale. Lambertian + ambient shading from a directional light.

Per pixel only elementwise IEEE arithmetic and ``sqrt`` are used, so an image does not depend on
which other views share the batch nor on the thread count: the same latents give the same bytes.
Tensors are created on the device of the inputs (the platform generates data on CPU).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from augment.quaternion import quat_to_matrix
from pretrain.data.synth3d.shapes import SHAPES, ShapeSpec

PATTERN_CENTRE = (0.17, 0.11, 0.07)


class RenderSettings(BaseModel):
    """Tracing and look parameters of ``render_views`` (defaults are what the datasets use)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int = Field(48, ge=1, description="sphere-tracing steps per ray at most")
    hit_eps_px: float = Field(0.3, gt=0, description="hit threshold, in pixel widths")
    normal_eps: float = Field(2e-3, gt=0, description="finite-difference step for normals")
    ambient: float = Field(0.28, ge=0, le=1)
    diffuse: float = Field(0.72, ge=0, le=1)
    object_saturation: float = Field(0.85, ge=0, le=1)
    object_value: float = Field(0.95, ge=0, le=1)
    pattern_saturation: float = Field(0.25, ge=0, le=1, description="saturation of the second tone")
    pattern_value: float = Field(1.0, ge=0, le=1)
    background_saturation: float = Field(0.45, ge=0, le=1)
    background_value: float = Field(0.4, ge=0, le=1)


def hsv_to_rgb(h: Tensor, s: Tensor | float, v: Tensor | float) -> Tensor:
    """HSV (each in ``[0, 1]``, hue wraps) to RGB ``... x 3`` in ``[0, 1]``."""
    h = torch.remainder(h, 1.0)
    s = torch.as_tensor(s, dtype=h.dtype, device=h.device).expand_as(h)
    v = torch.as_tensor(v, dtype=h.dtype, device=h.device).expand_as(h)
    # Piecewise-linear hue ramps: channel c peaks where (6h + shift_c) mod 6 is near 0.
    shifts = torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype, device=h.device)
    k = torch.remainder(h.unsqueeze(-1) * 6.0 + shifts, 6.0)
    ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return v.unsqueeze(-1) * (1.0 - s.unsqueeze(-1) * ramp)


def _pixel_grid(size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """World ``x`` and ``y`` of pixel centres, each ``S*S`` in row-major order (row 0 at the top)."""
    c = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) * (2.0 / size) - 1.0
    y, x = torch.meshgrid(-c, c, indexing="ij")
    return x.reshape(-1), y.reshape(-1)


# Per-ray state is kept component-major (rows of one ``C x P`` tensor) so that each coordinate is a
# contiguous row: SDFs receive ``state.T`` views whose ``unbind(-1)`` slices are contiguous, and
# compaction is one ``index_select`` per step.
_O, _D, _TMAX, _T, _K = slice(0, 3), slice(3, 6), 6, 7, 8
_TETRA = ((1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), (-1.0, 1.0, -1.0), (1.0, 1.0, 1.0))


def _sdf_normals(spec: ShapeSpec, p: Tensor, k: Tensor, eps: float) -> Tensor:
    """Unit SDF gradients ``3 x P`` at points ``p`` (``3 x P``), params ``k`` (``K x P``).

    Tetrahedral finite differences: four evaluations instead of six.
    """
    g = torch.zeros_like(p)
    for o in _TETRA:
        off = torch.tensor(o, device=p.device).unsqueeze(-1)
        g = g + off * spec.sdf((p + eps * off).T, k.T).unsqueeze(0)
    gx, gy, gz = g.unbind(0)
    return g / torch.sqrt(gx * gx + gy * gy + gz * gz).clamp_min(1e-12).unsqueeze(0)


def _trace(spec: ShapeSpec, state: Tensor, eps: float, max_steps: int) -> tuple[Tensor, Tensor]:
    """Sphere-trace rays ``o + t d`` for ``t`` in ``[0, t_max]``; ``state`` is ``C x P`` (rows
    ``_O``, ``_D``, ``_TMAX``, ``_T`` = 0, then the shape parameters).

    Returns ``hit`` (bool ``P``) and ``t`` (``P``). Rays are compacted as they finish so the cost
    follows the rays still marching. Rays still marching after ``max_steps`` count as hits when
    they are within a few ``eps`` (grazing silhouettes converge slowly).
    """
    n = state.shape[1]
    hit = torch.zeros(n, dtype=torch.bool, device=state.device)
    t_out = torch.zeros_like(state[0])
    ids = torch.arange(n, device=state.device)
    dist = torch.full_like(state[0], float("inf"))
    for _ in range(max_steps):
        if ids.numel() == 0:
            break
        t = state[_T]
        p = state[_O] + t * state[_D]
        dist = spec.sdf(p.T, state[_K:].T) * spec.step
        done_hit = dist < eps
        t = t + dist
        state[_T] = t
        done = done_hit | (t > state[_TMAX])
        if bool(done.any()):
            fin = torch.nonzero(done_hit, as_tuple=True)[0]
            hit[ids[fin]] = True
            t_out[ids[fin]] = t[fin]
            keep = torch.nonzero(~done, as_tuple=True)[0]
            ids, state, dist = ids[keep], state.index_select(1, keep), dist[keep]
    close = torch.nonzero(dist < 4.0 * eps, as_tuple=True)[0]
    hit[ids[close]] = True
    t_out[ids[close]] = state[_T, close]
    return hit, t_out


def _render_class(spec: ShapeSpec, params: Tensor, rot: Tensor, light: Tensor, tones: Tensor,
                  size: int, settings: RenderSettings) -> tuple[Tensor, Tensor]:
    """Trace the views of one class; returns flat pixel indices into ``n x S*S`` and their RGB."""
    px, py = _pixel_grid(size, params.device)
    radius = spec.bound(params).unsqueeze(-1)                     # n x 1
    chord_sq = radius * radius - (px * px + py * py)              # n x S*S
    view, pix = torch.nonzero(chord_sq > 0.0, as_tuple=True)
    half_chord = torch.sqrt(chord_sq[view, pix])
    # Object-frame ray: o = R^T (x, y, half_chord), d = R^T (0, 0, -1); R^T's rows are R's columns.
    r = rot[view].permute(1, 2, 0)                                # 3 x 3 x P
    x, y = px[pix], py[pix]
    state = torch.empty(_K + spec.num_params, view.shape[0], device=params.device)
    state[_O] = r[0] * x + r[1] * y + r[2] * half_chord
    state[_D] = -r[2]
    state[_TMAX] = 2.0 * half_chord
    state[_T] = 0.0
    state[_K:] = params[view].T
    eps = settings.hit_eps_px * 2.0 / size
    hit, t = _trace(spec, state.clone(), eps, settings.max_steps)

    sel = torch.nonzero(hit, as_tuple=True)[0]
    view, pix = view[sel], pix[sel]
    state = state.index_select(1, sel)
    p = state[_O] + t[sel] * state[_D]
    normal = _sdf_normals(spec, p, state[_K:], settings.normal_eps)
    lo = light[view].T                                            # light in the object frame
    lambert = (normal[0] * lo[0] + normal[1] * lo[1] + normal[2] * lo[2]).clamp_min(0.0)
    shade = settings.ambient + settings.diffuse * lambert
    cx, cy, cz = PATTERN_CENTRE
    parity = (p[0] > cx).long() + (p[1] > cy).long() + (p[2] > cz).long()
    rgb = tones[view, parity % 2] * shade.unsqueeze(-1)
    return view * (size * size) + pix, rgb


def render_views(class_ids: Tensor, params: Tensor, quaternion: Tensor, object_hue: Tensor,
                 background_hue: Tensor, light_dir: Tensor, size: int,
                 settings: RenderSettings | None = None) -> Tensor:
    """Render ``N`` views; returns ``uint8`` images ``N x 3 x size x size``.

    Args:
        class_ids: ``N`` class indices into ``SHAPES``.
        params: ``N x K`` shape parameters (``K >= `` the class's parameter count; extra columns,
            e.g. the zero padding of ``shapes.pad_params``, are ignored).
        quaternion: ``N x 4`` object-to-world rotations ``[w, x, y, z]``.
        object_hue, background_hue: ``N`` hues in ``[0, 1)``.
        light_dir: ``N x 3`` world-frame directions from the object towards the light.
        size: image side in pixels.
    """
    settings = settings or RenderSettings()
    n = class_ids.shape[0]
    rot = quat_to_matrix(quaternion.to(torch.float32))
    light = light_dir.to(torch.float32)
    lx, ly, lz = light.unbind(-1)
    light = light / torch.sqrt(lx * lx + ly * ly + lz * lz).clamp_min(1e-12).unsqueeze(-1)
    # Light in the object frame: R^T l.
    light_obj = rot[:, 0, :] * light[:, :1] + rot[:, 1, :] * light[:, 1:2] + rot[:, 2, :] * light[:, 2:]
    hue = object_hue.to(torch.float32)
    tones = torch.stack((hsv_to_rgb(hue, settings.object_saturation, settings.object_value),
                         hsv_to_rgb(hue, settings.pattern_saturation, settings.pattern_value)), dim=1)
    bg = hsv_to_rgb(background_hue.to(torch.float32), settings.background_saturation,
                    settings.background_value)
    image = bg.unsqueeze(1).expand(n, size * size, 3).reshape(-1, 3).clone()
    params = params.to(torch.float32)
    for c in torch.unique(class_ids).tolist():
        idx = torch.nonzero(class_ids == c, as_tuple=True)[0]
        spec = SHAPES[c]
        flat, rgb = _render_class(spec, params[idx, : spec.num_params], rot[idx], light_obj[idx],
                                  tones[idx], size, settings)
        view, pix = flat // (size * size), flat % (size * size)
        image[idx[view] * (size * size) + pix] = rgb
    image = torch.round(image.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return image.reshape(n, size, size, 3).permute(0, 3, 1, 2).contiguous()
