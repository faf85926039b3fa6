"""Shape classes of the synthetic 3D objects: signed distance functions with random proportions.

Every class is a ``ShapeSpec``: an SDF ``f(p, k)`` over object-frame points ``p`` (``... x 3``)
and per-instance parameters ``k`` (``... x K``, broadcast against ``p``'s leading dims), uniform
parameter ranges, and a bounding radius. Objects are centred so that their bounding sphere about
the origin has radius below 1 (the renderer's view spans ``[-1, 1]``). Canonical pose: ``+y`` is
up, ``+x`` right, ``+z`` towards the camera.

SDFs are exact where cheap; otherwise they are *bounds* (never larger than the true distance
outside the shape), which keeps sphere tracing safe. Only ``+ - * /``, ``sqrt``, ``abs``,
``min``/``max`` are used per point, so every point's value is bitwise independent of batch size and
thread count. ``SHAPES`` is ordered: a class's index is its label and must never change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

SDF = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ShapeSpec:
    """One shape class: ``sdf(p, k)``, parameter ``low``/``high`` ranges, ``bound(k)`` radius.

    ``step`` scales sphere-tracing steps (below 1 for approximate SDFs that may overestimate).
    """

    name: str
    sdf: SDF
    param_names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    bound: Callable[[Tensor], Tensor]
    step: float = 1.0

    @property
    def num_params(self) -> int:
        return len(self.param_names)

    def sample_params(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n x K`` float32 parameters, uniform in ``[low, high]`` per entry."""
        u = torch.rand(n, self.num_params, generator=generator, dtype=torch.float64)
        low = torch.tensor(self.low, dtype=torch.float64)
        high = torch.tensor(self.high, dtype=torch.float64)
        return (low + u * (high - low)).to(torch.float32)


# ---------------------------------------------------------------- primitives (component-wise)

def _len2(a: Tensor, b: Tensor) -> Tensor:
    return torch.sqrt(a * a + b * b)


