"""SimCLR's NT-Xent against a loop over anchors, known answers, and a forward/backward smoke test."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from augment import AugmentConfig, ViewAugmenter
from objectives.simclr import SimCLR, SimCLRConfig, nt_xent_loss


def _loop_nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, tau: float) -> float:
    """Eq. (1) of the SimCLR paper written out: anchors 2k, 2k+1 are the two views of image k."""
    views = []
    for a, b in zip(z_a.tolist(), z_b.tolist(), strict=True):
        views += [a, b]
    unit = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in views]

    def sim(i: int, j: int) -> float:
        return sum(x * y for x, y in zip(unit[i], unit[j], strict=True))

    total = 0.0
    for i in range(len(unit)):
        positive = i + 1 if i % 2 == 0 else i - 1
        denominator = sum(math.exp(sim(i, k) / tau) for k in range(len(unit)) if k != i)
        total += -math.log(math.exp(sim(i, positive) / tau) / denominator)
    return total / len(unit)


def test_matches_the_loop_over_anchors() -> None:
    g = torch.Generator().manual_seed(0)
    z_a = torch.randn(5, 7, generator=g, dtype=torch.float64)
    z_b = z_a + 0.5 * torch.randn(5, 7, generator=g, dtype=torch.float64)
    for tau in (0.5, 0.1):
        got = nt_xent_loss(z_a, z_b, temperature=tau).item()
        assert got == pytest.approx(_loop_nt_xent(z_a, z_b, tau), rel=1e-5)


def test_known_answer_counts_two_n_minus_two_negatives() -> None:
    # Identical views, images orthogonal: positive similarity 1, each of the 2N-2 negatives 0.
    n, tau = 4, 0.5
    z = torch.eye(n, 6) * 3.0
    expected = math.log(1.0 + (2 * n - 2) * math.exp(-1.0 / tau))
    assert nt_xent_loss(z, z.clone(), temperature=tau).item() == pytest.approx(expected, rel=1e-6)


def test_depends_on_directions_only_and_gather_is_identity_in_one_process() -> None:
    g = torch.Generator().manual_seed(1)
    z_a, z_b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    scale = torch.rand(6, 1, generator=g) + 0.5
    base = nt_xent_loss(z_a, z_b)
    torch.testing.assert_close(nt_xent_loss(z_a * scale, z_b), base)
    torch.testing.assert_close(nt_xent_loss(z_a, z_b, gather=False), base)


def test_rejects_bad_shapes_and_temperature() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)


def test_config_defaults_follow_the_paper() -> None:
    cfg = SimCLRConfig()
    assert cfg.temperature == 0.5 and cfg.projector_dims == [2048, 128]
    with pytest.raises(ValueError):
        SimCLRConfig(temperature=-1.0)


def test_forward_backward_on_an_augmented_batch() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 1, 3, 24, 24), dtype=torch.uint8)
    augmenter = ViewAugmenter(AugmentConfig(recipe="simclr"), (0.5,) * 3, (0.25,) * 3, 24)
    batch = augmenter(images, torch.Generator().manual_seed(0))
    encoder = timm.create_model("test_resnet", num_classes=0)
    model = SimCLR(SimCLRConfig(projector_dims=[32, 16]), encoder, encoder.num_features)
    assert model.name == "simclr" and model.view_recipe == "simclr"
    out = model(batch)
    out.loss.backward()
    assert out.loss.requires_grad and not out.terms["nt_xent"].requires_grad
    assert out.embeddings["backbone"].shape == (6, encoder.num_features)
    assert out.embeddings["projection"].shape == (6, 16)
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert grads and max(g.abs().max().item() for g in grads) > 0
