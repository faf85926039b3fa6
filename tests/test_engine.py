"""The DeepSpeed engine as configured here: same update as plain PyTorch, bf16 autocast path."""

from __future__ import annotations

import copy

import pytest
import torch

from augment.pipeline import ViewAugmenter
from pretrain.config import load_config
from pretrain.train.distributed import single_process_group
from pretrain.train.engine import build_engine
from pretrain.train.loop import build_model
from pretrain.train.optim import param_groups
from pretrain.train.schedule import WarmupCosine
from pretrain.train.seeding import generator_for
from pretrain.train.step import train_step

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def process_group():
    with single_process_group():
        yield


def _setup(*overrides: str):
    cfg = load_config(None, ["encoder.model=test_resnet", "data.image_size=32",
                             "objective.vicreg.expander_dims=[32,32]", "optim.grad_clip=0.5",
                             "optim.lr=0.01", *overrides])
    objective, info = build_model(cfg)
    augmenter = ViewAugmenter(cfg.augment, info.mean, info.std, 32)
    images = torch.randint(0, 256, (8, 1, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    batches = [augmenter(images, generator_for(0, "test", i)) for i in range(3)]
    return cfg, objective, batches


def test_engine_update_equals_plain_pytorch_adamw_with_clipping_and_schedule():
    cfg, objective, batches = _setup()
    plain = copy.deepcopy(objective)
    engine = build_engine(objective, cfg, total_steps=10, world_size=1, device=CPU)
    optimizer = torch.optim.AdamW(param_groups(plain, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=cfg.optim.betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(10, 1, cfg.optim.min_lr_frac))
    for views in batches:
        train_step(engine, views)
        out = plain(views)
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        schedule.step()
    assert engine.get_lr()[0] == pytest.approx(schedule.get_last_lr()[0])
    for (name, a), b in zip(engine.module.state_dict().items(), plain.state_dict().values()):
        # Adam divides by sqrt(v): float-rounding differences of near-zero gradients grow
        # slightly over steps, hence a tolerance well above rounding but 100x below one update
        # (lr 1e-2 per step); a wrong lr, weight decay, clipping or schedule breaks it.
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=name)


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_bf16_runs_convolutions_under_autocast_with_fp32_master_weights(zero_stage):
    cfg, objective, batches = _setup("deepspeed.bf16=true", f"deepspeed.zero_stage={zero_stage}")
    engine = build_engine(objective, cfg, total_steps=10, world_size=1, device=CPU)
    seen: list[torch.dtype] = []
    conv = next(m for m in engine.module.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    before = copy.deepcopy(engine.module.encoder.state_dict())
    out = train_step(engine, batches[0])
    assert seen == [torch.bfloat16]
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(p.dtype == torch.float32 for p in engine.module.parameters())
    changed = [k for k, v in engine.module.encoder.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed
