"""``deepspeed.bf16: auto`` (the default) trains in float32 on the CPU: a claim of the README that
no test pinned (issue 11, "Guarantees pinned by tests")."""

from __future__ import annotations

import pytest
import torch

from augment.pipeline import ViewAugmenter
from pretrain.config import load_config
from pretrain.train.distributed import single_process_group
from pretrain.train.engine import build_engine, deepspeed_config
from pretrain.train.loop import build_model
from pretrain.train.seeding import generator_for
from pretrain.train.step import train_step

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")


def test_bf16_auto_chooses_float32_on_the_cpu():
    cfg = load_config(None, ["encoder.model=test_resnet", "data.image_size=32",
                             "objective.vicreg.expander_dims=[32,32]"])
    assert cfg.deepspeed.bf16 == "auto"
    assert deepspeed_config(cfg, 1, CPU)["torch_autocast"]["enabled"] is False
    forced = load_config(None, ["deepspeed.bf16=true"])
    assert deepspeed_config(forced, 1, CPU)["torch_autocast"]["enabled"] is True  # can fail
    objective, info = build_model(cfg)
    images = torch.randint(0, 256, (8, 1, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    views = ViewAugmenter(cfg.augment, info.mean, info.std, 32)(images, generator_for(0, "t", 0))
    with single_process_group():
        engine = build_engine(objective, cfg, total_steps=4, world_size=1, device=CPU)
        seen: list[torch.dtype] = []
        conv = next(m for m in engine.module.encoder.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
        out = train_step(engine, views)
    assert seen == [torch.float32]  # the convolutions ran in float32, not under bf16 autocast
    assert out.loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in engine.module.parameters())
