"""The view recipes of the equivariant objectives, their views from the pipeline, and the configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kornia.geometry.transform import rotate
from pydantic import ValidationError

from augment import RECIPES, AugmentConfig, ViewAugmenter, build_recipe
from objectives.essl import quarter_turn_labels
from objectives.registry import OBJECTIVES, get_objective
from pretrain.config.load import load_config
from pretrain.config.schema import RunConfig

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _run(cfg: AugmentConfig, batch: int = 8, views: int = 1, size: int = 16, seed: int = 0):
    images = torch.randint(0, 256, (batch, views, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    return ViewAugmenter(cfg, MEAN, STD, size)(images, torch.Generator().manual_seed(seed))


def test_every_objective_names_a_registered_recipe_that_the_run_config_selects() -> None:
    assert {"vicreg", "simclr", "essl", "care", "pair", "sequence"} <= set(RECIPES)
    for name, cls in OBJECTIVES.items():
        assert cls.view_recipe in RECIPES
        assert RunConfig(objective={"name": name}).augment.recipe == cls.view_recipe


def test_view_counts_and_sources() -> None:
    counts = {"simclr": 2, "essl": 6, "care": 4, "pair": 2, "sequence": 4}
    for recipe, count in counts.items():
        assert len(build_recipe(AugmentConfig(recipe=recipe)).views) == count
    sequence = build_recipe(AugmentConfig(recipe="sequence", sequence_length=5, source="distinct"))
    assert [s.source for s in sequence.views] == list(range(6))
    assert sequence.relative == tuple((k, k + 1) for k in range(5))
    care = build_recipe(AugmentConfig(recipe="care", source="distinct"))
    assert [s.source for s in care.views] == [0, 1, 0, 0]  # the chunk pair is two views of one image
    assert [s.chunked for s in care.views] == [False, False, True, True]


def test_simclr_augmentation_strength() -> None:
    view = build_recipe(AugmentConfig(recipe="simclr")).views[0].config
    assert (view.brightness, view.contrast, view.saturation, view.hue) == pytest.approx((0.8, 0.8, 0.8, 0.2))
    assert (view.jitter_p, view.grayscale_p, view.blur_p, view.flip_p) == (0.8, 0.2, 0.5, 0.5)
    cifar = build_recipe(AugmentConfig(recipe="simclr", color_strength=0.5, blur_p=0.0)).views[1].config
    assert (cifar.brightness, cifar.hue, cifar.blur_p) == pytest.approx((0.4, 0.1, 0.0))


def test_essl_small_crop_is_half_size_and_its_four_labels_match_the_images() -> None:
    batch = _run(AugmentConfig(recipe="essl", blur_p=0.0), size=16)
    assert [v.shape[-1] for v in batch.views] == [16, 16, 8, 8, 8, 8]
    labels = [quarter_turn_labels(p["rotation_angle"]) for p in batch.params[2:]]
    assert [lab.unique().tolist() for lab in labels] == [[0], [1], [2], [3]]
    for view, label in zip(batch.views[2:], labels, strict=True):
        k = int(label[0])
        assert torch.equal(torch.rot90(view, -k, dims=(-2, -1)), batch.views[2])  # rotate back
        assert torch.equal(batch.params[2 + k]["crop_box"], batch.params[2]["crop_box"])
    assert not torch.equal(batch.views[3], batch.views[2])
    fixed = build_recipe(AugmentConfig(recipe="essl", small_crop_size=12)).views[2]
    assert fixed.output_size == 12 and fixed.config.crop_scale == (0.2, 1.0)


def test_a_quarter_turn_is_counter_clockwise_like_the_rotation_op() -> None:
    image = torch.rand(1, 3, 9, 9)
    turned = torch.rot90(image, 1, dims=(-2, -1))
    by_op = rotate(image, torch.tensor([90.0]), padding_mode="zeros")  # the 'rotation_angle' op
    torch.testing.assert_close(turned, by_op, atol=1e-4, rtol=0)


def test_care_pair_shares_params_per_chunk_and_draws_t_and_t_prime_independently() -> None:
    batch = _run(AugmentConfig(recipe="care", chunk_size=3), batch=10)
    chunk = batch.params[2]["chunk"]
    assert chunk.tolist() == [0] * 4 + [1] * 3 + [2] * 3  # 10 // 3 = 3 chunks, tensor_split sizes
    assert torch.equal(batch.params[3]["chunk"], chunk)
    for view in (2, 3):
        boxes = batch.params[view]["crop_box"]
        for c in range(3):
            rows = boxes[chunk == c]
            assert torch.equal(rows, rows[:1].expand_as(rows))
        assert len({tuple(b) for b in boxes.tolist()}) == 3
    assert not torch.equal(batch.params[2]["crop_box"], batch.params[3]["crop_box"])
    assert len({tuple(b) for b in batch.params[0]["crop_box"].tolist()}) == 10  # per image


def test_pair_and_sequence_use_light_ops_on_renderings_and_vicreg_ops_otherwise() -> None:
    light = build_recipe(AugmentConfig(recipe="pair", source="distinct")).views[0].config
    assert light.flip_p == 0.0 and light.hue == 0.0 and light.saturation == 0.0
    assert light.crop_scale == (0.8, 1.0) and light.rotation_p == 0.0
    same = build_recipe(AugmentConfig(recipe="sequence", source="same", sequence_length=3))
    assert [s.config.blur_p for s in same.views] == [1.0, 1.0, 1.0, 0.1]
    assert [s.config.solarize_p for s in same.views] == [0.0, 0.0, 0.0, 0.2]
    none = _run(AugmentConfig(recipe="pair", source="distinct", render_augment="none"), views=2)
    full = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert all(torch.equal(p["crop_box"], full.expand(8, -1)) for p in none.params)
    assert torch.count_nonzero(none.relative["augment"]) == 0


def test_too_few_decoded_views_names_data_views() -> None:
    with pytest.raises(ValueError, match="data.views >= 4"):
        _run(AugmentConfig(recipe="sequence", source="distinct"), views=2)


def test_new_options_are_validated() -> None:
    with pytest.raises(ValidationError, match="small_crop_scale"):
        AugmentConfig(small_crop_scale=(0.9, 0.5))
    with pytest.raises(ValidationError):
        AugmentConfig(color_strength=3.0)
    with pytest.raises(ValidationError):
        AugmentConfig(chunk_size=0)


OBJECTIVE_NAMES = ("vicreg", "simclr", "essl", "care", "sie", "seq_jepa")
CONFIGS = [REPO / "configs" / f"{name}-{kind}.yaml" for name in OBJECTIVE_NAMES
           for kind in ("synth3d", "cifar10")]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_objective_configs_validate_and_decode_enough_views(path: Path) -> None:
    cfg = load_config(path)
    stem_objective, data_kind = path.stem.rsplit("-", 1)
    assert cfg.objective.name == stem_objective and cfg.name == path.stem
    assert cfg.augment.recipe == get_objective(cfg.objective.name).view_recipe
    needed = max(s.source for s in build_recipe(cfg.augment).views) + 1
    assert cfg.data.views >= needed
    if data_kind == "synth3d":
        assert cfg.data.path is None and cfg.augment.source == "distinct"
        assert cfg.data.synth3d.views >= cfg.data.views
    else:
        assert cfg.data.path == "../shared/data/cifar10/train-{000000..000009}.tar"


def test_every_registered_objective_has_both_configs() -> None:
    assert set(OBJECTIVES) == set(OBJECTIVE_NAMES)
    assert all(path.is_file() for path in CONFIGS)
