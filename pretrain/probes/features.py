"""Frozen features: run an encoder over images once (eval mode, no grad, batched, on a device).

The representation probed is the encoder's output as called, i.e. for a timm model built with
``num_classes=0`` the pooled backbone features (``REPRESENTATION``). Images are preprocessed the
way the encoder was trained: scaled to [0, 1], resized to its input size when they differ, and
normalised with its mean/std.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPRESENTATION = "backbone (encoder output: timm pooled features, num_classes=0)"


@dataclass(frozen=True)
class Preprocess:
    """How images reach the encoder: ``(x - mean) / std`` at ``size`` x ``size`` (None: as is)."""

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    size: int | None = None

    @staticmethod
    def of(encoder: nn.Module) -> "Preprocess":
        """From ``encoder.pretrained_cfg`` (what ``pretrain.hub.load_encoder`` sets); identity
        when the module has none. A freshly built timm model carries timm's ImageNet defaults
        (224 px): pass an explicit ``Preprocess`` for those (e.g. ``from_info``)."""
        cfg = getattr(encoder, "pretrained_cfg", None) or {}
        size = cfg.get("input_size")
        return Preprocess(mean=tuple(float(m) for m in cfg.get("mean", (0.0, 0.0, 0.0))),
                          std=tuple(float(s) for s in cfg.get("std", (1.0, 1.0, 1.0))),
                          size=int(size[-1]) if size else None)

    @staticmethod
    def from_info(info) -> "Preprocess":
        """From a ``pretrain.models.encoder.EncoderInfo`` (the training-time description)."""
        return Preprocess(mean=tuple(info.mean), std=tuple(info.std), size=int(info.input_size))


def to_unit_float(images: Tensor) -> Tensor:
    """``uint8`` images -> float32 in [0, 1]; float images are returned as float32."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def prepare(images: Tensor, pre: Preprocess, dtype: torch.dtype = torch.float32) -> Tensor:
    """Scale, resize (bilinear, antialiased when shrinking) and normalise one batch."""
    x = to_unit_float(images)
    if pre.size is not None and x.shape[-1] != pre.size:
        x = F.interpolate(x, size=(pre.size, pre.size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > pre.size)
    mean = torch.tensor(pre.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype)


def _param_dtype(encoder: nn.Module) -> torch.dtype:
    first = next(iter(encoder.parameters()), None)
    return first.dtype if first is not None and first.is_floating_point() else torch.float32


@torch.no_grad()
def encode(encoder: nn.Module, images: Tensor, *, pre: Preprocess | None = None,
           device: torch.device | str = "cpu", batch_size: int = 128) -> Tensor:
    """Features ``N x D`` (float32, CPU) of ``images`` (``N x 3 x H x W``, uint8 or float in
    [0, 1], CPU). The encoder runs in eval mode; its previous mode is restored afterwards, so
    this is safe to call in the middle of training."""
    pre = pre or Preprocess.of(encoder)
    was_training = encoder.training
    encoder.eval()
    dtype = _param_dtype(encoder)
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device, non_blocking=True)
            feats = encoder(prepare(batch, pre, dtype))
            out.append(feats.reshape(feats.shape[0], -1).float().cpu())
    finally:
        encoder.train(was_training)
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


@torch.no_grad()
def apply_head(head: nn.Module, features: Tensor, *, device: torch.device | str = "cpu",
               batch_size: int = 1024) -> Tensor:
    """``head`` (an objective's named part, ``Objective.probe_features``) over backbone
    ``features`` ``N x D``: ``N x D'`` (float32, CPU), in eval mode and batched like
    ``encode``. Every submodule's mode is restored afterwards, not only the head's: a head may
    hold a training objective whose mode it does not share."""
    modes = [(module, module.training) for module in head.modules()]
    head.eval()
    dtype = _param_dtype(head)
    out = []
    try:
        for start in range(0, features.shape[0], batch_size):
            part = head(features[start:start + batch_size].to(device, dtype))
            out.append(part.reshape(part.shape[0], -1).float().cpu())
    finally:
        for module, mode in modes:
            module.training = mode
    return torch.cat(out) if out else torch.empty(0, 0)
