"""Encoders with known invariances, and images for them (shared by the probe tests)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pretrain.probes.probeset import ProbeSet


def conv_net(in_channels: int, seed: int, width: int = 16) -> nn.Module:
    """A random conv net with global pooling (no symmetry of its own)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, width, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten()).eval()


class Rot90Invariant(nn.Module):
    """f(x) = mean over k of g(rot90(x, k)): exactly invariant to 90-degree rotations."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.g = conv_net(3, seed)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.g(torch.rot90(x, k, dims=(-2, -1))) for k in range(4)]).mean(0)


class Orientation(nn.Module):
    """(cos, sin) of the direction from the image centre to the intensity centroid (first image
    moments), angles counter-clockwise as displayed: rotating the image rotates the output."""

    def forward(self, x: Tensor) -> Tensor:
        mass = x.sum(dim=1)
        h, w = mass.shape[-2:]
        cols = torch.arange(w, dtype=x.dtype) - (w - 1) / 2
        rows = (h - 1) / 2 - torch.arange(h, dtype=x.dtype)  # y points up
        total = mass.sum(dim=(-2, -1))
        mx = (mass * cols).sum(dim=(-2, -1)) / total
        my = (mass * rows[:, None]).sum(dim=(-2, -1)) / total
        theta = torch.atan2(my, mx)
        return torch.stack((theta.cos(), theta.sin()), dim=1)


class ColourBlind(nn.Module):
    """Sees only the HSV value max(R, G, B), which a hue rotation leaves unchanged."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.g = conv_net(1, seed)

    def forward(self, x: Tensor) -> Tensor:
        return self.g(x.amax(dim=1, keepdim=True))


def noise_images(n: int, size: int = 16, seed: int = 0) -> Tensor:
    """Random smooth colour images, ``uint8`` ``n x 3 x size x size``."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 4, size // 4, generator=g)
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                           align_corners=False)
    noisy = (fine + 0.15 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
    return (noisy * 255).round().to(torch.uint8)


def blob_images(n: int, size: int = 16, seed: int = 0) -> Tensor:
    """One bright Gaussian blob per image, off centre at a uniform random angle."""
    g = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.rand(n, generator=g)
    radius = size * (0.2 + 0.1 * torch.rand(n, generator=g))
    c = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    cx, cy = radius * angle.cos(), radius * angle.sin()
    xx, yy = c.view(1, 1, -1), -c.view(1, -1, 1)
    blob = torch.exp(-((xx - cx.view(-1, 1, 1)) ** 2 + (yy - cy.view(-1, 1, 1)) ** 2) / 4.0)
    colour = 0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=g)
    return (blob[:, None] * colour * 255).round().to(torch.uint8)


def in_memory_set(images: Tensor, n_train: int, labels: Tensor | None = None) -> ProbeSet:
    n = images.shape[0]
    train = torch.zeros(n, dtype=torch.bool)
    train[:n_train] = True
    labels = labels if labels is not None else torch.full((n,), -1, dtype=torch.int64)
    return ProbeSet(images=images, labels=labels, train=train, name="test")


def export_test_encoder(out_dir, seed: int = 0, run_id: str | None = None):
    """A perturbed ``test_resnet`` (32 px) exported with ``write_encoder``; returns the folder."""
    from pretrain.models.encoder import build_encoder
    from pretrain.models.folder import write_encoder

    torch.manual_seed(seed)
    encoder, info = build_encoder("test_resnet", 32)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return write_encoder(encoder, info, out_dir, objective="vicreg", data="synth3d",
                         run_id=run_id, step=5)


def register_test_encoder(tmp_path, tracking_uri: str, name: str = "enc-test", seed: int = 0):
    """Create a 'pretraining' run in ``tracking_uri``, export an encoder into it and register it.

    Returns ``(run_id, RegisteredEncoder)``."""
    from mlflow.tracking import MlflowClient

    from pretrain.models.model_registry import log_and_register
    from pretrain.tracking.runs import ensure_experiment

    client = MlflowClient(tracking_uri)
    experiment = ensure_experiment(client, "pretraining", tracking_uri)
    run_id = client.create_run(experiment, run_name="pretrain").info.run_id
    files = export_test_encoder(tmp_path / f"enc-{seed}", seed=seed, run_id=run_id)
    return run_id, log_and_register(tracking_uri, run_id, files, name)


def write_colour_shards(out_dir, per_class: int, prefix: str, seed: int = 0, size: int = 32):
    """Labeled PNG shards: class c's images are noise dominated by colour channel c (3 classes).

    Returns the list of (image uint8 H x W x 3, label) written, in order."""
    import io

    import numpy as np
    from PIL import Image

    from pretrain.data.writer import ShardSetWriter

    g = torch.Generator().manual_seed(seed)
    samples = []
    with ShardSetWriter(out_dir, shard_size=16, prefix=prefix,
                        metadata={"classes": ["red", "green", "blue"]}) as writer:
        for i in range(3 * per_class):
            label = i % 3
            image = 0.35 * torch.rand(3, size, size, generator=g)
            image[label] += 0.5 + 0.15 * torch.rand(size, size, generator=g)
            array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
            writer.write(f"{i:06d}", {"png": buf.getvalue(), "cls": str(label).encode()})
            samples.append((array, label))
    return samples
