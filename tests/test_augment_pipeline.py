"""Applying params (augment.ops) and the ViewAugmenter, checked against direct computations."""

from __future__ import annotations

import colorsys
import math

import pytest
import torch
import torch.nn.functional as F
from kornia.enhance import adjust_hue
from kornia.geometry.transform import crop_and_resize, rotate

from augment import (
    AugmentConfig,
    ViewAugmenter,
    ViewConfig,
    apply_view,
    neutral_params,
    sample_view_params,
)
from augment.ops import crop_resize, shift_hue

OFF = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0, rotation_p=0.0)
LUMA = (0.299, 0.587, 0.114)
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(batch: int = 8, height: int = 24, width: int = 20, seed: int = 0) -> torch.Tensor:
    """Float images in [0, 1] with pixel-level structure (every pixel differs from its neighbours)."""
    return torch.rand(batch, 3, height, width, generator=_gen(seed))


def _run(images: torch.Tensor, cfg: ViewConfig, size: int, seed: int = 0) -> tuple[torch.Tensor, dict]:
    params = sample_view_params(cfg, images.shape[0], images.shape[2], images.shape[3], _gen(seed))
    return apply_view(images, params, cfg, size), params


def _reference_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Slice each pixel-aligned box and resize it with F.interpolate (align_corners=True)."""
    height, width = images.shape[-2:]
    out = []
    for image, box in zip(images, boxes, strict=True):
        pixels = box * torch.tensor([width, height, width, height])
        x0, y0, x1, y1 = (round(v) for v in pixels.tolist())
        patch = image[None, :, y0:y1, x0:x1]
        out.append(F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=True)[0])
    return torch.stack(out)


def _luma(image: torch.Tensor) -> torch.Tensor:
    return LUMA[0] * image[0] + LUMA[1] * image[1] + LUMA[2] * image[2]


def test_crop_box_reproduces_the_crop() -> None:
    images = _images()
    cfg = ViewConfig(**OFF, crop_scale=(0.1, 0.9))
    out, params = _run(images, cfg, 16)
    assert torch.allclose(out, _reference_crop(images, params["crop_box"], 16), atol=1e-5)
    # A hand-written box, too: columns 3..10, rows 5..16 of a 20 x 24 (w x h) image.
    box = torch.tensor([[3 / 20, 5 / 24, 11 / 20, 17 / 24]])
    patch = images[:1, :, 5:17, 3:11]
    expected = F.interpolate(patch, size=(16, 16), mode="bilinear", align_corners=True)
    assert torch.allclose(crop_resize(images[:1], box, 16), expected, atol=1e-5)
    corners = torch.tensor([[[3.0, 5.0], [10.0, 5.0], [10.0, 16.0], [3.0, 16.0]]])
    kornia_crop = crop_and_resize(images[:1], corners, (16, 16))
    assert torch.allclose(crop_resize(images[:1], box, 16), kornia_crop, atol=1e-5)


def test_all_ops_off_output_is_exactly_the_crop() -> None:
    images = _images()
    out, params = _run(images, ViewConfig(**OFF), 16, seed=3)
    assert torch.equal(out, crop_resize(images, params["crop_box"], 16))


def test_all_ops_on_change_every_row() -> None:
    images = _images()
    cfg = ViewConfig(flip_p=1.0, jitter_p=1.0, grayscale_p=1.0, blur_p=1.0, solarize_p=1.0)
    out, params = _run(images, cfg, 16, seed=4)
    crop = crop_resize(images, params["crop_box"], 16)
    assert torch.all((out - crop).abs().flatten(1).amax(1) > 0.05)


def test_flip_rows_are_mirrored_crops_and_others_untouched() -> None:
    images = _images(batch=16)
    out, params = _run(images, ViewConfig(**{**OFF, "flip_p": 0.5}), 16, seed=5)
    flipped = params["flip"] == 1
    assert 0 < flipped.sum() < 16
    crop = _reference_crop(images, params["crop_box"], 16)
    assert torch.allclose(out[flipped], crop[flipped].flip(-1), atol=1e-5)
    assert torch.allclose(out[~flipped], crop[~flipped], atol=1e-5)


def test_grayscale_rows_hold_the_luma_on_every_channel() -> None:
    images = _images(batch=16)
    out, params = _run(images, ViewConfig(**{**OFF, "grayscale_p": 0.5}), 16, seed=6)
    gray = params["grayscale"] == 1
    assert 0 < gray.sum() < 16
    crop = crop_resize(images, params["crop_box"], 16)
    for row in range(16):
        if gray[row]:
            expected = _luma(crop[row])
            for channel in range(3):
                assert torch.allclose(out[row, channel], expected, atol=1e-5)
        else:
            assert torch.equal(out[row], crop[row])


def test_brightness_factor_on_a_constant_image() -> None:
    levels = torch.linspace(0.1, 0.9, 8)
    images = levels.view(8, 1, 1, 1).expand(8, 3, 12, 12).contiguous()
    cfg = ViewConfig(**{**OFF, "jitter_p": 1.0}, brightness=0.5, contrast=0.0, saturation=0.0, hue=0.0)
    out, params = _run(images, cfg, 8, seed=7)
    for row in range(8):
        factor = float(params["brightness"][row])
        assert factor != 1.0
        expected = min(max(float(levels[row]) * factor, 0.0), 1.0)
        assert torch.allclose(out[row], torch.full_like(out[row], expected), atol=1e-6)


def _direct_jitter(image: torch.Tensor, op: int, factor: float) -> torch.Tensor:
    """torchvision's formulas for one op on one C x H x W image, written out per pixel for hue."""
    if op == 0:
        return (image * factor).clamp(0, 1)
    if op == 1:
        return (factor * image + (1 - factor) * _luma(image).mean()).clamp(0, 1)
    if op == 2:
        return (factor * image + (1 - factor) * _luma(image)[None]).clamp(0, 1)
    out = torch.empty_like(image)
    for y in range(image.shape[1]):
        for x in range(image.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*image[:, y, x].tolist())
            out[:, y, x] = torch.tensor(colorsys.hsv_to_rgb((h + factor) % 1.0, s, v))
    return out


