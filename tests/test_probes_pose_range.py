"""The 3D probe set and its object_rotation probe draw poses from the range the data uses."""

from __future__ import annotations

import pytest
import torch

from augment.quaternion import quat_angle, quat_multiply
from pretrain.probes.config import ProbesConfig
from pretrain.probes.probeset import load_probe_set
from pretrain.probes.suite import _latents_3d
from pretrain.probes.transforms import apply_transform

pytestmark = pytest.mark.usefixtures("one_thread")


def _new_pose_angles(tmp_path, limit: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles (degrees, from the canonical pose) of the probe poses and of object_rotation's
    new poses, for a probe set rendered with pose range ``limit``."""
    cfg = ProbesConfig(cache_dir=str(tmp_path), max_train=16, max_test=8, synth3d_size=16,
                       synth3d_classes=4, synth3d_max_angle_deg=limit)
    probe_set = load_probe_set("synth3d", cfg)
    assert probe_set.pose_max_angle_deg == limit
    rows = torch.arange(probe_set.images.shape[0])
    latents = _latents_3d(probe_set, rows)
    moved = apply_transform("object_rotation", probe_set.images, 0, latents)
    # params = relative_rotation(q_x, q_new) = q_x^-1 q_new, so q_new = q_x params
    q_new = quat_multiply(latents["quaternion"].float(), moved.params.float())
    return (torch.rad2deg(quat_angle(latents["quaternion"])),
            torch.rad2deg(quat_angle(q_new)))


def test_limited_pose_range_holds_for_the_set_and_for_new_poses(tmp_path):
    posed, moved = _new_pose_angles(tmp_path, 30.0)
    assert float(posed.max()) <= 30.0 + 1e-3
    assert float(moved.max()) <= 30.0 + 1e-3
    assert float(moved.min()) < 25.0  # really drawn, not pinned at the limit


def test_without_a_range_poses_spread_over_so3(tmp_path):
    posed, moved = _new_pose_angles(tmp_path, None)
    # Haar angles: P(angle <= 30 deg) = (t - sin t) / pi with t = 30 deg, about 0.6%.
    assert float((posed > 30.0).float().mean()) > 0.8
    assert float((moved > 30.0).float().mean()) > 0.8
    assert float(moved.max()) > 120.0
