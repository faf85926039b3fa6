"""Synthetic 3D objects: shape SDFs, renderer geometry and determinism, shard generation."""

from __future__ import annotations

import colorsys
import io
import json
import math
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from augment.quaternion import quat_angle, quat_multiply
from pretrain.data.format import INDEX_NAME, LATENT_KEYS, view_key
from pretrain.data.synth3d import SHAPE_NAMES, SHAPES, Synth3DConfig, generate_synth3d, render_views
from pretrain.data.synth3d.render import RenderSettings, hsv_to_rgb
from pretrain.data.synth3d.generate import SampleLatents, render_samples, sample_latents
from pretrain.data.synth3d.shapes import MAX_PARAMS, pad_params, shape_index

N = len(SHAPES)
TOWARDS_CAMERA = torch.tensor([0.0, 0.0, 1.0])   # a light on the view axis: shading is unchanged
                                                  # by rotations about that axis
IDENTITY = torch.tensor([1.0, 0.0, 0.0, 0.0])


def mid_params() -> torch.Tensor:
    return torch.stack([pad_params(torch.tensor([(lo + hi) / 2 for lo, hi in zip(s.low, s.high)]))
                        for s in SHAPES])


def quat(axis: tuple[float, float, float], deg: float) -> torch.Tensor:
    n = math.sqrt(sum(a * a for a in axis))
    s = math.sin(math.radians(deg) / 2)
    return torch.tensor([math.cos(math.radians(deg) / 2)] + [s * a / n for a in axis])


def render_all(q: torch.Tensor, size: int = 32, light: torch.Tensor = TOWARDS_CAMERA,
               params: torch.Tensor | None = None) -> torch.Tensor:
    """One view per class, same pose/hue/background/light."""
    return render_views(torch.arange(N), mid_params() if params is None else params,
                        q.expand(N, 4), torch.full((N,), 0.6), torch.full((N,), 0.1),
                        light.expand(N, 3), size)


def differing(a: torch.Tensor, b: torch.Tensor, level: int = 20) -> torch.Tensor:
    """Fraction of pixels (per image) whose channels differ by more than ``level``."""
    return ((a.int() - b.int()).abs().amax(dim=-3) > level).float().mean(dim=(-2, -1))


# ------------------------------------------------------------------------------------ shapes

def test_shape_table() -> None:
    assert len(SHAPES) >= 12
    assert len(set(SHAPE_NAMES)) == N
    assert "sphere" not in SHAPE_NAMES
    for i, spec in enumerate(SHAPES):
        assert shape_index(spec.name) == i
        assert len(spec.low) == len(spec.high) == spec.num_params <= MAX_PARAMS
        assert all(lo < hi for lo, hi in zip(spec.low, spec.high))
        k = spec.sample_params(500, torch.Generator().manual_seed(i))
        assert bool(((k >= torch.tensor(spec.low)) & (k <= torch.tensor(spec.high))).all())
        assert float(spec.bound(k).max()) < 1.0       # every pose stays inside the image
    with pytest.raises(KeyError):
        shape_index("sphere")


# A point inside and a point outside each class at its mid-range parameters, worked out by hand
# from the parameter ranges (e.g. the mug's origin is in its cavity, the torus's in its hole).
KNOWN_POINTS = {
    "box": ((0.0, 0.0, 0.0), (0.0, 0.0, 0.5)),
    "ellipsoid": ((0.0, 0.0, 0.0), (0.0, 0.0, 0.5)),
    "cylinder": ((0.0, 0.5, 0.0), (0.45, 0.0, 0.0)),
    "cone": ((0.0, 0.0, 0.0), (0.0, -0.8, 0.0)),
    "torus": ((0.56, 0.0, 0.0), (0.0, 0.0, 0.0)),
    "capsule": ((0.6, 0.0, 0.0), (0.0, 0.4, 0.0)),
    "hex_prism": ((0.6, 0.0, 0.0), (0.0, 0.0, 0.4)),
    "wedge": ((-0.2, -0.2, 0.0), (0.3, 0.3, 0.0)),
    "l_shape": ((-0.45, 0.5, 0.0), (0.3, 0.3, 0.0)),
    "cross": ((0.0, -0.6, 0.0), (0.3, -0.4, 0.0)),
    "pyramid": ((0.0, 0.0, 0.0), (0.5, 0.5, 0.0)),
    "mug": ((0.39, 0.0, 0.0), (0.0, 0.0, 0.0)),
    "star": ((0.0, 0.7, 0.0), (0.5 * math.cos(math.radians(-18)), 0.5 * math.sin(math.radians(-18)), 0.0)),
    "arrow": ((0.0, 0.0, 0.0), (0.0, 0.25, 0.0)),
}


