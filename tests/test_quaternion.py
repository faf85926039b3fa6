"""Quaternion helpers against matrices built independently here (Rodrigues' formula)."""

from __future__ import annotations

import math

import pytest
import torch

from augment.quaternion import (
    matrix_to_quat,
    quat_angle,
    quat_canonical,
    quat_conjugate,
    quat_from_axis_angle,
    quat_inverse,
    quat_multiply,
    quat_rotate,
    quat_to_matrix,
    random_quaternion,
    relative_rotation,
)

DT = torch.float64


def rodrigues(axis: list[float], angle: float) -> torch.Tensor:
    """R = I + sin(a) K + (1 - cos(a)) K^2, entry by entry, with K the cross-product matrix."""
    n = math.sqrt(sum(a * a for a in axis))
    kx, ky, kz = (a / n for a in axis)
    k = [[0.0, -kz, ky], [kz, 0.0, -kx], [-ky, kx, 0.0]]
    k2 = [[sum(k[i][m] * k[m][j] for m in range(3)) for j in range(3)] for i in range(3)]
    s, c = math.sin(angle), 1.0 - math.cos(angle)
    return torch.tensor(
        [[(1.0 if i == j else 0.0) + s * k[i][j] + c * k2[i][j] for j in range(3)] for i in range(3)],
        dtype=DT,
    )


def quat_of(axis: list[float], angle: float) -> torch.Tensor:
    n = math.sqrt(sum(a * a for a in axis))
    s = math.sin(angle / 2)
    return torch.tensor([math.cos(angle / 2)] + [s * a / n for a in axis], dtype=DT)


def random_axis_angles(n: int, seed: int) -> list[tuple[list[float], float]]:
    g = torch.Generator().manual_seed(seed)
    axes = torch.randn(n, 3, generator=g, dtype=DT)
    angles = torch.rand(n, generator=g, dtype=DT) * 2 * math.pi
    return [(axes[i].tolist(), float(angles[i])) for i in range(n)]


def test_to_matrix_matches_rodrigues() -> None:
    for axis, angle in random_axis_angles(20, 0):
        torch.testing.assert_close(quat_to_matrix(quat_of(axis, angle)), rodrigues(axis, angle))


def test_to_matrix_normalises_non_unit() -> None:
    axis, angle = [0.3, -1.0, 0.5], 1.1
    torch.testing.assert_close(quat_to_matrix(3.5 * quat_of(axis, angle)), rodrigues(axis, angle))


def test_multiply_composes_second_first() -> None:
    cases = random_axis_angles(10, 1)
    for (a1, t1), (a2, t2) in zip(cases[:5], cases[5:]):
        q = quat_multiply(quat_of(a1, t1), quat_of(a2, t2))
        torch.testing.assert_close(quat_to_matrix(q), rodrigues(a1, t1) @ rodrigues(a2, t2))


def test_multiply_batched_broadcast() -> None:
    q1 = random_quaternion(6, torch.Generator().manual_seed(2), dtype=DT).reshape(2, 3, 4)
    q2 = random_quaternion(3, torch.Generator().manual_seed(3), dtype=DT)
    out = quat_multiply(q1, q2)
    assert out.shape == (2, 3, 4)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(quat_to_matrix(out[i, j]),
                                       quat_to_matrix(q1[i, j]) @ quat_to_matrix(q2[j]))


def test_relative_rotation_is_r1t_r2() -> None:
    cases = random_axis_angles(12, 4)
    for (a1, t1), (a2, t2) in zip(cases[:6], cases[6:]):
        q1, q2 = quat_of(a1, t1), quat_of(a2, t2)
        rel = relative_rotation(q1, q2)
        assert rel[0] >= 0
        torch.testing.assert_close(quat_to_matrix(rel), rodrigues(a1, t1).T @ rodrigues(a2, t2))
        # q2 = q1 * rel up to sign
        back = quat_multiply(q1, rel)
        torch.testing.assert_close(quat_canonical(back), quat_canonical(q2))


def test_inverse_and_conjugate_identities() -> None:
    g = torch.Generator().manual_seed(5)
    q = torch.randn(7, 4, generator=g, dtype=DT)
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=DT).expand(7, 4)
    torch.testing.assert_close(quat_multiply(q, quat_inverse(q)), identity)
    torch.testing.assert_close(quat_multiply(quat_inverse(q), q), identity)
    unit = q / q.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(quat_conjugate(unit), quat_inverse(unit))
    # (q1 q2)^-1 = q2^-1 q1^-1
    p = torch.randn(7, 4, generator=g, dtype=DT)
    torch.testing.assert_close(quat_inverse(quat_multiply(q, p)),
                               quat_multiply(quat_inverse(p), quat_inverse(q)))


def test_canonical_sign() -> None:
    q = torch.tensor([[-0.5, 0.5, -0.5, 0.5], [0.0, -0.6, 0.8, 0.0], [0.0, 0.0, 0.0, -1.0],
                      [0.7, -0.1, 0.1, 0.7]], dtype=DT)
    c = quat_canonical(q)
    torch.testing.assert_close(c[0], -q[0])
    torch.testing.assert_close(c[1], -q[1])   # w == 0: first non-zero (x) made positive
    torch.testing.assert_close(c[2], -q[2])
    torch.testing.assert_close(c[3], q[3])
    torch.testing.assert_close(quat_canonical(-q), c)


