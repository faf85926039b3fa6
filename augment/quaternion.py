"""Unit quaternions for 3D rotations, batched over leading dimensions.

Convention: a quaternion is a tensor ``... x 4`` laid out ``[w, x, y, z]`` (scalar first), and
it acts on column vectors as ``v' = q v q^*``, i.e. like the rotation matrix ``quat_to_matrix(q)``.
The product ``quat_multiply(q1, q2)`` is the Hamilton product, so the rotation it represents is
``R(q1) @ R(q2)``: ``q2`` is applied first. ``q`` and ``-q`` are the same rotation; functions that
return rotations return the *canonical* sign (``w >= 0``, see ``quat_canonical``) so that latents
written to disk have one representation per rotation.

Only elementwise arithmetic is used on per-element data (no matmul or reductions), so results do not
depend on batch composition or on the number of threads.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def quat_multiply(q1: Tensor, q2: Tensor) -> Tensor:
    """Hamilton product ``q1 * q2`` (broadcast over leading dims); rotation: apply ``q2``, then ``q1``."""
    w1, x1, y1, z1 = q1.unbind(-1)
    w2, x2, y2, z2 = q2.unbind(-1)
    return torch.stack(
        (
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ),
        dim=-1,
    )


def quat_conjugate(q: Tensor) -> Tensor:
    """Conjugate ``[w, -x, -y, -z]``; equals the inverse for unit quaternions."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def _norm_sq(q: Tensor) -> Tensor:
    w, x, y, z = q.unbind(-1)
    return w * w + x * x + y * y + z * z