def test_sdf_sign_at_known_points() -> None:
    assert set(KNOWN_POINTS) == set(SHAPE_NAMES)
    params = mid_params()
    for i, spec in enumerate(SHAPES):
        inside, outside = (torch.tensor(p) for p in KNOWN_POINTS[spec.name])
        k = params[i, : spec.num_params]
        assert float(spec.sdf(inside, k)) < 0, spec.name
        assert float(spec.sdf(outside, k)) > 0, spec.name


@pytest.mark.parametrize("index", range(N))
def test_sdf_is_a_safe_step_bound(index: int) -> None:
    """Sphere tracing is safe iff the ball of radius ``step * sdf(p)`` around an outside point
    holds no inside point; checked against a dense grid of inside points."""
    spec = SHAPES[index]
    g = torch.Generator().manual_seed(100 + index)
    k = spec.sample_params(1, g)[0]
    h = 2.0 / 40
    axis = torch.arange(-1.0 + h / 2, 1.0, h)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    inside = grid[spec.sdf(grid, k) < 0]
    assert inside.shape[0] > 50
    # the bounding radius bounds every inside point
    assert float(inside.norm(dim=-1).max()) <= float(spec.bound(k)) + 1e-6
    near = inside[torch.randint(len(inside), (300,), generator=g)]
    near = near + 0.15 * torch.randn(300, 3, generator=g)
    queries = torch.cat([torch.rand(300, 3, generator=g) * 2.4 - 1.2, near])
    d = spec.sdf(queries, k)
    queries, d = queries[d > 0], d[d > 0]
    nearest_inside = torch.cdist(queries, inside).min(dim=1).values
    assert bool((spec.step * d <= nearest_inside + 1e-4).all()), spec.name


# ---------------------------------------------------------------------------------- renderer

def test_render_shape_dtype_and_background() -> None:
    img = render_all(IDENTITY, size=20)
    assert img.shape == (N, 3, 20, 20) and img.dtype == torch.uint8
    corner = img[:, :, 0, 0]
    assert bool((img[:, :, -1, -1] == corner).all())     # corners are background
    covered = (img != corner[:, :, None, None]).any(dim=1).float().mean(dim=(1, 2))
    assert bool((covered > 0.03).all())                    # every object is visible


def test_render_deterministic_and_batch_independent() -> None:
    g = torch.Generator().manual_seed(0)
    n = 2 * N
    cls = torch.arange(n) % N
    params = torch.stack([pad_params(SHAPES[c].sample_params(1, g)[0]) for c in cls.tolist()])
    q = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    hue, bg, light = torch.rand(n, generator=g), torch.rand(n, generator=g), torch.randn(n, 3, generator=g)
    a = render_views(cls, params, q, hue, bg, light, 24)
    b = render_views(cls, params, q, hue, bg, light, 24)
    assert torch.equal(a, b)
    alone = render_views(cls[5:6], params[5:6], q[5:6], hue[5:6], bg[5:6], light[5:6], 24)
    assert torch.equal(alone[0], a[5])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(render_views(cls, params, q, hue, bg, light, 24), a)
    finally:
        torch.set_num_threads(threads)


def test_rotation_about_view_axis_rotates_image() -> None:
    """Object +90 degrees about z (towards the camera) = image rotated 90 degrees anticlockwise."""
    base = render_all(IDENTITY)
    turned = render_all(quat((0, 0, 1), 90.0))
    expected = torch.rot90(base, k=1, dims=(-2, -1))
    assert float(differing(turned, expected).max()) < 0.01
    # and it is not the clockwise rotation (the two differ for every class)
    assert bool((differing(turned, torch.rot90(base, k=-1, dims=(-2, -1))) > 0.02).all())


