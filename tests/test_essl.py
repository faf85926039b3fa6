"""E-SSL: rotation labels, the rotation loss against a loop, the head, and the full objective."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from augment import AugmentConfig, ViewAugmenter
from objectives.essl import ESSL, ESSLConfig, essl_loss, quarter_turn_labels, rotation_loss
from objectives.heads import ln_mlp
from objectives.simclr import SimCLRConfig
from objectives.vicreg import VICRegConfig


def test_quarter_turn_labels_from_angles() -> None:
    angles = torch.tensor([0.0, 90.0, 180.0, -180.0, -90.0, 270.0, 360.0, 89.6])
    assert quarter_turn_labels(angles).tolist() == [0, 1, 2, 2, 3, 3, 0, 1]


def test_rotation_loss_matches_a_loop_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (7,), generator=g)
    expected = 0.0
    for row, label in zip(logits.tolist(), labels.tolist(), strict=True):
        expected += -(row[label] - math.log(sum(math.exp(v) for v in row)))
    assert rotation_loss(logits, labels).item() == pytest.approx(expected / 7, rel=1e-6)
    assert essl_loss(torch.tensor(2.0), torch.tensor(3.0), 0.4).item() == pytest.approx(3.2)
    with pytest.raises(ValueError):
        rotation_loss(torch.randn(3, 5), torch.zeros(3, dtype=torch.long))


def test_rotation_head_is_a_layernorm_mlp() -> None:
    head = ln_mlp(10, [8, 8], 4)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.LayerNorm, nn.ReLU] * 2 + [nn.Linear]
    assert all(m.bias is not None for m in head if isinstance(m, nn.Linear))
    # LayerNorm: a row's output does not depend on the other rows.
    x = torch.randn(5, 10)
    torch.testing.assert_close(head(x)[:1], head(x[:1]))


def test_defaults_are_the_papers_cifar_values() -> None:
    cfg = ESSLConfig()
    assert cfg.base == "simclr" and cfg.rotation_weight == 0.4 and cfg.head_hidden_dims == [2048, 2048]
    assert cfg.simclr.projector_dims == [2048, 2048] and cfg.simclr.projector_last_norm
    assert cfg.simclr.temperature == 0.5
    assert AugmentConfig().small_crop_scale == (0.2, 1.0)


def _batch(size: int = 16, batch: int = 6):
    images = torch.randint(0, 256, (batch, 1, 3, size, size), dtype=torch.uint8)
    augmenter = ViewAugmenter(AugmentConfig(recipe="essl"), (0.5,) * 3, (0.25,) * 3, size)
    return augmenter(images, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("base", ["simclr", "vicreg"])
def test_forward_backward_and_loss_composition(base: str) -> None:
    torch.manual_seed(0)
    batch = _batch()
    assert [tuple(v.shape[-2:]) for v in batch.views] == [(16, 16)] * 2 + [(8, 8)] * 4
    encoder = timm.create_model("test_resnet", num_classes=0)
    cfg = ESSLConfig(base=base, head_hidden_dims=[16], simclr=SimCLRConfig(projector_dims=[16, 8]),
                     vicreg=VICRegConfig(expander_dims=[16, 16]))
    model = ESSL(cfg, encoder, encoder.num_features)
    assert model.view_recipe == "essl"
    out = model(batch)
    out.loss.backward()
    expected = out.terms["base"] + 0.4 * out.terms["rotation"]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert ("nt_xent" in out.terms) == (base == "simclr")
    assert ("covariance" in out.terms) == (base == "vicreg")
    assert 0.0 <= out.terms["rotation_accuracy"].item() <= 1.0
    assert all(not t.requires_grad for t in out.terms.values())
    assert model.rotation_head[-1].weight.grad.abs().sum() > 0
    assert out.embeddings["backbone"].shape == (6, encoder.num_features)


def test_the_head_sees_backbone_features_of_the_rotated_crops() -> None:
    torch.manual_seed(0)
    batch = _batch()
    encoder = timm.create_model("test_resnet", num_classes=0).eval()
    cfg = ESSLConfig(head_hidden_dims=[16], simclr=SimCLRConfig(projector_dims=[16, 8]))
    model = ESSL(cfg, encoder, encoder.num_features).eval()
    seen: list[torch.Tensor] = []
    model.rotation_head.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    model(batch)
    with torch.no_grad():
        direct = encoder(torch.cat(batch.views[2:6]))
    torch.testing.assert_close(seen[0], direct)


def test_needs_the_rotated_views() -> None:
    encoder = timm.create_model("test_resnet", num_classes=0)
    model = ESSL(ESSLConfig(head_hidden_dims=[8]), encoder, encoder.num_features)
    batch = _batch()
    batch.views = batch.views[:2]
    with pytest.raises(ValueError, match="objective essl: needs 6 views, the batch has 2"):
        model(batch)
