"""Known answers of the invariance/equivariance probes, the transformations' parameters, and the
whole suite on a small held-out synthetic 3D set."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from kornia.enhance import adjust_hue

from probe_encoders import (ColourBlind, Orientation, Rot90Invariant, blob_images, in_memory_set,
                            noise_images)
from pretrain.probes.config import TRANSFORMS_2D, TRANSFORMS_3D, ProbesConfig
from pretrain.probes.features import Preprocess, encode
from pretrain.probes.probeset import load_probe_set
from pretrain.probes.suite import run_probe_suite, transform_metrics
from pretrain.probes.transforms import _render, apply_transform


pytestmark = pytest.mark.usefixtures("one_thread")


def probe(encoder, images, n_train, transforms):
    probe_set = in_memory_set(images, n_train)
    cfg = ProbesConfig(transforms=transforms, pairs_train=n_train,
                       pairs_test=images.shape[0] - n_train)
    features = encode(encoder, probe_set.images)
    metrics, _ = transform_metrics(encoder, features, probe_set, cfg, Preprocess(), "cpu")
    return metrics


def test_rot90_invariant_encoder_is_invariant_and_angle_is_unreadable():
    m = probe(Rot90Invariant(), noise_images(160, seed=1), 112, ["rotation", "flip"])
    assert m["probe/invariance/rotation"] == pytest.approx(1.0, abs=1e-4)
    for key in ("equivariance_r2", "equivariance_r2_mlp", "equivariance_r2_sie",
                "equivariance_r2_sie_mlp"):
        assert abs(m[f"probe/{key}/rotation"]) < 0.1, key
    # Not invariant to what it was not built for: a flip moves the representation.
    assert m["probe/invariance/flip"] < 0.99


def test_orientation_encoder_is_equivariant_only_through_the_mlp():
    m = probe(Orientation(), blob_images(320, seed=2), 240, ["rotation"])
    # cos(f(x), f(Tx)) = cos(k * 90 deg), mean -1/3 over k = 1, 2, 3; b is near 0.
    assert m["probe/invariance/rotation"] < 0.1
    assert m["probe/invariance/rotation"] == pytest.approx(-1 / 3, abs=0.1)
    assert m["probe/equivariance_r2_mlp/rotation"] > 0.95
    assert m["probe/equivariance_r2_sie_mlp/rotation"] > 0.95
    # The relative angle is bilinear in [f(x), f(Tx)]: no linear read-out.
    assert m["probe/equivariance_r2/rotation"] < 0.2


def test_colour_blind_encoder_is_hue_invariant():
    m = probe(ColourBlind(), noise_images(96, seed=3), 64, ["hue", "brightness"])
    assert m["probe/invariance/hue"] == pytest.approx(1.0, abs=1e-4)
    assert m["probe/invariance/brightness"] < 0.9
    assert m["probe/equivariance_r2/brightness"] > 0.5


def test_2d_transformations_apply_their_parameters():
    images = noise_images(24, seed=4)
    x = images.float() / 255
    rot = apply_transform("rotation", images, seed=0)
    k = torch.round(torch.atan2(rot.params[:, 1], rot.params[:, 0]) / (math.pi / 2)).long() % 4
    assert set(k.tolist()) <= {1, 2, 3} and rot.changed.all()
    for i in range(24):
        assert torch.equal(rot.images[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))
    flip = apply_transform("flip", images, seed=0)
    for i in range(24):
        expected = x[i].flip(-1) if flip.params[i, 0] == 1 else x[i]
        assert torch.equal(flip.images[i], expected) and bool(flip.changed[i]) == (flip.params[i, 0] == 1)
    assert 0 < int(flip.changed.sum()) < 24
    bright = apply_transform("brightness", images, seed=0)
    torch.testing.assert_close(bright.images, (x * bright.params[:, 0].view(-1, 1, 1, 1)).clamp(0, 1))
    assert ((bright.params - 1).abs() >= 0.1 - 1e-6).all()
    hue = apply_transform("hue", images, seed=0)
    torch.testing.assert_close(hue.images, adjust_hue(x, 2 * math.pi * hue.params[:, 0]),
                               atol=1e-4, rtol=0)
    gray = apply_transform("grayscale", images, seed=0)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    rows = gray.params[:, 0] == 1
    torch.testing.assert_close(gray.images[rows], luma[rows, None].expand(-1, 3, -1, -1),
                               atol=1e-5, rtol=0)
    crop = apply_transform("crop", images, seed=0)
    box = crop.params
    assert ((box[:, 0] < box[:, 2]) & (box[:, 1] < box[:, 3]) & (box >= 0).all(1) & (box <= 1).all(1)).all()
    assert torch.equal(apply_transform("blur", images, seed=5).images,
                       apply_transform("blur", images, seed=5).images)
    assert not torch.equal(apply_transform("blur", images, seed=5).images,
                           apply_transform("blur", images, seed=6).images)


@pytest.fixture(scope="module")
def synth3d_set(tmp_path_factory):
    cfg = ProbesConfig(cache_dir=str(tmp_path_factory.mktemp("cache")), max_train=24, max_test=12,
                       synth3d_size=24)
    return load_probe_set("synth3d", cfg), cfg


def test_synth3d_probe_set_holds_renderable_held_out_objects(synth3d_set):
    probe_set, cfg = synth3d_set
    assert probe_set.images.shape == (36, 3, 24, 24) and probe_set.has_3d
    assert probe_set.train.sum() == 24 and probe_set.render_size == 24
    assert set(probe_set.labels.tolist()) == set(range(12))
    # The stored latents (incl. shape parameters) re-render exactly the stored images: the 3D
    # transformations change one latent of the same object.
    latents = {**probe_set.latents, "labels": probe_set.labels}
    again = _render(latents, probe_set.labels, 24, 24)
    assert torch.equal((again * 255).round().to(torch.uint8), probe_set.images)
    for name in TRANSFORMS_3D:
        t = apply_transform(name, probe_set.images, cfg.seed,
                            {**latents, "render_size": torch.tensor(24)})
        assert t.params.shape[0] == 36 and torch.isfinite(t.params).all()
        changed = (t.images - probe_set.images.float() / 255).abs().amax(dim=(1, 2, 3))
        assert (changed > 0.05).float().mean() > 0.8, name


def test_suite_reports_every_metric_and_restores_train_mode(synth3d_set):
    probe_set, cfg = synth3d_set
    cfg = cfg.model_copy(update={"pairs_train": 16, "pairs_test": 8, "mlp_steps": 40})
    torch.manual_seed(0)
    encoder = timm.create_model("test_resnet", num_classes=0).train()
    metrics = run_probe_suite(encoder, probe_set, cfg, preprocess=Preprocess(size=32))
    assert encoder.training
    names = [*TRANSFORMS_2D, *TRANSFORMS_3D]
    expected = {"probe/linear_top1", "probe/knn_top1", "probe/health/rankme",
                "probe/health/collapsed_frac", "probe/health/neg_cos", "probe/health/pos_cos",
                "probe/seconds"}
    for t in names:
        expected |= {f"probe/invariance/{t}", f"probe/equivariance_r2/{t}",
                     f"probe/equivariance_r2_mlp/{t}", f"probe/equivariance_r2_sie/{t}",
                     f"probe/equivariance_r2_sie_mlp/{t}"}
    assert set(metrics) == expected
    assert 0.0 <= metrics["probe/linear_top1"] <= 1.0
    assert 1.0 <= metrics["probe/health/rankme"] <= encoder.num_features
    # A 2D-only set skips the 3D transformations instead of failing.
    flat = in_memory_set(probe_set.images, 24, probe_set.labels)
    calls = []
    two_d = run_probe_suite(encoder, flat, cfg.model_copy(update={"mlp": False}),
                            preprocess=Preprocess(size=32),
                            progress=lambda done, total, stage="": calls.append((done, total,
                                                                                stage)))
    stages = ["features", "linear and kNN probes",
              *(f"transformation {t}" for t in cfg.transforms), "health"]
    assert calls == [(i + 1, len(stages), stage) for i, stage in enumerate(stages)]
    assert not any(k.endswith(tuple(TRANSFORMS_3D)) for k in two_d)
    assert "probe/invariance/hue" in two_d and "probe/equivariance_r2_mlp/hue" not in two_d