@pytest.mark.parametrize("axis", [(0, 0, 1), (1, 0, 0), (0, 1, 0)])
def test_no_class_symmetric_under_half_turns(axis: tuple[float, float, float]) -> None:
    base = render_all(IDENTITY)
    half = render_all(quat(axis, 180.0))
    assert bool((differing(base, half) > 0.02).all()), differing(base, half)


def test_no_class_fully_rotation_symmetric() -> None:
    g = torch.Generator().manual_seed(3)
    light = torch.tensor([-0.4, 0.55, 0.73])
    base = render_all(IDENTITY, light=light)
    for _ in range(3):
        q = torch.nn.functional.normalize(torch.randn(4, generator=g), dim=0)
        assert bool((differing(base, render_all(q, light=light)) > 0.02).all())


def test_classes_look_different() -> None:
    pose = quat_multiply(quat((1, 0, 0), 25.0), quat((0, 1, 0), -30.0))   # a three-quarter view
    img = render_all(pose, light=torch.tensor([-0.4, 0.55, 0.73]))
    mask = (img != img[:, :, :1, :1]).any(dim=1)
    for i in range(N):
        for j in range(i + 1, N):
            mad = float((img[i].float() - img[j].float()).abs().mean())
            iou = float((mask[i] & mask[j]).sum() / (mask[i] | mask[j]).sum())
            assert mad > 4.0 and iou < 0.9, (SHAPE_NAMES[i], SHAPE_NAMES[j], mad, iou)


def test_hues_set_colours() -> None:
    # A red object on a blue background: the object's brightest pixel is red-dominant and the
    # background blue-dominant.
    img = render_views(torch.tensor([0]), mid_params()[:1], IDENTITY[None], torch.tensor([0.0]),
                       torch.tensor([2 / 3]), TOWARDS_CAMERA[None], 32)[0].int()
    bg = img[:, 0, 0]
    assert bg[2] > bg[0] and bg[2] > bg[1]
    centre = img[:, 16, 16]
    assert centre[0] > centre[1] and centre[0] > centre[2]


def test_hsv_matches_colorsys() -> None:
    h = torch.linspace(0.0, 1.0, 37, dtype=torch.float64)[:-1]
    for s, v in ((1.0, 1.0), (0.25, 0.8), (0.0, 0.5)):
        expected = torch.tensor([colorsys.hsv_to_rgb(float(x), s, v) for x in h], dtype=torch.float64)
        torch.testing.assert_close(hsv_to_rgb(h, s, v), expected)


@pytest.mark.parametrize("light,lambert", [((0.0, 0.0, 1.0), 1.0), ((1.0, 0.0, 0.0), 0.0),
                                           ((0.0, 0.6, 0.8), 0.8)])
def test_shading_and_pattern_known_pixel(light: tuple[float, float, float], lambert: float) -> None:
    """The box faces the camera at identity: the centre pixel sees the front face (normal +z),
    which lies beyond the pattern plane z = PATTERN_CENTRE[2] but not beyond x or y: tone 1."""
    st = RenderSettings()
    hue = 0.3
    img = render_views(torch.tensor([0]), mid_params()[:1], IDENTITY[None], torch.tensor([hue]),
                       torch.tensor([0.9]), torch.tensor([light]), 32)[0]
    tone = colorsys.hsv_to_rgb(hue, st.pattern_saturation, st.pattern_value)
    shade = st.ambient + st.diffuse * lambert
    expected = [round(255 * c * shade) for c in tone]
    assert img[:, 16, 16].tolist() == expected
    # the quadrant right of x = PATTERN_CENTRE[0] and above y = PATTERN_CENTRE[1] has tone 1 too,
    # its neighbours (one plane crossed) tone 0.
    base = colorsys.hsv_to_rgb(hue, st.object_saturation, st.object_value)
    assert img[:, 16, 25].tolist() == [round(255 * c * shade) for c in base]   # x = 0.59 > 0.17
    assert img[:, 10, 25].tolist() == expected                                  # and y = 0.34 > 0.11


# --------------------------------------------------------------------------------- generator

def read_shards(out: Path) -> tuple[dict, dict[str, dict[str, bytes]], dict[str, int]]:
    index = json.loads((out / INDEX_NAME).read_text())
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    per_tar: dict[str, int] = {}
    for tar_path in sorted(out.glob("*.tar")):
        keys = set()
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples[key][ext] = tar.extractfile(member).read()
                keys.add(key)
        per_tar[tar_path.name] = len(keys)
    return index, dict(samples), per_tar