@pytest.mark.parametrize(
    "axis,angle",
    [([1, 0, 0], math.pi), ([0, 1, 0], math.pi), ([0, 0, 1], math.pi), ([1, 1, 0], math.pi),
     ([0, 1, -1], math.pi * 0.97), ([1, 2, 3], 0.0), ([1, 2, 3], 0.4), ([-1, 0.2, 0.1], 2.9),
     ([0.1, -1, 0.2], 3.0), ([0.2, 0.1, -1], 2.8)],
)
def test_matrix_to_quat_every_branch(axis: list[float], angle: float) -> None:
    R = rodrigues(axis, angle)
    q = matrix_to_quat(R)
    assert q[0] >= 0
    assert abs(float(q.norm()) - 1.0) < 1e-12
    # Compare with the quaternion written directly from the axis and angle (up to sign).
    torch.testing.assert_close(q, quat_canonical(quat_of(axis, angle)))
    torch.testing.assert_close(quat_to_matrix(q), R)


def test_matrix_round_trip_batched() -> None:
    q = random_quaternion(500, torch.Generator().manual_seed(6), dtype=DT).reshape(5, 100, 4)
    torch.testing.assert_close(matrix_to_quat(quat_to_matrix(q)), q)


def test_matrix_to_quat_float32_near_pi() -> None:
    # Rotations close to 180 degrees are where a trace-only formula loses all precision.
    R = torch.stack([rodrigues([0.3, -0.8, 0.5], math.pi - d) for d in (1e-3, 1e-5, 0.0)])
    q = matrix_to_quat(R.to(torch.float32))
    torch.testing.assert_close(quat_to_matrix(q.double()), R, atol=1e-5, rtol=0)


def test_rotate_matches_matrix() -> None:
    g = torch.Generator().manual_seed(7)
    v = torch.randn(10, 3, generator=g, dtype=DT)
    for i, (axis, angle) in enumerate(random_axis_angles(10, 8)):
        torch.testing.assert_close(quat_rotate(quat_of(axis, angle), v[i]), rodrigues(axis, angle) @ v[i])
    q = random_quaternion(4, g, dtype=DT)
    out = quat_rotate(q[:, None], v[None])          # broadcast 4 x 10
    assert out.shape == (4, 10, 3)
    torch.testing.assert_close(out[2, 3], quat_to_matrix(q[2]) @ v[3])


def test_axis_angle_and_angle() -> None:
    q = quat_from_axis_angle(torch.tensor([0.0, 0.0, 2.0], dtype=DT), torch.tensor(1.2, dtype=DT))
    torch.testing.assert_close(quat_to_matrix(q), rodrigues([0, 0, 1], 1.2))
    torch.testing.assert_close(quat_angle(q), torch.tensor(1.2, dtype=DT))
    # the angle of q and -q is the same, and at most pi
    torch.testing.assert_close(quat_angle(-quat_of([1, 1, 0], 2.5)), torch.tensor(2.5, dtype=DT))


def test_random_uniform_on_so3() -> None:
    n = 40000
    q = random_quaternion(n, torch.Generator().manual_seed(9), dtype=DT)
    assert q.shape == (n, 4)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(n, dtype=DT))
    assert bool((q[:, 0] >= 0).all())
    R = quat_to_matrix(q)
    # Haar measure: E[R] = 0 and E[trace(R)^2] = 1 (the trace is the character of SO(3)).
    assert float(R.mean(dim=0).abs().max()) < 0.02
    trace = R.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert abs(float((trace**2).mean()) - 1.0) < 0.05
    # The angle density is (1 - cos t) / pi, so P(angle < pi/2) = (pi/2 - 1) / pi.
    frac = float((quat_angle(q) < math.pi / 2).double().mean())
    assert abs(frac - (math.pi / 2 - 1) / math.pi) < 0.01


def test_random_max_angle() -> None:
    n = 20000
    q = random_quaternion(n, torch.Generator().manual_seed(10), max_angle_deg=40.0, dtype=DT)
    angles = 2 * torch.acos(q[:, 0].clamp(-1, 1))
    assert float(angles.max()) <= math.radians(40.0) + 1e-9
    assert abs(float(angles.mean()) - math.radians(20.0)) < 0.01   # angle uniform in [0, 40]
    axis = q[:, 1:] / q[:, 1:].norm(dim=-1, keepdim=True)
    assert float(axis.mean(dim=0).abs().max()) < 0.03              # axis uniform on the sphere
    with pytest.raises(ValueError):
        random_quaternion(2, max_angle_deg=200.0)


def test_random_deterministic_and_float32() -> None:
    a = random_quaternion(5, torch.Generator().manual_seed(11))
    b = random_quaternion(5, torch.Generator().manual_seed(11))
    assert a.dtype == torch.float32
    assert torch.equal(a, b)
