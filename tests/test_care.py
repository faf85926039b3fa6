"""CARE: the equivariance loss against a per-chunk loop, its orthogonal known answers, the objective."""

from __future__ import annotations

import pytest
import timm
import torch

from augment import AugmentConfig, ViewAugmenter
from augment.sampling import chunk_sizes
from objectives.care import CARE, CAREConfig, care_equivariance_loss, care_loss


def _chunk_ids(sizes: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((s,), k) for k, s in enumerate(sizes)])


def _loop_equivariance(a: torch.Tensor, b: torch.Tensor, sizes: list[int]) -> float:
    """Mean over chunks of (2/m) sum_{i != j} (A A^T - B B^T)_ij^2, with explicit loops."""
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    start, total = 0, 0.0
    for m in sizes:
        chunk = 0.0
        for i in range(start, start + m):
            for j in range(start, start + m):
                if i != j:
                    diff = float(a[i] @ a[j]) - float(b[i] @ b[j])
                    chunk += diff * diff
        total += 2.0 / m * chunk
        start += m
    return total / len(sizes)


def test_matches_the_loop_with_uneven_chunks() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(11, 5, generator=g, dtype=torch.float64)
    b = torch.randn(11, 5, generator=g, dtype=torch.float64)
    sizes = chunk_sizes(11, 3)  # 4, 4, 3
    got = care_equivariance_loss(a, b, _chunk_ids(sizes)).item()
    assert got == pytest.approx(_loop_equivariance(a, b, sizes), rel=1e-10)
    # One chunk: the paper's L_chunk of the whole batch.
    got_one = care_equivariance_loss(a, b, torch.zeros(11, dtype=torch.long)).item()
    assert got_one == pytest.approx(_loop_equivariance(a, b, [11]), rel=1e-10)


def test_zero_exactly_for_an_orthogonal_map_and_positive_otherwise() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(8, 6, generator=g, dtype=torch.float64)
    a = a / a.norm(dim=1, keepdim=True)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    chunks = _chunk_ids([4, 4])
    assert care_equivariance_loss(a, a @ rotation, chunks).item() < 1e-20
    # Different orthogonal maps per chunk are still allowed: the loss is per chunk.
    other, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    b = torch.cat([a[:4] @ rotation, a[4:] @ other])
    assert care_equivariance_loss(a, b, chunks).item() < 1e-20
    stretch = torch.diag(torch.tensor([3.0, 1.0, 1.0, 0.5, 1.0, 2.0], dtype=torch.float64))
    assert care_equivariance_loss(a, a @ rotation @ stretch, chunks).item() > 1e-3


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        care_equivariance_loss(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(5, dtype=torch.long))


def test_defaults_are_the_official_cifar10_settings() -> None:
    cfg = CAREConfig()
    assert (cfg.equivariance_weight, cfg.temperature, cfg.projector_dims) == (0.03, 0.5, [512, 128])
    assert AugmentConfig().chunk_size == 16  # K = 256 / 16 = 16 chunks at batch 256
    assert care_loss(torch.tensor(1.0), torch.tensor(2.0), 0.03).item() == pytest.approx(1.06)


def test_forward_backward_on_a_chunked_batch() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 3, 16, 16), dtype=torch.uint8)
    augmenter = ViewAugmenter(AugmentConfig(recipe="care", chunk_size=4), (0.5,) * 3, (0.25,) * 3, 16)
    batch = augmenter(images, torch.Generator().manual_seed(0))
    assert batch.params[2]["chunk"].tolist() == [0] * 4 + [1] * 4
    encoder = timm.create_model("test_resnet", num_classes=0)
    model = CARE(CAREConfig(projector_dims=[16, 8]), encoder, encoder.num_features)
    assert model.view_recipe == "care"
    out = model(batch)
    out.loss.backward()
    expected = out.terms["info_nce"] + 0.03 * out.terms["equivariance"]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.terms["equivariance"].item() > 0
    assert out.embeddings["projection"].shape == (8, 8)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    batch.params[2].pop("chunk")
    with pytest.raises(ValueError, match="chunk"):
        model(batch)
