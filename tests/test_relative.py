"""Relative transformation vectors: layouts, values against direct computations, availability."""

from __future__ import annotations

import math

import pytest
import torch

from augment import AugmentConfig, ViewAugmenter, neutral_params
from augment.quaternion import quat_multiply, quat_to_matrix, random_quaternion
from augment.relative import (
    RELATIVE_LAYOUTS,
    augment_delta,
    latent_rotation,
    latent_rotation_hue,
    relative_dim,
    relative_vectors,
    wrap_turns,
)
from augment.sampling import PARAM_VECTOR_LAYOUT


def _latents(batch: int, views: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "quaternion": random_quaternion(batch * views, g).view(batch, views, 4),
        "object_hue": torch.rand(batch, views, generator=g),
        "background_hue": torch.rand(batch, views, generator=g),
    }


def test_layout_lengths() -> None:
    assert relative_dim("rotation") == 4 and relative_dim("rotation_hue") == 6
    assert relative_dim("augment") == len(PARAM_VECTOR_LAYOUT) == 16
    assert RELATIVE_LAYOUTS["rotation_hue"][4:] == ("object_hue", "background_hue")
    with pytest.raises(KeyError, match="known"):
        relative_dim("pose")


def test_relative_rotation_takes_pose_a_to_pose_b() -> None:
    latents = _latents(5, 3)
    rel = latent_rotation(latents, 2, 0)
    q = latents["quaternion"]
    assert (rel[:, 0] >= 0).all()
    for n in range(5):
        r_a, r_b = quat_to_matrix(q[n, 2]), quat_to_matrix(q[n, 0])
        torch.testing.assert_close(quat_to_matrix(rel[n]), r_a.T @ r_b, atol=1e-5, rtol=0)
    composed = quat_multiply(q[:, 2], rel)  # q_b = q_a * rel, up to sign
    sign = torch.sign((composed * q[:, 0]).sum(-1, keepdim=True))
    torch.testing.assert_close(composed * sign, q[:, 0], atol=1e-6, rtol=0)


def test_hue_differences_wrap_around_the_circle() -> None:
    assert wrap_turns(torch.tensor([0.1 - 0.9, 0.9 - 0.1, 0.25, -0.5, 0.5])).tolist() == pytest.approx(
        [0.2, -0.2, 0.25, -0.5, -0.5])
    latents = _latents(4, 2)
    latents["object_hue"] = torch.tensor([[0.95, 0.05], [0.1, 0.3], [0.5, 0.5], [0.05, 0.95]])
    rel = latent_rotation_hue(latents, 0, 1)
    assert rel.shape == (4, 6)
    torch.testing.assert_close(rel[:, :4], latent_rotation(latents, 0, 1))
    assert rel[:, 4].tolist() == pytest.approx([0.1, 0.2, 0.0, -0.1], abs=1e-6)
    expected_bg = [(b - a + 0.5) % 1.0 - 0.5 for a, b in latents["background_hue"].tolist()]
    assert rel[:, 5].tolist() == pytest.approx(expected_bg, abs=1e-6)


def test_augment_delta_is_the_difference_of_parameter_vectors() -> None:
    a = neutral_params(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.6, 0.9]]))
    b = neutral_params(torch.tensor([[0.2, 0.1, 0.7, 0.8], [0.1, 0.2, 0.6, 0.9]]))
    b["rotation_angle"] = torch.tensor([90.0, 0.0])
    b["hue"] = torch.tensor([0.05, -0.1])
    delta = augment_delta(a, b)
    col = {name: k for k, name in enumerate(PARAM_VECTOR_LAYOUT)}
    assert delta[0, :4].tolist() == pytest.approx([0.2, 0.1, -0.3, -0.2])
    assert delta[:, col["hue"]].tolist() == pytest.approx([0.05, -0.1])
    assert delta[0, col["rotation_cos"]].item() == pytest.approx(math.cos(math.pi / 2) - 1.0, abs=1e-6)
    assert delta[0, col["rotation_sin"]].item() == pytest.approx(1.0)
    assert torch.count_nonzero(delta[1, [k for k in range(16) if k != col["hue"]]]) == 0


def test_latent_kinds_need_latents_and_distinct_sources() -> None:
    params = [neutral_params(torch.rand(3, 4)) for _ in range(3)]
    latents = _latents(3, 3)
    pairs = ((0, 1), (1, 2))
    full = relative_vectors(pairs, [0, 1, 2], params, latents)
    assert {k: tuple(v.shape) for k, v in full.items()} == {
        "augment": (3, 2, 16), "rotation": (3, 2, 4), "rotation_hue": (3, 2, 6)}
    torch.testing.assert_close(full["rotation"][:, 1], latent_rotation(latents, 1, 2))
    assert set(relative_vectors(pairs, [0, 0, 0], params, latents)) == {"augment"}
    assert set(relative_vectors(pairs, [0, 1, 2], params, None)) == {"augment"}
    only_pose = {"quaternion": latents["quaternion"]}
    assert set(relative_vectors(pairs, [0, 1, 2], params, only_pose)) == {"augment", "rotation"}
    assert relative_vectors((), [0], params, latents) == {}


def test_pipeline_fills_relative_from_the_views_it_made() -> None:
    images = torch.randint(0, 256, (4, 3, 3, 12, 12), dtype=torch.uint8)
    latents = _latents(4, 3)
    cfg = AugmentConfig(recipe="sequence", source="distinct", sequence_length=2)
    batch = ViewAugmenter(cfg, (0.5,) * 3, (0.25,) * 3, 12)(images, torch.Generator().manual_seed(0),
                                                            latents=latents)
    assert batch.relative["rotation"].shape == (4, 2, 4)
    torch.testing.assert_close(batch.relative["rotation"][:, 0], latent_rotation(latents, 0, 1))
    torch.testing.assert_close(batch.relative["augment"][:, 1],
                               augment_delta(batch.params[1], batch.params[2]))