def test_color_jitter_matches_direct_formulas_in_the_recorded_order() -> None:
    images = _images(batch=6, height=10, width=10, seed=8)
    cfg = ViewConfig(**{**OFF, "jitter_p": 1.0}, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)
    out, params = _run(images, cfg, 6, seed=9)
    crop = crop_resize(images, params["crop_box"], 6)
    names = ("brightness", "contrast", "saturation", "hue")
    orders = {tuple(o) for o in params["jitter_order"].tolist()}
    assert len(orders) > 1
    for row in range(6):
        expected = crop[row]
        for op in params["jitter_order"][row].tolist():
            expected = _direct_jitter(expected, op, float(params[names[op]][row]))
        assert torch.allclose(out[row], expected, atol=2e-4), row


def test_shift_hue_equals_kornia_adjust_hue() -> None:
    images = _images(batch=6, height=8, width=8, seed=17)
    images[0] = 0.5  # gray: hue undefined, must stay unchanged
    images[1, :, :4] = torch.tensor([0.9, 0.9, 0.2]).view(3, 1, 1)  # red/green tie
    images[2, 2] = images[2, 0]  # red/blue tie
    turns = torch.tensor([0.3, -0.5, 0.25, 0.5, -0.1, 0.0])
    expected = adjust_hue(images, turns * 2 * math.pi)
    assert torch.allclose(shift_hue(images, turns), expected, atol=1e-5)
    assert torch.allclose(shift_hue(images[:1], turns[:1]), images[:1], atol=1e-6)


def test_solarize_matches_the_direct_formula() -> None:
    images = _images(batch=8, seed=10)
    out, params = _run(images, ViewConfig(**{**OFF, "solarize_p": 0.5}), 16, seed=11)
    on = params["solarize"] == 1
    assert 0 < on.sum() < 8
    crop = _reference_crop(images, params["crop_box"], 16)
    expected = torch.where(on.view(-1, 1, 1, 1) & (crop >= 0.5), 1.0 - crop, crop)
    assert torch.allclose(out, expected, atol=1e-5)


def _direct_blur(image: torch.Tensor, sigma: float, kernel: int) -> torch.Tensor:
    radius = kernel // 2
    taps = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float64) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    padded = F.pad(image[None].double(), (radius,) * 4, mode="reflect")[0]
    height, width = image.shape[-2:]
    out = torch.zeros_like(image, dtype=torch.float64)
    for dy in range(kernel):
        for dx in range(kernel):
            out += taps[dy] * taps[dx] * padded[:, dy : dy + height, dx : dx + width]
    return out.float()


def test_blur_matches_a_direct_convolution_and_skipped_rows_are_unchanged() -> None:
    images = _images(batch=10, seed=12)
    cfg = ViewConfig(**{**OFF, "blur_p": 0.5}, blur_sigma=(0.5, 2.0), blur_kernel_fraction=0.5)
    kernel = cfg.blur_kernel_size(16)
    assert kernel == 9
    out, params = _run(images, cfg, 16, seed=13)
    blurred = params["blur_applied"] == 1
    assert 0 < blurred.sum() < 10
    crop = crop_resize(images, params["crop_box"], 16)
    for row in range(10):
        if blurred[row]:
            expected = _direct_blur(crop[row], float(params["blur_sigma"][row]), kernel)
            assert torch.allclose(out[row], expected, atol=1e-5)
        else:
            assert float(params["blur_sigma"][row]) == 0.0
            assert torch.equal(out[row], crop[row])


def test_rotation_matches_kornia_rotate_per_row() -> None:
    images = _images(batch=10, seed=14)
    cfg = ViewConfig(**{**OFF, "rotation_p": 0.5}, rotation_degrees=60.0)
    out, params = _run(images, cfg, 16, seed=15)
    rotated = params["rotation_angle"] != 0
    assert 0 < rotated.sum() < 10
    crop = crop_resize(images, params["crop_box"], 16)
    for row in range(10):
        expected = rotate(crop[row : row + 1], params["rotation_angle"][row : row + 1])[0]
        assert torch.allclose(out[row], expected, atol=1e-5)
        if not rotated[row]:
            assert torch.equal(out[row], crop[row])


