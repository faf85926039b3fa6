"""Encoders: any timm model without its classifier, plus what export needs to describe it.

``stem`` adapts a timm ResNet to small images. timm's ResNet stem (7x7 stride-2 conv, then a 3x3
stride-2 max-pool) takes a 32 px image down to 8x8 before the first block and to 1x1 before the
last one, so little spatial layout (pose) survives. ``stem="cifar"`` is the CIFAR-style stem of
the small-image ResNets (He et al. 2016, Sec. 4.2; the official seq-JEPA and E-SSL CIFAR code):
a 3x3 stride-1 conv and no max-pool. timm's ``ResNet`` constructor cannot express it (its
``stem_type`` options all start with a stride-2 conv and ``replace_stem_pool`` swaps the pool for
a stride-2 conv; ``output_stride`` only dilates the later stages), so it is applied after
``timm.create_model`` by :func:`apply_stem`: plain timm rebuilds such an encoder with
``apply_stem(timm.create_model(name, num_classes=0, **kwargs), "cifar")``, or by hand with
``m.conv1 = nn.Conv2d(3, m.conv1.out_channels, 3, 1, 1, bias=False); m.maxpool = nn.Identity()``
before loading the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import timm
from torch import nn

Stem = Literal["timm", "cifar"]
STEMS: tuple[str, ...] = get_args(Stem)


@dataclass(frozen=True)
class EncoderInfo:
    model: str
    num_features: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    kwargs: dict[str, Any]
    stem: str = "timm"


def apply_stem(encoder: nn.Module, stem: str) -> nn.Module:
    """``encoder`` with its stem replaced in place (``"timm"``: unchanged; ``"cifar"``: ``conv1``
    becomes a 3x3 stride-1 conv with the same channels and ``maxpool`` an identity).

    Raises:
        ValueError: an unknown stem, or ``"cifar"`` on a model without a single-conv ResNet stem.
    """
    if stem not in STEMS:
        raise ValueError(f"unknown encoder stem {stem!r}; choose one of {', '.join(STEMS)}")
    if stem == "timm":
        return encoder
    conv = getattr(encoder, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(encoder, "maxpool"):
        raise ValueError(f"encoder stem 'cifar' needs a ResNet with a single-conv stem (conv1, "
                         f"maxpool); {type(encoder).__name__} has none")
    encoder.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=3, stride=1,
                              padding=1, bias=False)
    encoder.maxpool = nn.Identity()
    return encoder


def build_encoder(model: str, input_size: int, kwargs: dict[str, Any] | None = None, *,
                  stem: str = "timm") -> tuple[nn.Module, EncoderInfo]:
    """``timm.create_model(model, pretrained=False, num_classes=0, **kwargs)`` with ``stem``
    applied (:func:`apply_stem`), and its description.

    Nothing is downloaded: weights start random. mean/std come from the model's pretrained_cfg so an
    encoder is normalised the way timm users expect when they finetune it."""
    kwargs = dict(kwargs or {})
    encoder = apply_stem(timm.create_model(model, pretrained=False, num_classes=0, **kwargs), stem)
    data_cfg = timm.data.resolve_data_config({}, model=encoder)
    info = EncoderInfo(
        model=model,
        num_features=int(encoder.num_features),
        input_size=input_size,
        mean=tuple(float(m) for m in data_cfg["mean"]),
        std=tuple(float(s) for s in data_cfg["std"]),
        kwargs=kwargs,
        stem=stem,
    )
    return encoder, info