def quat_normalize(q: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale ``q`` to unit length (``eps`` guards the zero quaternion)."""
    return q / torch.sqrt(_norm_sq(q).clamp_min(eps)).unsqueeze(-1)


def quat_inverse(q: Tensor) -> Tensor:
    """Multiplicative inverse ``q^* / |q|^2`` (works for non-unit quaternions too)."""
    return quat_conjugate(q) / _norm_sq(q).unsqueeze(-1)


def quat_canonical(q: Tensor) -> Tensor:
    """Choose the sign of ``q`` so that ``w >= 0``.

    When ``w == 0`` exactly (rotations by 180 degrees) the first non-zero of ``x, y, z`` is made
    positive, so that every rotation has exactly one canonical quaternion.
    """
    w, x, y, z = q.unbind(-1)
    one = torch.ones_like(w)
    sign = torch.where(z != 0, torch.sign(z), one)
    sign = torch.where(y != 0, torch.sign(y), sign)
    sign = torch.where(x != 0, torch.sign(x), sign)
    sign = torch.where(w != 0, torch.sign(w), sign)
    return q * sign.unsqueeze(-1)


def quat_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrix ``... x 3 x 3`` of ``q`` (normalised internally, so any non-zero ``q`` works)."""
    w, x, y, z = q.unbind(-1)
    s = 2.0 / _norm_sq(q)
    xx, yy, zz = s * x * x, s * y * y, s * z * z
    xy, xz, yz = s * x * y, s * x * z, s * y * z
    wx, wy, wz = s * w * x, s * w * y, s * w * z
    rows = (
        torch.stack((1.0 - yy - zz, xy - wz, xz + wy), dim=-1),
        torch.stack((xy + wz, 1.0 - xx - zz, yz - wx), dim=-1),
        torch.stack((xz - wy, yz + wx, 1.0 - xx - yy), dim=-1),
    )
    return torch.stack(rows, dim=-2)


def matrix_to_quat(R: Tensor) -> Tensor:
    """Canonical unit quaternion of rotation matrices ``... x 3 x 3``.

    Shepperd's method: each of ``w, x, y, z`` can be recovered from the square root of a
    combination of diagonal entries; dividing by the *largest* one keeps the other three
    well-conditioned, including for 180-degree rotations where ``w`` is 0.
    """
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 4 * component^2 for w, x, y, z respectively.
    four_sq = torch.stack(
        (
            1.0 + m00 + m11 + m22,
            1.0 + m00 - m11 - m22,
            1.0 - m00 + m11 - m22,
            1.0 - m00 - m11 + m22,
        ),
        dim=-1,
    )
    # Each candidate is 4 * c * q where c is its pivot component; normalising removes the scale.
    cand_w = torch.stack((four_sq[..., 0], m21 - m12, m02 - m20, m10 - m01), dim=-1)
    cand_x = torch.stack((m21 - m12, four_sq[..., 1], m01 + m10, m02 + m20), dim=-1)
    cand_y = torch.stack((m02 - m20, m01 + m10, four_sq[..., 2], m12 + m21), dim=-1)
    cand_z = torch.stack((m10 - m01, m02 + m20, m12 + m21, four_sq[..., 3]), dim=-1)
    cands = torch.stack((cand_w, cand_x, cand_y, cand_z), dim=-2)
    best = four_sq.argmax(dim=-1)
    index = best[..., None, None].expand(*best.shape, 1, 4)
    q = torch.gather(cands, -2, index).squeeze(-2)
    return quat_canonical(quat_normalize(q))


def relative_rotation(q1: Tensor, q2: Tensor) -> Tensor:
    """Canonical quaternion of ``R(q1)^-1 @ R(q2)``: the rotation taking pose 1 to pose 2 in the
    object frame (``q2 = q1 * relative_rotation(q1, q2)``)."""
    return quat_canonical(quat_normalize(quat_multiply(quat_conjugate(q1), q2)))


def quat_from_axis_angle(axis: Tensor, angle: Tensor) -> Tensor:
    """Quaternion of a rotation by ``angle`` radians (``...``) about ``axis`` (``... x 3``, any length)."""
    ax, ay, az = axis.unbind(-1)
    axis = axis / torch.sqrt(ax * ax + ay * ay + az * az).clamp_min(1e-12).unsqueeze(-1)
    half = 0.5 * angle
    return torch.cat((torch.cos(half).unsqueeze(-1), torch.sin(half).unsqueeze(-1) * axis), dim=-1)


def quat_angle(q: Tensor) -> Tensor:
    """Rotation angle in radians, in ``[0, pi]`` (the geodesic distance from the identity)."""
    w, x, y, z = q.unbind(-1)
    return 2.0 * torch.atan2(torch.sqrt(x * x + y * y + z * z), w.abs())


def quat_rotate(q: Tensor, v: Tensor) -> Tensor:
    """Rotate vectors ``v`` (``... x 3``) by unit quaternions ``q`` (``... x 4``), broadcasting."""
    w, qx, qy, qz = q.unbind(-1)
    vx, vy, vz = v.unbind(-1)
    # v' = v + 2 w (u x v) + 2 u x (u x v) with u = (qx, qy, qz): the sandwich product q v q^*
    # without building the pure quaternion.
    cx, cy, cz = qy * vz - qz * vy, qz * vx - qx * vz, qx * vy - qy * vx
    ccx, ccy, ccz = qy * cz - qz * cy, qz * cx - qx * cz, qx * cy - qy * cx
    return torch.stack(
        (vx + 2.0 * (w * cx + ccx), vy + 2.0 * (w * cy + ccy), vz + 2.0 * (w * cz + ccz)), dim=-1
    )


def random_quaternion(
    n: int,
    generator: torch.Generator | None = None,
    max_angle_deg: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Sample ``n`` canonical unit quaternions ``n x 4``.

    Without ``max_angle_deg`` they are uniform (Haar) on SO(3), by Shoemake's method: from three
    uniforms, ``sqrt(1-u1)`` and ``sqrt(u1)`` split the unit 4-vector's length between two planes
    and two uniform angles place it in each. With ``max_angle_deg`` the axis is uniform on the
    sphere and the angle uniform in ``[0, max_angle_deg]`` (not Haar: small angles are denser).
    Sampling runs in float64 and is cast to ``dtype`` at the end.
    """
    if max_angle_deg is None:
        u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
        r1, r2 = torch.sqrt(1.0 - u[:, 0]), torch.sqrt(u[:, 0])
        a1, a2 = 2.0 * math.pi * u[:, 1], 2.0 * math.pi * u[:, 2]
        q = torch.stack((r2 * torch.cos(a2), r1 * torch.sin(a1), r1 * torch.cos(a1), r2 * torch.sin(a2)), -1)
    else:
        if not 0.0 <= max_angle_deg <= 180.0:
            raise ValueError(f"max_angle_deg must be in [0, 180], got {max_angle_deg}")
        axis = torch.randn(n, 3, generator=generator, dtype=torch.float64)
        angle = torch.rand(n, generator=generator, dtype=torch.float64) * math.radians(max_angle_deg)
        q = quat_from_axis_angle(axis, angle)
    return quat_canonical(quat_normalize(q)).to(dtype)