def test_rotation_by_90_degrees_is_a_counter_clockwise_quarter_turn() -> None:
    images = _images(batch=1, height=9, width=9, seed=16)
    params = neutral_params(torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    params["rotation_angle"] = torch.tensor([90.0])
    out = apply_view(images, params, ViewConfig(), 9)
    assert torch.allclose(out, torch.rot90(images, 1, dims=(-2, -1)), atol=1e-5)


def _augmenter(views: list[ViewConfig] | None = None, size: int = 16, **cfg: object) -> ViewAugmenter:
    return ViewAugmenter(AugmentConfig(views=views, **cfg), MEAN, STD, size)


def _uint8(batch: int = 8, views: int = 1, side: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, views, 3, side, side), generator=_gen(seed), dtype=torch.uint8)


def test_normalisation_with_mean_and_std() -> None:
    images = _uint8(side=16)
    identity = ViewConfig(**OFF, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    batch = _augmenter([identity, identity])(images, _gen())
    for c in range(3):
        expected = (images[:, 0, c].float() / 255.0 - MEAN[c]) / STD[c]
        assert torch.allclose(batch.views[0][:, c], expected, atol=1e-5)


def test_augmenter_returns_a_view_batch_with_params_and_passthrough() -> None:
    images = _uint8()
    labels = torch.arange(8)
    latents = {"object_hue": torch.rand(8, 1)}
    batch = _augmenter(crop_scale_min=0.2)(images, _gen(), labels=labels, latents=latents)
    assert len(batch.views) == 2 and len(batch.params) == 2 and batch.batch_size == 8
    for view, params in zip(batch.views, batch.params, strict=True):
        assert view.shape == (8, 3, 16, 16) and view.dtype == torch.float32
        assert all(value.shape[0] == 8 and value.device == images.device for value in params.values())
    assert batch.labels is labels and batch.latents is latents
    # VICReg's second view never blurs with p 1.0 and the first never solarizes.
    first = batch.params[0]
    assert torch.all(first["blur_applied"] == 1) and torch.all(first["solarize"] == 0)


def test_same_seed_gives_identical_views_and_params() -> None:
    images = _uint8()
    augment = _augmenter()
    a, b, c = augment(images, _gen(1)), augment(images, _gen(1)), augment(images, _gen(2))
    for va, vb in zip(a.views, b.views, strict=True):
        assert torch.equal(va, vb)
    for pa, pb in zip(a.params, b.params, strict=True):
        assert all(torch.equal(pa[key], pb[key]) for key in pa)
    assert not torch.equal(a.views[0], c.views[0])


def test_chunked_views_share_params_within_a_chunk() -> None:
    images = _uint8(batch=9)
    batch = _augmenter()(images, _gen(3), chunks=3)
    for params in batch.params:
        boxes = params["crop_box"]
        assert torch.equal(boxes[0:3], boxes[0].expand(3, 4))
        assert torch.equal(boxes[6:9], boxes[6].expand(3, 4))
        assert not torch.equal(boxes[0], boxes[3])
    # Identical source images in a chunk therefore give identical views.
    same = images[:1].expand(9, -1, -1, -1, -1).contiguous()
    views = _augmenter()(same, _gen(3), chunks=3).views[1]
    assert torch.equal(views[3], views[5]) and not torch.equal(views[2], views[3])


def test_view_sources_same_and_distinct() -> None:
    images = torch.empty(4, 2, 3, 12, 12, dtype=torch.uint8)
    images[:, 0], images[:, 1] = 51, 204
    plain = [ViewConfig(**OFF), ViewConfig(**OFF)]
    level = [(v - MEAN[0]) / STD[0] for v in (0.2, 0.8)]
    same = _augmenter(plain, size=8, source="same")(images, _gen())
    distinct = _augmenter(plain, size=8, source="distinct")(images, _gen())
    assert torch.allclose(same.views[1][:, 0], torch.full((4, 8, 8), level[0]), atol=1e-5)
    assert torch.allclose(distinct.views[0][:, 0], torch.full((4, 8, 8), level[0]), atol=1e-5)
    assert torch.allclose(distinct.views[1][:, 0], torch.full((4, 8, 8), level[1]), atol=1e-5)
    with pytest.raises(ValueError, match="decoded views"):
        _augmenter(plain, source="distinct")(images[:, :1], _gen())


def test_augmenter_rejects_float_input_and_bad_normalisation() -> None:
    with pytest.raises(ValueError, match="uint8"):
        _augmenter()(torch.rand(2, 1, 3, 8, 8), _gen())
    with pytest.raises(ValueError, match="std"):
        ViewAugmenter(AugmentConfig(), MEAN, (0.2, 0.0, 0.3), 16)