SMALL = dict(classes=3, instances_per_class=3, views=2, size=24, shard_size=4, seed=7)


def test_generate_writes_index_and_samples(tmp_path: Path) -> None:
    cfg = Synth3DConfig(**SMALL)
    calls: list[tuple[int, int]] = []
    report = generate_synth3d(cfg, tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert report.samples == 9 and report.views == 18 and report.views_per_s > 0
    assert calls[-1] == (9, 9) and [c[0] for c in calls] == sorted(c[0] for c in calls)
    index, samples, per_tar = read_shards(tmp_path)
    assert index["kind"] == "synth3d"
    assert index["classes"] == list(SHAPE_NAMES[:3])
    assert (index["views"], index["image_size"], index["seed"]) == (2, 24, 7)
    assert {s["name"]: s["samples"] for s in index["shards"]} == per_tar
    assert sum(s["samples"] for s in index["shards"]) == len(samples) == 9
    assert all(name.startswith("synth3d-") for name in per_tar) and sorted(per_tar.values()) == [1, 4, 4]
    for key, files in samples.items():
        assert set(files) == {view_key(0), view_key(1), "cls", "latents.json"}
        cls = int(files["cls"].decode("ascii"))
        latents = json.loads(files["latents.json"])
        assert cls == int(key) % 3 and latents["class_name"] == SHAPE_NAMES[cls]
        for name in LATENT_KEYS:
            assert len(latents[name]) == 2
        q = torch.tensor(latents["quaternion"], dtype=torch.float64)
        assert torch.allclose(q.norm(dim=-1), torch.ones(2, dtype=torch.float64), atol=1e-6)
        assert bool((q[:, 0] >= 0).all())
        light = torch.tensor(latents["light_dir"], dtype=torch.float64)
        assert torch.allclose(light.norm(dim=-1), torch.ones(2, dtype=torch.float64), atol=1e-6)
        assert all(0.0 <= h < 1.0 for h in latents["object_hue"] + latents["background_hue"])
        assert len(latents["shape_params"]) == SHAPES[cls].num_params
        # Round trip: re-rendering the stored latents reproduces the stored PNGs exactly.
        again = render_samples([SampleLatents.from_json(latents, cls)], 24)[0]
        for v in range(2):
            png = np.array(Image.open(io.BytesIO(files[view_key(v)])))
            assert png.shape == (24, 24, 3)
            assert np.array_equal(png, again[v].permute(1, 2, 0).numpy())


def test_generate_same_seed_same_bytes(tmp_path: Path) -> None:
    a = generate_synth3d(Synth3DConfig(**SMALL), tmp_path / "a").out_dir
    b = generate_synth3d(Synth3DConfig(**{**SMALL, "render_batch_views": 3}), tmp_path / "b").out_dir
    c = generate_synth3d(Synth3DConfig(**{**SMALL, "seed": 8}), tmp_path / "c").out_dir
    sa, sb, sc = (read_shards(d)[1] for d in (a, b, c))
    assert sa.keys() == sb.keys()
    for key in sa:
        for name in (view_key(0), view_key(1), "latents.json", "cls"):
            assert sa[key][name] == sb[key][name]
    assert any(sa[key][view_key(0)] != sc[key][view_key(0)] for key in sa)


def test_default_latents_fixed_per_object_rotation_per_view() -> None:
    cfg = Synth3DConfig(views=4, light_jitter_deg=20.0)
    s = sample_latents(cfg, 5)
    assert s.class_id == 5 % cfg.classes
    assert len(set(s.object_hue.tolist())) == 1 and len(set(s.background_hue.tolist())) == 1
    assert torch.equal(s.light_dir, s.light_dir[:1].expand(4, 3))
    assert len({tuple(q) for q in s.quaternion.tolist()}) == 4
    mean = torch.nn.functional.normalize(torch.tensor(cfg.light_dir), dim=0)
    tilt = torch.rad2deg(torch.acos((s.light_dir[0] * mean).sum().clamp(-1, 1)))
    assert float(tilt) <= 20.0 + 1e-3


def test_per_view_options() -> None:
    cfg = Synth3DConfig(views=6, hue_jitter_per_view=0.05, background_per_view=True,
                        light_per_view=True, max_angle_deg=30.0, object_hue_range=(0.4, 0.5))
    s = sample_latents(cfg, 0)
    hues = s.object_hue
    assert len(set(hues.tolist())) == 6
    assert 0.35 - 1e-6 <= float(hues.min()) and float(hues.max()) <= 0.55 + 1e-6
    assert len(set(s.background_hue.tolist())) == 6
    assert len({tuple(v) for v in s.light_dir.tolist()}) == 6
    assert float(torch.rad2deg(quat_angle(s.quaternion.double())).max()) <= 30.0 + 1e-3


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        Synth3DConfig(classes=N + 1)
    with pytest.raises(ValidationError):
        Synth3DConfig(classes=0)
    with pytest.raises(ValidationError):
        Synth3DConfig(object_hue_range=(0.6, 0.2))
    with pytest.raises(ValidationError):
        Synth3DConfig(light_dir=(0.0, 0.0, 0.0))
    with pytest.raises(ValidationError):
        Synth3DConfig(unknown_key=1)


def test_jpeg_views_are_written_and_read_back_like_the_png_ones(tmp_path: Path) -> None:
    from pretrain.data.decode import decode_sample

    png_dir = generate_synth3d(Synth3DConfig(**SMALL), tmp_path / "png").out_dir
    jpg_dir = generate_synth3d(Synth3DConfig(**SMALL, image_format="jpeg", jpeg_quality=90),
                               tmp_path / "jpg").out_dir
    png_samples, jpg_samples = read_shards(png_dir)[1], read_shards(jpg_dir)[1]
    index = json.loads((jpg_dir / INDEX_NAME).read_text())
    assert index["config"]["image_format"] == "jpeg" and index["config"]["jpeg_quality"] == 90
    assert png_samples.keys() == jpg_samples.keys()
    for key, files in jpg_samples.items():
        assert set(files) == {view_key(0, "jpg"), view_key(1, "jpg"), "cls", "latents.json"}
        assert files["latents.json"] == png_samples[key]["latents.json"]
        for v in range(2):
            assert Image.open(io.BytesIO(files[view_key(v, "jpg")])).format == "JPEG"
        # The decoder finds the JPEG views, draws the same views for the same seed and gives the
        # rendered pixels back to within JPEG's loss.
        raw_png = {**png_samples[key], "__key__": key}
        raw_jpg = {**files, "__key__": key}
        a = decode_sample(raw_png, image_size=24, views=2, seed=(1, int(key)))
        b = decode_sample(raw_jpg, image_size=24, views=2, seed=(1, int(key)))
        assert np.array_equal(a.latents["quaternion"], b.latents["quaternion"])
        same = np.abs(a.images.astype(int) - b.images.astype(int)).mean(axis=(1, 2, 3))
        swapped = np.abs(a.images.astype(int) - b.images[::-1].astype(int)).mean(axis=(1, 2, 3))
        # 24 px views are nearly all edges, where 4:2:0 JPEG loses most; still far closer to
        # their own rendering than to the object's other view.
        assert (same < 10).all() and (swapped > same).all(), (same, swapped)
    with pytest.raises(ValidationError):
        Synth3DConfig(image_format="webp")
    with pytest.raises(ValidationError):
        Synth3DConfig(jpeg_quality=100)


def test_cache_key_of_png_sets_is_unchanged_by_the_storage_format_fields():
    """PNG sets cached before ``image_format`` existed keep their folder names (so runs on them
    still resume); a JPEG set, or another quality of one, gets a folder of its own."""
    import hashlib

    png = Synth3DConfig(classes=3, size=16)
    before = {k: v for k, v in png.model_dump(mode="json").items()
              if k not in ("image_format", "jpeg_quality")}
    assert png.cache_key() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:10]
    assert png.cache_key() == Synth3DConfig(classes=3, size=16, jpeg_quality=50).cache_key()
    jpeg = Synth3DConfig(classes=3, size=16, image_format="jpeg")
    assert len({png.cache_key(), jpeg.cache_key(),
                Synth3DConfig(classes=3, size=16, image_format="jpeg", jpeg_quality=50).cache_key()}) == 3
