"""The CIFAR-style encoder stem: what it changes, what it records, how plain timm rebuilds it."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from pretrain.config.schema import EncoderConfig
from pretrain.models.encoder import apply_stem, build_encoder

TINY = {"channels": (8, 16, 32, 64)}  # a narrow timm resnet18, for speed


def test_cifar_stem_keeps_spatial_detail_at_32_px() -> None:
    x = torch.randn(2, 3, 32, 32)
    plain, plain_info = build_encoder("resnet18", 32, TINY)
    cifar, info = build_encoder("resnet18", 32, TINY, stem="cifar")
    assert plain_info.stem == "timm" and info.stem == "cifar"
    assert info.kwargs == TINY and info.num_features == plain_info.num_features == 64
    # timm's stem (7x7 stride 2 + max-pool) leaves 1x1 before pooling; the CIFAR stem 4x4.
    assert plain.forward_features(x).shape[-2:] == (1, 1)
    assert cifar.forward_features(x).shape[-2:] == (4, 4)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    assert cifar(x).shape == (2, 64)


def test_plain_timm_rebuilds_the_cifar_stem_encoder_with_apply_stem() -> None:
    torch.manual_seed(0)
    cifar, info = build_encoder("resnet18", 32, TINY, stem="cifar")
    weights = cifar.state_dict()
    rebuilt = apply_stem(timm.create_model(info.model, num_classes=0, **info.kwargs), info.stem)
    rebuilt.load_state_dict(weights, strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), cifar.eval()(x))
    with pytest.raises(RuntimeError, match="conv1"):  # plain timm alone cannot take the weights
        timm.create_model(info.model, num_classes=0, **info.kwargs).load_state_dict(weights)


def test_unknown_stem_and_models_without_a_resnet_stem_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown encoder stem"):
        build_encoder("resnet18", 32, TINY, stem="imagenet")
    with pytest.raises(ValueError, match="single-conv stem"):
        build_encoder("test_resnet", 32, stem="cifar")  # timm's deep 3-conv stem
    with pytest.raises(ValueError):
        EncoderConfig(stem="other")
    assert EncoderConfig().stem == "timm"
