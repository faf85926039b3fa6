"""Relative transformation vectors ("actions") between two views, in fixed documented layouts.

A recipe lists view pairs ``(i, j)``; for every pair the pipeline describes the transformation that
takes view ``i`` to view ``j``. ``ViewBatch.relative[kind]`` is ``B x P x D`` (``P`` pairs in recipe
order, ``D = relative_dim(kind)``); the kinds and their column layouts are ``RELATIVE_LAYOUTS``:

- ``rotation`` (4): the canonical quaternion ``[w, x, y, z]`` (``w >= 0``) of ``R_i^-1 R_j`` from the
  per-view ``quaternion`` latents of the synthetic 3D data (the rotation taking pose ``i`` to pose
  ``j`` in the object frame, ``augment.quaternion.relative_rotation``).
- ``rotation_hue`` (6): ``rotation`` followed by the object-hue and background-hue differences
  ``hue_j - hue_i`` wrapped to ``[-0.5, 0.5)`` turns (hue is circular).
- ``augment`` (16): ``params_to_vector(params_j) - params_to_vector(params_i)``, the difference of
  the per-sample augmentation parameters in ``augment.sampling.PARAM_VECTOR_LAYOUT``.

The latent kinds exist only when the batch carries the latents they need *and* the two views of
every pair were cut from different decoded views: views cut from the same rendering differ by the
identity rotation, and a silently constant action would train an equivariant objective on nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from augment.quaternion import relative_rotation
from augment.sampling import PARAM_VECTOR_LAYOUT, params_to_vector

QUATERNION_LAYOUT = ("rot_w", "rot_x", "rot_y", "rot_z")
RELATIVE_LAYOUTS: dict[str, tuple[str, ...]] = {
    "rotation": QUATERNION_LAYOUT,
    "rotation_hue": (*QUATERNION_LAYOUT, "object_hue", "background_hue"),
    "augment": tuple(f"delta_{name}" for name in PARAM_VECTOR_LAYOUT),
}


def relative_dim(kind: str) -> int:
    """Length of one relative vector of ``kind``; ``KeyError`` naming the known kinds otherwise."""
    try:
        return len(RELATIVE_LAYOUTS[kind])
    except KeyError:
        raise KeyError(f"unknown relative transform {kind!r}; known: {sorted(RELATIVE_LAYOUTS)}") from None


def wrap_turns(delta: Tensor) -> Tensor:
    """Map an angle difference in turns to ``[-0.5, 0.5)`` (0.9 - 0.1 and -0.2 are the same shift)."""
    return torch.remainder(delta + 0.5, 1.0) - 0.5


def latent_rotation(latents: dict[str, Tensor], source_a: int, source_b: int) -> Tensor:
    """``B x 4`` canonical quaternion of ``R_a^-1 R_b`` from ``latents["quaternion"]`` (``B x V x 4``)."""
    quaternion = latents["quaternion"].float()
    return relative_rotation(quaternion[:, source_a], quaternion[:, source_b])


def latent_rotation_hue(latents: dict[str, Tensor], source_a: int, source_b: int) -> Tensor:
    """``B x 6``: :func:`latent_rotation` then the wrapped object- and background-hue differences."""
    hues = [
        wrap_turns(latents[name][:, source_b].float() - latents[name][:, source_a].float())
        for name in ("object_hue", "background_hue")
    ]
    return torch.cat([latent_rotation(latents, source_a, source_b), torch.stack(hues, dim=1)], dim=1)


def augment_delta(params_a: dict[str, Tensor], params_b: dict[str, Tensor]) -> Tensor:
    """``B x 16``: ``params_to_vector(params_b) - params_to_vector(params_a)``."""
    return params_to_vector(params_b) - params_to_vector(params_a)


def relative_vectors(
    pairs: Sequence[tuple[int, int]],
    sources: Sequence[int],
    params: Sequence[dict[str, Tensor]],
    latents: dict[str, Tensor] | None,
) -> dict[str, Tensor]:
    """Every available kind for ``pairs`` of output views, each ``B x P x D`` (see module docstring).

    Args:
        pairs: ``(i, j)`` output-view indices, transformation from view ``i`` to view ``j``.
        sources: decoded view each output view was cut from (``ViewSpec.source``).
        params: per-view params as applied (``ViewBatch.params``).
        latents: per-decoded-view latents (``B x V x ...``) or ``None``.
    """
    if not pairs:
        return {}
    out = {"augment": torch.stack([augment_delta(params[i], params[j]) for i, j in pairs], dim=1)}
    if latents is None or any(sources[i] == sources[j] for i, j in pairs):
        return out
    if "quaternion" in latents:
        out["rotation"] = torch.stack(
            [latent_rotation(latents, sources[i], sources[j]) for i, j in pairs], dim=1)
        if "object_hue" in latents and "background_hue" in latents:
            out["rotation_hue"] = torch.stack(
                [latent_rotation_hue(latents, sources[i], sources[j]) for i, j in pairs], dim=1)
    return out
