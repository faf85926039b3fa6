"""The fused, fixed-shape augmentation (augment.fused, augment.program) against the reference ops.

The reference ops (augment.ops, augment.reference) pick rows with host index lists and are checked
against direct formulas in test_augment_pipeline.py; here the fused ops must reproduce them with the
same sampled factors, and be the identity with neutral factors.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from augment import AugmentConfig, ViewAugmenter, ViewConfig, sample_view_params
from augment.fused import (
    Colour,
    PixelGrid,
    blur_taps,
    colour_jitter,
    gaussian_blur,
    geometry,
    grayscale,
    shift_hue,
    solarize,
)
from augment.ops import (
    blur_rows,
    color_jitter_rows,
    crop_resize,
    flip_rows,
    grayscale_rows,
    rotate_rows,
    solarize_rows,
)
from augment.ops import shift_hue as reference_hue
from augment.pipeline import draw_to_device
from augment.sampling import DRAW_COLUMNS

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is a folder of scripts, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.augment_ops import aten_ops_per_view  # noqa: E402

OFF = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0, rotation_p=0.0)
JITTER = ("brightness", "contrast", "saturation", "hue")
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
# Views between 1e-5 and the reference: float rounding of the same maths in another order.
ATOL = 1e-5


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _params(cfg: ViewConfig, n: int, height: int, width: int, seed: int) -> dict[str, torch.Tensor]:
    return sample_view_params(cfg, n, height, width, _gen(seed))


def _reference_geometry(images, params, size):
    out = flip_rows(crop_resize(images, params["crop_box"], size), params["flip"])
    return rotate_rows(out, params["rotation_angle"], params["rotation_angle"])


def _fused_geometry(images, params, size, rotate=True):
    grid = PixelGrid.build(size, images.shape[-2], images.shape[-1])
    angle = params["rotation_angle"] if rotate else None
    return geometry(images, params["crop_box"], params["flip"], angle, grid)


def test_fused_crop_and_flip_equal_the_reference_ops() -> None:
    images = torch.rand(32, 3, 24, 20, generator=_gen(1))
    params = _params(ViewConfig(**{**OFF, "flip_p": 0.5}, crop_scale=(0.1, 1.0)), 32, 24, 20, seed=2)
    assert 0 < params["flip"].sum() < 32
    expected = _reference_geometry(images, params, 16)
    torch.testing.assert_close(_fused_geometry(images, params, 16, rotate=False), expected, atol=ATOL, rtol=0)
    # The rotation path with every angle 0 is the same map.
    torch.testing.assert_close(_fused_geometry(images, params, 16), expected, atol=ATOL, rtol=0)
    # uint8 levels scaled by 1/255 inside the op: the same as scaling the sources first.
    levels = (images * 255).round()
    grid = PixelGrid.build(16, 24, 20)
    scaled = geometry(levels, params["crop_box"], params["flip"], None, grid, scale=1 / 255)
    torch.testing.assert_close(scaled, _reference_geometry(levels / 255, params, 16), atol=ATOL, rtol=0)


def test_fused_rotation_is_exact_where_bilinear_interpolation_is_exact() -> None:
    # On an image affine in (x, y) bilinear interpolation is exact, so the reference's two
    # resamplings and the fused single one must agree to rounding, zero-filled corners included.
    height, width = 24, 20
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    ramp = torch.stack((x / width, y / height, 0.5 * (x / width + y / height)))
    images = ramp.expand(16, 3, height, width).contiguous()
    cfg = ViewConfig(**{**OFF, "flip_p": 0.5, "rotation_p": 1.0}, rotation_degrees=180.0)
    params = _params(cfg, 16, height, width, seed=3)
    expected = _reference_geometry(images, params, 16)
    assert (expected == 0).any()  # corners outside the rotated crop are zero-filled
    torch.testing.assert_close(_fused_geometry(images, params, 16), expected, atol=ATOL, rtol=0)


def test_fused_rotation_differs_from_the_reference_by_its_interpolation_error_only() -> None:
    # On a smooth image the two differ by the reference's extra bilinear pass. Bilinear
    # interpolation on a unit grid errs by at most (f_uu + f_vv) / 8 (maxima of the second
    # derivatives), so |fused - reference| <= 2 E_src + E_crop: the source interpolation of each
    # (E_src = A (wx^2 + wy^2) / 8 for f = 0.5 + A sin(wx x) sin(wy y)) plus the crop-grid one,
    # whose second derivatives are the source's times the squared crop-to-source scale.
    height, width, size, amplitude, wx, wy = 32, 32, 16, 0.25, 0.35, 0.25
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    plane = 0.5 + amplitude * torch.sin(wx * x) * torch.sin(wy * y)
    images = plane.float().expand(24, 3, height, width).contiguous()
    cfg = ViewConfig(**{**OFF, "rotation_p": 1.0}, rotation_degrees=90.0, crop_scale=(0.3, 1.0))
    params = _params(cfg, 24, height, width, seed=4)
    diff = (_fused_geometry(images, params, size) - _reference_geometry(images, params, size)).abs()
    box = params["crop_box"].double()
    scale_x = ((box[:, 2] - box[:, 0]) * width - 1) / (size - 1)
    scale_y = ((box[:, 3] - box[:, 1]) * height - 1) / (size - 1)
    source_error = amplitude * (wx**2 + wy**2) / 8
    crop_error = amplitude * (scale_x**2 * wx**2 + scale_y**2 * wy**2) / 8
    bound = 2 * source_error + crop_error + ATOL
    per_row = diff.flatten(1).amax(dim=1).double()
    assert torch.all(per_row <= bound), (per_row - bound).max()
    assert per_row.max() > 1e-3  # the two really resample differently: the test can fail


def _colour_params(seed: int, random_order: bool = True, hue: float = 0.4, n: int = 48):
    cfg = ViewConfig(**{**OFF, "jitter_p": 0.8, "grayscale_p": 0.5, "blur_p": 0.5, "solarize_p": 0.5},
                     brightness=0.8, contrast=0.8, saturation=0.8, hue=hue, jitter_random_order=random_order)
    return _params(cfg, n, 32, 32, seed)


@pytest.mark.parametrize("random_order, hue", [(True, 0.4), (False, 0.4), (True, 0.0)])
def test_fused_colour_jitter_equals_the_reference_in_every_order(random_order: bool, hue: float) -> None:
    images = torch.rand(48, 3, 12, 12, generator=_gen(5))
    params = _colour_params(6, random_order, hue)
    if random_order:  # every position of the hue step occurs
        hue_step = (params["jitter_order"] == 3).long().argmax(dim=1)[params["jitter_applied"] > 0]
        assert set(hue_step.tolist()) == {0, 1, 2, 3}
    factors = torch.stack([params[key] for key in JITTER], dim=-1)
    fused = colour_jitter(images, factors, params["jitter_order"], Colour.build(), shuffled=random_order,
                          hue=hue > 0)
    torch.testing.assert_close(fused, color_jitter_rows(images, params, params), atol=ATOL, rtol=0)


def test_fused_hue_grayscale_blur_solarize_equal_the_reference() -> None:
    images = torch.rand(48, 3, 16, 16, generator=_gen(7))
    params = _colour_params(8)
    colour = Colour.build()
    hue = shift_hue(images.flatten(2), params["hue"], colour.hue_channels).view_as(images)
    torch.testing.assert_close(hue, reference_hue(images, params["hue"]), atol=ATOL, rtol=0)
    gray = grayscale(images, params["grayscale"] > 0.5, colour)
    torch.testing.assert_close(gray, grayscale_rows(images, params["grayscale"]), atol=ATOL, rtol=0)
    assert 0 < params["blur_applied"].sum() < 48
    blurred = gaussian_blur(images, params["blur_sigma"], blur_taps(5))
    torch.testing.assert_close(blurred, blur_rows(images, params["blur_sigma"], 5), atol=ATOL, rtol=0)
    threshold = torch.where(params["solarize"] > 0.5, 0.4, 2.0)
    torch.testing.assert_close(solarize(images, threshold), solarize_rows(images, params["solarize"], 0.4),
                               atol=0, rtol=0)


def test_neutral_factors_leave_the_images_unchanged() -> None:
    images = torch.rand(16, 3, 12, 12, generator=_gen(9))
    neutral = torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(16, 4)
    order = torch.arange(4).expand(16, 4)
    colour = Colour.build()
    for shuffled in (True, False):
        out = colour_jitter(images, neutral, order, colour, shuffled=shuffled, hue=False)
        assert torch.equal(out, images)  # identity slots: M = I, t = 0
        out = colour_jitter(images, neutral, order, colour, shuffled=shuffled)
        torch.testing.assert_close(out, images, atol=1e-6, rtol=0)  # hue 0 rebuilt from V, C, h
    off = torch.zeros(16, dtype=torch.bool)
    assert torch.equal(grayscale(images, off, colour), images)
    assert torch.equal(gaussian_blur(images, torch.zeros(16), blur_taps(5)), images)  # delta kernel
    assert torch.equal(solarize(images, torch.full((16,), 2.0)), images)
    # The whole-image box, no flip, no rotation: a resize that keeps a same-size image.
    params = _params(ViewConfig(**OFF, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)), 16, 12, 12, seed=0)
    torch.testing.assert_close(_fused_geometry(images, params, 12), images, atol=ATOL, rtol=0)


def _augmenters(**cfg: object) -> tuple[ViewAugmenter, ViewAugmenter]:
    fused = ViewAugmenter(AugmentConfig(**cfg), MEAN, STD, 16)
    reference = ViewAugmenter(AugmentConfig(**cfg, engine="reference"), MEAN, STD, 16)
    return fused, reference


@pytest.mark.parametrize("recipe, source, chunks", [
    ("vicreg", "same", None), ("vicreg", "same", 3), ("simclr", "same", None), ("essl", "same", None),
    ("care", "same", None), ("pair", "distinct", None), ("sequence", "distinct", None),
    ("sequence", "same", None),
])
def test_the_fused_engine_makes_the_reference_engines_views_and_params(recipe, source, chunks) -> None:
    images = torch.randint(0, 256, (9, 4, 3, 20, 20), dtype=torch.uint8, generator=_gen(10))
    latents = {"quaternion": torch.nn.functional.normalize(torch.randn(9, 4, 4, generator=_gen(11)), dim=-1)}
    fused, reference = _augmenters(recipe=recipe, source=source, chunk_size=4, crop_scale_min=0.2)
    a = fused(images, _gen(12), chunks, latents=latents)
    b = reference(images, _gen(12), chunks, latents=latents)
    assert len(a.views) == len(b.views) == fused.num_views
    for view_a, view_b, params_a, params_b in zip(a.views, b.views, a.params, b.params, strict=True):
        assert set(params_a) == set(params_b)
        for key in params_a:  # the same draws, the same maths: bit for bit
            assert torch.equal(params_a[key], params_b[key]), key
        assert view_a.shape == view_b.shape
        torch.testing.assert_close(view_a, view_b, atol=ATOL / min(STD), rtol=0)
    assert set(a.relative) == set(b.relative)
    for kind in a.relative:
        torch.testing.assert_close(a.relative[kind], b.relative[kind], atol=1e-6, rtol=0)


def test_views_with_rotation_follow_the_reference_within_interpolation() -> None:
    images = torch.randint(0, 256, (8, 1, 3, 20, 20), dtype=torch.uint8, generator=_gen(13))
    view = ViewConfig(rotation_p=0.5, rotation_degrees=45.0, blur_p=0.5, solarize_p=0.3)
    fused, reference = _augmenters(views=[view, view])
    a, b = fused(images, _gen(14)), reference(images, _gen(14))
    for params_a, params_b in zip(a.params, b.params, strict=True):
        assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    rotated = a.params[0]["rotation_angle"] != 0
    assert 0 < rotated.sum() < 8
    diff = (a.views[0] - b.views[0]).abs().flatten(1).amax(dim=1)
    assert torch.all(diff[~rotated] < ATOL / min(STD))
    assert torch.all(diff[rotated] > 0)  # one interpolation instead of two: close, not equal
    assert torch.allclose(a.views[0][rotated].mean(), b.views[0][rotated].mean(), atol=0.05)


def test_same_generator_same_views_and_a_fixed_number_of_draws() -> None:
    images = torch.randint(0, 256, (6, 1, 3, 16, 16), dtype=torch.uint8, generator=_gen(15))
    augment = ViewAugmenter(AugmentConfig(), MEAN, STD, 16)
    a, b = augment(images, _gen(1)), augment(images, _gen(1))
    assert all(torch.equal(x, y) for x, y in zip(a.views, b.views, strict=True))
    on = ViewConfig(flip_p=1.0, jitter_p=1.0, grayscale_p=1.0, blur_p=1.0, solarize_p=1.0, rotation_p=1.0)
    g_off, g_on = _gen(2), _gen(2)
    ViewAugmenter(AugmentConfig(views=[ViewConfig(**OFF)] * 2), MEAN, STD, 16)(images, g_off)
    ViewAugmenter(AugmentConfig(views=[on] * 2), MEAN, STD, 16)(images, g_on)
    assert torch.equal(g_off.get_state(), g_on.get_state())
    # One draw for all views: 2 views x 6 rows of DRAW_COLUMNS uniforms.
    g_ref = _gen(2)
    torch.rand(12, DRAW_COLUMNS, generator=g_ref, dtype=torch.float64)
    assert torch.equal(g_on.get_state(), g_ref.get_state())


def test_the_device_program_compiles_as_one_graph() -> None:
    # fullgraph=True refuses any graph break: no .item(), nonzero, bool(tensor) or host copy on
    # the path. The eager backend keeps this to tracing (seconds); test_inductor_compile compiles.
    torch._dynamo.reset()
    images = torch.randint(0, 256, (6, 2, 3, 16, 16), dtype=torch.uint8, generator=_gen(16))
    turning = ViewConfig(rotation_p=0.5, rotation_degrees=30.0, solarize_p=0.5)
    # E-SSL: two view sizes and quarter turns; CARE with rotating views: chunks and the rotation path.
    configs = (AugmentConfig(recipe="essl"), AugmentConfig(recipe="care", chunk_size=2, views=[turning] * 4))
    for cfg in configs:
        augment = ViewAugmenter(cfg, MEAN, STD, 16)
        constants = augment.constants(images.device, 6, 16, 16, None)
        draws = draw_to_device(_gen(17), sum(augment.program.draw_rows(6, None)), images.device)
        compiled = torch.compile(augment.program.run, fullgraph=True, backend="eager")
        views, params = compiled(images, draws, constants)
        eager_views, eager_params = augment.program.run(images, draws, constants)
        assert all(torch.equal(x, y) for x, y in zip(views, eager_views, strict=True))
        assert all(torch.equal(p[k], q[k]) for p, q in zip(params, eager_params, strict=True) for k in p)


@pytest.mark.slow
def test_inductor_compile_of_the_augmenter_matches_eager() -> None:
    torch._dynamo.reset()
    images = torch.randint(0, 256, (4, 1, 3, 16, 16), dtype=torch.uint8, generator=_gen(18))
    eager = ViewAugmenter(AugmentConfig(), MEAN, STD, 16)(images, _gen(19))
    compiled = ViewAugmenter(AugmentConfig(compile="default"), MEAN, STD, 16)(images, _gen(19))
    for a, b in zip(compiled.views, eager.views, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    for p, q in zip(compiled.params, eager.params, strict=True):
        assert all(torch.equal(p[k], q[k]) for k in p)


def test_the_fused_engine_stays_within_60_compute_ops_per_view() -> None:
    images = torch.randint(0, 256, (16, 1, 3, 32, 32), dtype=torch.uint8, generator=_gen(20))
    fused, reference = _augmenters(crop_scale_min=0.2)
    _, fused_ops = aten_ops_per_view(fused, images)
    _, reference_ops = aten_ops_per_view(reference, images)
    assert fused_ops <= 60 < reference_ops


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_device_sync_inside_the_fused_augmenter_on_cuda() -> None:
    images = torch.randint(0, 256, (8, 1, 3, 32, 32), dtype=torch.uint8, generator=_gen(21)).cuda()
    augment = ViewAugmenter(AugmentConfig(recipe="essl"), MEAN, STD, 32)
    augment(images, _gen(0))  # the constants' one-time copies
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = augment(images, _gen(1))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(view.is_cuda for view in batch.views)
    assert math.isfinite(float(batch.views[0].sum()))


def test_the_per_row_blur_equals_kornias_separable_filter_with_the_same_kernels() -> None:
    from kornia.filters import filter2d_separable

    from augment.fused import DELTA_SIGMA, blur_taps, gaussian_blur

    images = torch.rand(6, 3, 20, 24, generator=_gen(30))
    sigma = torch.tensor([0.0, 0.4, 1.0, 2.0, 0.0, 1.5])
    taps = blur_taps(7)
    kernel = torch.exp(taps * sigma.clamp_min(DELTA_SIGMA).pow(-2)[:, None])
    kernel = kernel / kernel.sum(dim=-1, keepdim=True)
    want = filter2d_separable(images, kernel, kernel, border_type="reflect")
    got = gaussian_blur(images, sigma, taps)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(got[0], images[0]) and not torch.allclose(got[2], images[2], atol=1e-3)
