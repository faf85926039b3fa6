"""seq-JEPA: tokens, order invariance, loss, EMA target (schedule, precision, checkpoint), objective."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from augment import AugmentConfig, ViewAugmenter
from augment.quaternion import random_quaternion
from objectives.ema import EMATarget, cosine_momentum
from objectives.seq_jepa import SeqJEPA, SeqJEPAConfig, action_tokens, negative_cosine_loss
from pretrain.train.optim import param_groups

SMALL = dict(action_embed_dim=8, predictor_hidden=16, num_layers=2)


def _model(**overrides) -> SeqJEPA:
    torch.manual_seed(0)
    encoder = timm.create_model("test_resnet", num_classes=0)
    return SeqJEPA(SeqJEPAConfig(**{**SMALL, **overrides}), encoder, encoder.num_features)


def _batch(m: int = 3, batch: int = 6, size: int = 16):
    images = torch.randint(0, 256, (batch, m + 1, 3, size, size), dtype=torch.uint8)
    q = random_quaternion(batch * (m + 1), torch.Generator().manual_seed(1)).view(batch, m + 1, 4)
    cfg = AugmentConfig(recipe="sequence", source="distinct", sequence_length=m)
    return ViewAugmenter(cfg, (0.5,) * 3, (0.25,) * 3, size)(
        images, torch.Generator().manual_seed(0), latents={"quaternion": q})


def test_last_observed_action_slot_is_zero() -> None:
    z, actions = torch.randn(2, 3, 5), torch.randn(2, 3, 4) + 10.0
    tokens = action_tokens(z, actions)
    assert tokens.shape == (2, 3, 9)
    torch.testing.assert_close(tokens[..., :5], z)
    torch.testing.assert_close(tokens[:, :2, 5:], actions[:, :2])
    assert torch.count_nonzero(tokens[:, 2, 5:]) == 0


def test_aggregate_is_unchanged_when_observed_tokens_are_permuted() -> None:
    model = _model().eval()
    width = model.agg_token.shape[-1]
    tokens = torch.randn(4, 5, width)
    base = model.aggregate_tokens(tokens)
    for order in ([4, 3, 2, 1, 0], [1, 3, 0, 4, 2]):
        torch.testing.assert_close(model.aggregate_tokens(tokens[:, order]), base, atol=1e-5, rtol=1e-5)
    # The check can fail: the aggregate does depend on the token contents.
    assert (model.aggregate_tokens(tokens.flip(-1)) - base).abs().max() > 1e-3


def test_negative_cosine_loss_matches_a_loop_and_stops_the_target_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    rows = zip(pred.detach(), target.detach(), strict=True)
    cos = [float(p @ t) / (float(p.norm()) * float(t.norm())) for p, t in rows]
    loss = negative_cosine_loss(pred, target)
    assert loss.item() == pytest.approx(1.0 - sum(cos) / 4, rel=1e-10)
    loss.backward()
    assert pred.grad is not None and target.grad is None


def test_cosine_momentum_schedule() -> None:
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert cosine_momentum(25, 100, 0.996) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)
    with pytest.raises(ValueError):
        cosine_momentum(0, 0, 0.996)


def test_ema_target_is_frozen_float32_updated_and_checkpointed() -> None:
    online = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    target = EMATarget(online)
    assert list(target.parameters()) == []
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in target.module.named_buffers()}
    target.update_(online, 0.9)
    for name, p in online.named_parameters():
        torch.testing.assert_close(target.module.get_buffer(name), 0.9 * before[name] + 0.1 * p.detach())
    assert target.updates.item() == 1
    # DeepSpeed's bf16 mode casts parameters only: the EMA weights stay float32.
    for p in online.parameters():
        p.data = p.data.to(torch.bfloat16)
    target.update_(online, 0.5)
    assert target.module.get_buffer("0.weight").dtype == torch.float32
    restored = EMATarget(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)))
    restored.load_state_dict(target.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(),
                                                 target.state_dict().values(), strict=True))


def test_optimizer_skips_the_target_and_on_step_end_moves_it() -> None:
    model = _model()
    grouped = {id(p) for group in param_groups(model, 1e-3) for p in group["params"]}
    assert grouped == {id(p) for p in model.parameters()}
    assert not any(name.startswith("target_encoder") for name, _ in model.named_parameters())
    assert any(k.startswith("target_encoder.module.") for k in model.state_dict())
    name, online = next(iter(model.encoder.named_parameters()))
    with torch.no_grad():
        online.add_(1.0)
    before = model.target_encoder.module.get_buffer(name).clone()
    model.on_step_end(0, 10)
    expected = 0.996 * before + 0.004 * online.detach()
    torch.testing.assert_close(model.target_encoder.module.get_buffer(name), expected)


def test_forward_backward_with_actions() -> None:
    batch = _batch()
    assert batch.relative["rotation"].shape == (6, 3, 4)
    model = _model()
    assert model.view_recipe == "sequence"
    out = model(batch)
    out.loss.backward()
    assert 0.0 <= out.loss.item() <= 2.0
    assert out.terms["cosine"].item() == pytest.approx(1.0 - out.loss.item(), abs=1e-6)
    assert out.embeddings["aggregate"].shape == (6, model.agg_token.shape[-1])
    assert model.action_embed[0].weight.grad.abs().sum() > 0
    assert all(b.grad is None for b in model.target_encoder.buffers())
    z_agg = model.eval().aggregate_one_view(out.embeddings["backbone"])
    assert z_agg.shape == (6, model.agg_token.shape[-1])  # M = 1 at probe time


def test_ablation_without_actions_and_head_check() -> None:
    model = _model(action_conditioning=False, sequence_length=2)
    assert model.action_embed is None and model.agg_token.shape[-1] == model.num_features
    batch = _batch(m=2)
    batch.relative = {}
    model(batch).loss.backward()
    with pytest.raises(ValueError, match="divisible"):
        _model(num_heads=5)
    with pytest.raises(ValueError, match="objective seq_jepa: needs the relative transform 'augment'"):
        _model(action="augment", sequence_length=2)(_without(_batch(m=2), "augment"))


def _without(batch, key: str):
    batch.relative.pop(key)
    return batch
