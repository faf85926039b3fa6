"""Encoders: any timm model without its classifier, plus what export needs to describe it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
from torch import nn


@dataclass(frozen=True)
class EncoderInfo:
    model: str
    num_features: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    kwargs: dict[str, Any]


def build_encoder(model: str, input_size: int, kwargs: dict[str, Any] | None = None
                  ) -> tuple[nn.Module, EncoderInfo]:
    """``timm.create_model(model, pretrained=False, num_classes=0, **kwargs)`` and its description.

    Nothing is downloaded: weights start random. mean/std come from the model's pretrained_cfg so an
    encoder is normalised the way timm users expect when they finetune it."""
    kwargs = dict(kwargs or {})
    encoder = timm.create_model(model, pretrained=False, num_classes=0, **kwargs)
    data_cfg = timm.data.resolve_data_config({}, model=encoder)
    info = EncoderInfo(
        model=model,
        num_features=int(encoder.num_features),
        input_size=input_size,
        mean=tuple(float(m) for m in data_cfg["mean"]),
        std=tuple(float(s) for s in data_cfg["std"]),
        kwargs=kwargs,
    )
    return encoder, info
