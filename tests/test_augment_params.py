"""Parameter sampling, param layout, configs and recipes of the augmentation package (CPU only)."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from augment import (
    PARAM_KEYS,
    PARAM_VECTOR_LAYOUT,
    RECIPES,
    AugmentConfig,
    ViewConfig,
    build_recipe,
    neutral_params,
    params_to_vector,
    sample_view_params,
)
from augment.sampling import chunk_sizes, sample_crop_boxes

OFF = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0, rotation_p=0.0)
ON = dict(flip_p=1.0, jitter_p=1.0, grayscale_p=1.0, blur_p=1.0, solarize_p=1.0, rotation_p=1.0)
ON["rotation_degrees"] = 30.0
NEUTRAL = {
    "flip": 0.0,
    "jitter_applied": 0.0,
    "brightness": 1.0,
    "contrast": 1.0,
    "saturation": 1.0,
    "hue": 0.0,
    "grayscale": 0.0,
    "blur_applied": 0.0,
    "blur_sigma": 0.0,
    "solarize": 0.0,
    "rotation_angle": 0.0,
}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shapes_and_dtypes_of_every_param() -> None:
    params = sample_view_params(ViewConfig(), 7, 32, 24, _gen())
    assert set(params) == set(PARAM_KEYS)
    for key, value in params.items():
        if key == "crop_box":
            assert value.shape == (7, 4) and value.dtype == torch.float32
        elif key == "jitter_order":
            assert value.shape == (7, 4) and value.dtype == torch.int64
        else:
            assert value.shape == (7,) and value.dtype == torch.float32, key
    assert params_to_vector(params).shape == (7, len(PARAM_VECTOR_LAYOUT))


def test_all_ops_off_gives_neutral_params() -> None:
    params = sample_view_params(ViewConfig(**OFF), 64, 32, 32, _gen(1))
    for key, value in NEUTRAL.items():
        assert torch.all(params[key] == value), key
    assert torch.equal(params["jitter_order"], torch.arange(4).expand(64, 4))


def test_all_ops_on_gives_values_in_their_ranges() -> None:
    cfg = ViewConfig(**ON, brightness=0.4, contrast=0.3, saturation=0.2, hue=0.1, blur_sigma=(0.5, 1.5))
    params = sample_view_params(cfg, 256, 32, 32, _gen(2))
    for key in ("flip", "jitter_applied", "grayscale", "blur_applied", "solarize"):
        assert torch.all(params[key] == 1.0), key
    b, c, s, h = params["brightness"], params["contrast"], params["saturation"], params["hue"]
    assert b.min() >= 0.6 and b.max() <= 1.4 and b.std() > 0.1
    assert c.min() >= 0.7 and c.max() <= 1.3 and c.std() > 0.05
    assert s.min() >= 0.8 and s.max() <= 1.2 and s.std() > 0.05
    assert h.min() >= -0.1 and h.max() <= 0.1 and (h.abs() > 0.05).any()
    sigma = params["blur_sigma"]
    assert sigma.min() >= 0.5 and sigma.max() <= 1.5 and sigma.std() > 0.1
    angle = params["rotation_angle"]
    assert angle.min() >= -30 and angle.max() <= 30 and (angle > 20).any() and (angle < -20).any()
    orders = params["jitter_order"]
    assert torch.equal(orders.sort(dim=1).values, torch.arange(4).expand(256, 4))
    assert len({tuple(o) for o in orders.tolist()}) > 12  # 24 permutations, drawn per sample


def test_skipped_rows_hold_neutral_values_and_rates_follow_p() -> None:
    cfg = ViewConfig(jitter_p=0.5, blur_p=0.3, rotation_p=0.4, rotation_degrees=90.0, solarize_p=0.2)
    params = sample_view_params(cfg, 4000, 32, 32, _gen(3))
    off = params["jitter_applied"] == 0
    assert abs(1 - off.float().mean().item() - 0.5) < 0.04
    for key in ("brightness", "contrast", "saturation"):
        assert torch.all(params[key][off] == 1.0) and torch.all(params[key][~off] != 1.0)
    assert torch.all(params["hue"][off] == 0.0)
    assert torch.equal(params["jitter_order"][off], torch.arange(4).expand(int(off.sum()), 4))
    blur = params["blur_applied"] == 1
    assert abs(blur.float().mean().item() - 0.3) < 0.04
    assert torch.all(params["blur_sigma"][~blur] == 0) and torch.all(params["blur_sigma"][blur] >= 0.1)
    rotated = params["rotation_angle"] != 0
    assert abs(rotated.float().mean().item() - 0.4) < 0.04
    assert abs(params["solarize"].mean().item() - 0.2) < 0.04


def test_fixed_jitter_order_when_not_random() -> None:
    params = sample_view_params(ViewConfig(jitter_p=1.0, jitter_random_order=False), 16, 32, 32, _gen())
    assert torch.equal(params["jitter_order"], torch.arange(4).expand(16, 4))


def test_crop_boxes_are_pixel_aligned_and_respect_scale_and_ratio() -> None:
    height, width = 40, 30
    scale, ratio = (0.2, 0.6), (0.75, 4 / 3)
    box = sample_crop_boxes(2000, height, width, scale, ratio, _gen(4))
    px = box * torch.tensor([width, height, width, height], dtype=torch.float32)
    assert torch.allclose(px, px.round(), atol=1e-4)
    px = px.round()
    w, h = px[:, 2] - px[:, 0], px[:, 3] - px[:, 1]
    assert torch.all(px[:, :2] >= 0) and torch.all(px[:, 2] <= width) and torch.all(px[:, 3] <= height)
    assert torch.all(w >= 1) and torch.all(h >= 1)
    # Rounding w and h to whole pixels moves area and ratio a little beyond the sampled range.
    area = w * h / (height * width)
    assert area.min() > scale[0] * 0.8 and area.max() < scale[1] * 1.2
    assert area.min() < scale[0] + 0.05 and area.max() > scale[1] - 0.05
    aspect = w / h
    assert aspect.min() > ratio[0] * 0.85 and aspect.max() < ratio[1] * 1.15
    # Top-left corners are spread over every admissible position, not stuck at 0.
    assert px[:, 0].max() > 0 and px[:, 1].max() > 0


def test_crop_falls_back_to_torchvision_central_crop() -> None:
    # A 16 x 32 (h x w) image cannot hold the full-area crop at ratio <= 4/3, so all 10 tries fail:
    # torchvision then takes h = 16, w = round(16 * 4/3) = 21, top = 0, left = (32 - 21) // 2 = 5.
    box = sample_crop_boxes(5, 16, 32, (1.0, 1.0), (3 / 4, 4 / 3), _gen())
    expected = torch.tensor([5 / 32, 0.0, 26 / 32, 1.0]).expand(5, 4)
    assert torch.allclose(box, expected)


def test_chunks_share_params_within_and_differ_across() -> None:
    assert chunk_sizes(10, 3) == [4, 3, 3]
    with pytest.raises(ValueError):
        chunk_sizes(4, 5)
    params = sample_view_params(ViewConfig(**ON), 10, 32, 32, _gen(5), chunks=3)
    bounds = [(0, 4), (4, 7), (7, 10)]
    vectors = params_to_vector(params)
    for start, stop in bounds:
        assert torch.equal(vectors[start:stop], vectors[start].expand(stop - start, -1))
        orders = params["jitter_order"]
        assert torch.equal(orders[start:stop], orders[start].expand(stop - start, 4))
    assert not torch.equal(vectors[0], vectors[4]) and not torch.equal(vectors[4], vectors[7])


def test_same_seed_same_params_and_generator_use_independent_of_probabilities() -> None:
    a = sample_view_params(ViewConfig(), 32, 32, 32, _gen(7))
    b = sample_view_params(ViewConfig(), 32, 32, 32, _gen(7))
    c = sample_view_params(ViewConfig(), 32, 32, 32, _gen(8))
    assert all(torch.equal(a[k], b[k]) for k in PARAM_KEYS)
    assert not torch.equal(a["crop_box"], c["crop_box"])
    g_off, g_on = _gen(9), _gen(9)
    sample_view_params(ViewConfig(**OFF), 32, 32, 32, g_off)
    sample_view_params(ViewConfig(**ON), 32, 32, 32, g_on)
    assert torch.equal(g_off.get_state(), g_on.get_state())


def test_sampling_rejects_a_device_generator_that_is_not_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA generator")
    with pytest.raises(ValueError, match="CPU"):
        sample_view_params(ViewConfig(), 4, 32, 32, torch.Generator(device="cuda"))


def test_params_to_vector_layout() -> None:
    params = neutral_params(torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.0, 0.0, 1.0, 1.0]]))
    params["flip"] = torch.tensor([1.0, 0.0])
    params["brightness"] = torch.tensor([1.3, 1.0])
    params["hue"] = torch.tensor([-0.05, 0.0])
    params["blur_sigma"] = torch.tensor([0.0, 1.7])
    params["rotation_angle"] = torch.tensor([90.0, -150.0])
    vec = params_to_vector(params)
    column = {name: vec[:, i] for i, name in enumerate(PARAM_VECTOR_LAYOUT)}
    assert torch.allclose(vec[:, :4], params["crop_box"])
    assert torch.equal(column["flip"], torch.tensor([1.0, 0.0]))
    assert torch.allclose(column["brightness"], torch.tensor([1.3, 1.0]))
    assert torch.allclose(column["hue"], torch.tensor([-0.05, 0.0]))
    assert torch.allclose(column["blur_sigma"], torch.tensor([0.0, 1.7]))
    assert torch.equal(column["contrast"], torch.ones(2))
    expected_cos = torch.tensor([0.0, math.cos(math.radians(-150))])
    expected_sin = torch.tensor([1.0, math.sin(math.radians(-150))])
    assert torch.allclose(column["rotation_cos"], expected_cos, atol=1e-6)
    assert torch.allclose(column["rotation_sin"], expected_sin, atol=1e-6)
    del params["solarize"]
    with pytest.raises(KeyError, match="solarize"):
        params_to_vector(params)


def test_blur_kernel_size_is_odd_and_about_a_tenth_of_the_side() -> None:
    cfg = ViewConfig()
    assert [cfg.blur_kernel_size(s) for s in (16, 32, 64, 96, 224)] == [3, 3, 7, 9, 23]


def test_view_config_validation() -> None:
    with pytest.raises(ValidationError):
        ViewConfig(flip_p=1.5)
    with pytest.raises(ValidationError):
        ViewConfig(crop_scale=(0.9, 0.2))
    with pytest.raises(ValidationError):
        ViewConfig(blur_sigma=(0.0, 1.0))
    with pytest.raises(ValidationError):
        ViewConfig(hue=0.7)
    with pytest.raises(ValidationError):
        ViewConfig(unknown=1.0)


def test_augment_config_names_the_key_of_an_unknown_recipe() -> None:
    with pytest.raises(ValidationError) as info:
        AugmentConfig(recipe="nope")
    message = str(info.value)
    assert "augment.recipe" in message and "'nope'" in message
    assert all(name in message for name in RECIPES)
    with pytest.raises(ValidationError):
        AugmentConfig(recipes="vicreg")


def test_vicreg_recipe_follows_the_paper_with_configurable_scale() -> None:
    recipe = build_recipe(AugmentConfig(crop_scale_min=0.2))
    first, second = (spec.config for spec in recipe.views)
    assert [spec.source for spec in recipe.views] == [0, 0]
    for view in (first, second):
        assert view.crop_scale == (0.2, 1.0) and view.flip_p == 0.5 and view.jitter_p == 0.8
        assert (view.brightness, view.contrast, view.saturation, view.hue) == (0.4, 0.4, 0.2, 0.1)
        assert view.grayscale_p == 0.2 and view.rotation_p == 0.0
    assert (first.blur_p, second.blur_p) == (1.0, 0.1)
    assert (first.solarize_p, second.solarize_p) == (0.0, 0.2)
    assert build_recipe(AugmentConfig()).views[0].config.crop_scale == (0.08, 1.0)
    distinct = build_recipe(AugmentConfig(source="distinct"))
    assert [spec.source for spec in distinct.views] == [0, 1]


def test_views_override_replaces_configs_and_checks_count() -> None:
    views = [ViewConfig(**OFF), ViewConfig(**ON)]
    recipe = build_recipe(AugmentConfig(views=views, source="distinct"))
    assert [spec.config for spec in recipe.views] == views
    assert [spec.source for spec in recipe.views] == [0, 1]
    with pytest.raises(ValueError, match="augment.views"):
        build_recipe(AugmentConfig(views=[ViewConfig()]))
    with pytest.raises(ValidationError, match="crop_scale_min"):
        AugmentConfig(views=views, crop_scale_min=0.2)