def _len3(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    return torch.sqrt(a * a + b * b + c * c)


def _combine(a: Tensor, b: Tensor) -> Tensor:
    """Exact SDF of the intersection of two *orthogonal* slabs/extrusions from their distances."""
    return torch.clamp(torch.maximum(a, b), max=0.0) + _len2(a.clamp_min(0.0), b.clamp_min(0.0))


def _rect(x: Tensor, y: Tensor, hx: Tensor, hy: Tensor) -> Tensor:
    """Exact 2D SDF of the rectangle ``|x| <= hx, |y| <= hy``."""
    return _combine(x.abs() - hx, y.abs() - hy)


def _box(x: Tensor, y: Tensor, z: Tensor, hx: Tensor, hy: Tensor, hz: Tensor) -> Tensor:
    qx, qy, qz = x.abs() - hx, y.abs() - hy, z.abs() - hz
    inside = torch.clamp(torch.maximum(torch.maximum(qx, qy), qz), max=0.0)
    return inside + _len3(qx.clamp_min(0.0), qy.clamp_min(0.0), qz.clamp_min(0.0))


def _segment(px: Tensor, py: Tensor, ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    """2D distance from ``p`` to the segment ``a-b``."""
    ex, ey = bx - ax, by - ay
    wx, wy = px - ax, py - ay
    h = ((wx * ex + wy * ey) / (ex * ex + ey * ey)).clamp(0.0, 1.0)
    return _len2(wx - ex * h, wy - ey * h)


def _reflect(x: Tensor, y: Tensor, nx: float, ny: float) -> tuple[Tensor, Tensor]:
    """Mirror points with ``n . p < 0`` across the line through 0 with unit normal ``n``."""
    d = torch.clamp(x * nx + y * ny, max=0.0)
    return x - 2.0 * d * nx, y - 2.0 * d * ny


def _params(k: Tensor) -> tuple[Tensor, ...]:
    return k.unbind(-1)


# ---------------------------------------------------------------- the shape SDFs

def _sdf_box(p: Tensor, k: Tensor) -> Tensor:
    x, y, z = p.unbind(-1)
    hx, hy, hz = _params(k)
    return _box(x, y, z, hx, hy, hz)


def _sdf_ellipsoid(p: Tensor, k: Tensor) -> Tensor:
    # Approximation |p/r| (|p/r| - 1) / |p/r^2|: exact on the surface and along the axes.
    x, y, z = p.unbind(-1)
    a, b, c = _params(k)
    k0 = _len3(x / a, y / b, z / c)
    k1 = _len3(x / (a * a), y / (b * b), z / (c * c)).clamp_min(1e-6)
    # Deep inside the approximation degenerates (0 at the centre); (k0 - 1) * min radius is
    # 1-Lipschitz and negative there. Only the surface band matters for rendering.
    deep = (k0 - 1.0) * torch.minimum(torch.minimum(a, b), c)
    return torch.where(k0 < 0.5, deep, k0 * (k0 - 1.0) / k1)


def _sdf_cylinder(p: Tensor, k: Tensor) -> Tensor:
    x, y, z = p.unbind(-1)
    r, h = _params(k)
    return _combine(_len2(x, z) - r, y.abs() - h)


def _cone_base(r: Tensor, h: Tensor) -> Tensor:
    # Base height below the origin that centres the bounding sphere (apex and rim equidistant).
    return (h * h - r * r) / (2.0 * h)


def _sdf_cone(p: Tensor, k: Tensor) -> Tensor:
    x, y, z = p.unbind(-1)
    r, h = _params(k)
    b = _cone_base(r, h)
    q = _len2(x, z)
    zero = torch.zeros_like(q)
    top = h - b
    d_slant = _segment(q, y, zero, top, r, -b)
    d_base = _segment(q, y, zero, -b, r, -b)
    inside = (y > -b) & (q / r + (y + b) / h < 1.0)
    d = torch.minimum(d_slant, d_base)
    return torch.where(inside, -d, d)


def _sdf_torus(p: Tensor, k: Tensor) -> Tensor:
    x, y, z = p.unbind(-1)
    big, small = _params(k)
    return _len2(_len2(x, z) - big, y) - small


def _sdf_capsule(p: Tensor, k: Tensor) -> Tensor:
    x, y, z = p.unbind(-1)
    half, r = _params(k)
    dx = x.abs() - half
    return _len3(dx.clamp_min(0.0), y, z) - r


_COS30, _SIN30 = math.cos(math.pi / 6), 0.5


def _sdf_hex_prism(p: Tensor, k: Tensor) -> Tensor:
    x, y, z = p.unbind(-1)
    apothem, depth = _params(k)
    ax, ay = x.abs(), y.abs()
    d2 = torch.maximum(ay, ax * _COS30 + ay * _SIN30) - apothem
    return _combine(d2, z.abs() - depth)


def _sdf_wedge(p: Tensor, k: Tensor) -> Tensor:
    # Right-triangle profile (-a,-b), (a,-b), (-a,b) extruded along z; its hypotenuse passes
    # through the origin, and all three corners are at distance sqrt(a^2 + b^2).
    x, y, z = p.unbind(-1)
    a, b, depth = _params(k)
    hyp = (b * x + a * y) / _len2(a, b)
    d2 = torch.maximum(torch.maximum(-y - b, -x - a), hyp)
    return _combine(d2, z.abs() - depth)


def _sdf_l_shape(p: Tensor, k: Tensor) -> Tensor:
    # Upright bar on the left plus a foot along the bottom; arms of different lengths.
    x, y, z = p.unbind(-1)
    w, hgt, t, depth = _params(k)
    upright = _rect(x - (-w + 0.5 * t), y, 0.5 * t, hgt)
    foot = _rect(x, y - (-hgt + 0.5 * t), w, 0.5 * t)
    return _combine(torch.minimum(upright, foot), z.abs() - depth)


_CROSS_BAR = 0.35  # height of the crossbar as a fraction of the half-height (a Latin cross)


def _sdf_cross(p: Tensor, k: Tensor) -> Tensor:
    x, y, z = p.unbind(-1)
    w, hgt, t, depth = _params(k)
    stem = _rect(x, y, 0.5 * t, hgt)
    bar = _rect(x, y - _CROSS_BAR * hgt, w, 0.5 * t)
    return _combine(torch.minimum(stem, bar), z.abs() - depth)


def _cross_bound(k: Tensor) -> Tensor:
    w, hgt, t, depth = _params(k)
    top = _len2(0.5 * t, hgt)                          # top corners of the stem
    arm = _len2(w, _CROSS_BAR * hgt + 0.5 * t)         # upper corners of the crossbar ends
    return _len2(torch.maximum(top, arm), depth)


def _pyramid_base(ax: Tensor, az: Tensor, h: Tensor) -> Tensor:
    return (h * h - ax * ax - az * az) / (2.0 * h)


def _sdf_pyramid(p: Tensor, k: Tensor) -> Tensor:
    # Rectangular base (half sizes ax, az) at y = -b, apex at y = h - b; each side is the plane
    # through a base edge and the apex, with normal (h, a)/|(h, a)| in its (|x| or |z|, y) plane.
    x, y, z = p.unbind(-1)
    ax, az, h = _params(k)
    b = _pyramid_base(ax, az, h)
    side_x = (h * (x.abs() - ax) + ax * (y + b)) / _len2(h, ax)
    side_z = (h * (z.abs() - az) + az * (y + b)) / _len2(h, az)
    return torch.maximum(torch.maximum(-y - b, side_x), side_z)


_MUG_WALL = 0.06
_MUG_HANDLE_TUBE = 0.055


def _sdf_mug(p: Tensor, k: Tensor) -> Tensor:
    x, y, z = p.unbind(-1)
    radius, half, handle = _params(k)
    radial = _len2(x, z)
    outer = _combine(radial - radius, y.abs() - half)
    # Cavity: open at the top (it extends past the rim), closed by a bottom as thick as the wall.
    cav_lo, cav_hi = -half + _MUG_WALL, half + 1.0
    cavity = _combine(radial - (radius - _MUG_WALL), (y - 0.5 * (cav_lo + cav_hi)).abs()
                      - 0.5 * (cav_hi - cav_lo))
    body = torch.maximum(outer, -cavity)
    # Handle: a ring in the xy-plane on the +x side, with the part inside the body cut away.
    cx = radius + 0.4 * handle
    ring = _len2(_len2(x - cx, y) - handle, z) - _MUG_HANDLE_TUBE
    return torch.minimum(body, torch.maximum(ring, -outer))


def _mug_bound(k: Tensor) -> Tensor:
    radius, half, handle = _params(k)
    return torch.maximum(_len2(radius, half), radius + 1.4 * handle + _MUG_HANDLE_TUBE)


# Mirror lines of a 5-pointed star with a tip on +y lie at 90 + m * 36 degrees. Folding by
# |x| and the mirrors at -18, 18 and 54 degrees (each towards larger angles) maps every point to
# the sector [54, 90] degrees between the top tip and its right inner corner.
_STAR_MIRRORS = tuple((-math.sin(math.radians(a)), math.cos(math.radians(a))) for a in (-18.0, 18.0, 54.0))
_STAR_INNER = (math.cos(math.radians(54.0)), math.sin(math.radians(54.0)))


def _sdf_star(p: Tensor, k: Tensor) -> Tensor:
    x, y, z = p.unbind(-1)
    outer, ratio, depth = _params(k)
    x = x.abs()
    for nx, ny in _STAR_MIRRORS:
        x, y = _reflect(x, y, nx, ny)
    inner = outer * ratio
    ix, iy = inner * _STAR_INNER[0], inner * _STAR_INNER[1]
    zero = torch.zeros_like(x)
    d = _segment(x, y, zero, outer, ix, iy)
    # Inside when on the origin side of the edge tip -> inner corner.
    side = ix * (y - outer) - (iy - outer) * x
    d2 = torch.where(side < 0.0, -d, d)
    return _combine(d2, z.abs() - depth)


def _sdf_arrow(p: Tensor, k: Tensor) -> Tensor:
    # Shaft along x ending in a triangular head pointing to +x.
    x, y, z = p.unbind(-1)
    half, shaft, head_w, head_l, depth = _params(k)
    neck = half - head_l
    shaft_d = _rect(x - 0.5 * (neck - half), y, 0.5 * (neck + half), shaft)
    slant = (head_l * y.abs() + head_w * (x - half)) / _len2(head_l, head_w)
    head_d = torch.maximum(neck - x, slant)
    return _combine(torch.minimum(shaft_d, head_d), z.abs() - depth)


def _arrow_bound(k: Tensor) -> Tensor:
    half, shaft, head_w, head_l, depth = _params(k)
    neck = half - head_l
    corners = torch.maximum(_len2(half, shaft), torch.maximum(_len2(neck, head_w), half))
    return _len2(corners, depth)


SHAPES: tuple[ShapeSpec, ...] = (
    ShapeSpec("box", _sdf_box, ("hx", "hy", "hz"), (0.55, 0.32, 0.16), (0.68, 0.45, 0.26),
              lambda k: _len3(*_params(k))),
    ShapeSpec("ellipsoid", _sdf_ellipsoid, ("a", "b", "c"), (0.72, 0.42, 0.22), (0.86, 0.55, 0.32),
              lambda k: k[..., 0], step=0.8),
    ShapeSpec("cylinder", _sdf_cylinder, ("radius", "half_height"), (0.24, 0.55), (0.34, 0.7),
              lambda k: _len2(k[..., 0], k[..., 1])),
    ShapeSpec("cone", _sdf_cone, ("radius", "height"), (0.4, 1.15), (0.55, 1.4),
              lambda k: k[..., 1] - _cone_base(k[..., 0], k[..., 1])),
    ShapeSpec("torus", _sdf_torus, ("major", "minor"), (0.5, 0.13), (0.62, 0.22),
              lambda k: k[..., 0] + k[..., 1]),
    ShapeSpec("capsule", _sdf_capsule, ("half_length", "radius"), (0.45, 0.17), (0.56, 0.25),
              lambda k: k[..., 0] + k[..., 1]),
    ShapeSpec("hex_prism", _sdf_hex_prism, ("apothem", "half_depth"), (0.5, 0.14), (0.62, 0.26),
              lambda k: _len2(k[..., 0] / _COS30, k[..., 1])),
    ShapeSpec("wedge", _sdf_wedge, ("half_width", "half_height", "half_depth"),
              (0.55, 0.4, 0.2), (0.7, 0.55, 0.32), lambda k: _len3(*_params(k))),
    ShapeSpec("l_shape", _sdf_l_shape, ("half_width", "half_height", "thickness", "half_depth"),
              (0.5, 0.55, 0.2, 0.15), (0.62, 0.68, 0.28, 0.24),
              lambda k: _len3(k[..., 0], k[..., 1], k[..., 3])),
    ShapeSpec("cross", _sdf_cross, ("arm", "half_height", "thickness", "half_depth"),
              (0.38, 0.68, 0.18, 0.12), (0.5, 0.8, 0.26, 0.2),
              _cross_bound),
    ShapeSpec("pyramid", _sdf_pyramid, ("half_x", "half_z", "height"), (0.5, 0.36, 0.95),
              (0.62, 0.48, 1.15), lambda k: k[..., 2] - _pyramid_base(k[..., 0], k[..., 1], k[..., 2])),
    ShapeSpec("mug", _sdf_mug, ("radius", "half_height", "handle"), (0.38, 0.36, 0.2),
              (0.46, 0.46, 0.26), _mug_bound),
    ShapeSpec("star", _sdf_star, ("outer", "inner_ratio", "half_depth"), (0.72, 0.4, 0.12),
              (0.85, 0.5, 0.2), lambda k: _len2(k[..., 0], k[..., 2])),
    ShapeSpec("arrow", _sdf_arrow, ("half_length", "shaft", "head_width", "head_length", "half_depth"),
              (0.7, 0.09, 0.3, 0.3, 0.12), (0.82, 0.14, 0.4, 0.4, 0.2), _arrow_bound),
)

SHAPE_NAMES: tuple[str, ...] = tuple(s.name for s in SHAPES)
MAX_PARAMS: int = max(s.num_params for s in SHAPES)


def shape_index(name: str) -> int:
    """Class index of shape ``name`` (raises ``KeyError`` with the known names)."""
    try:
        return SHAPE_NAMES.index(name)
    except ValueError:
        raise KeyError(f"unknown shape {name!r}; known: {', '.join(SHAPE_NAMES)}") from None


def pad_params(params: Tensor) -> Tensor:
    """Zero-pad ``n x K`` parameters to ``n x MAX_PARAMS`` (the renderer's common layout)."""
    return torch.nn.functional.pad(params, (0, MAX_PARAMS - params.shape[-1]))
