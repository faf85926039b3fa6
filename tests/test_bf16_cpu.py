"""bf16 autocast on the CPU: the oneDNN weight-gradient guard (``pretrain.train.precision``) and
DeepSpeed ZeRO 0/1/2 engines that never skip a step under it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from augment.pipeline import ViewAugmenter
from pretrain.config import load_config
from pretrain.train import checkpoint
from pretrain.train.distributed import single_process_group
from pretrain.train.engine import build_engine
from pretrain.train.loop import build_model
from pretrain.train.precision import cpu_bf16_guard, hits_onednn_bf16_defect
from pretrain.train.seeding import generator_for
from pretrain.train.step import StepHealth, train_step

CPU = torch.device("cpu")

# Shapes measured to give non-finite bf16 weight gradients with torch 2.14.1 / oneDNN 3.12 on
# AVX-512 CPUs (input H x W, kernel, stride, padding); each failed 2-6 times in 8 tries.
MEASURED_DEFECTIVE = [((1, 1), 3, 2, 1), ((1, 1), 3, 3, 1), ((1, 1), 5, 2, 2), ((1, 1), 5, 3, 2),
                      ((1, 2), 3, 3, 1), ((2, 2), 3, 3, 1), ((2, 2), 5, 3, 2)]
# Shapes the same sweep found correct, which ResNets meet at every size: left in bf16.
MEASURED_CORRECT = [((4, 4), 3, 2, 1), ((8, 8), 3, 2, 1), ((2, 2), 1, 2, 0), ((1, 1), 1, 2, 0),
                    ((3, 3), 3, 1, 1), ((7, 7), 3, 1, 1)]


@pytest.mark.parametrize("size,kernel,stride,padding", MEASURED_DEFECTIVE)
def test_every_measured_defective_shape_is_guarded(size, kernel, stride, padding):
    x, w = torch.empty(1, 4, *size), torch.empty(4, 4, kernel, kernel)
    assert hits_onednn_bf16_defect(x, w, stride, padding, 1)


@pytest.mark.parametrize("size,kernel,stride,padding", MEASURED_CORRECT)
def test_shapes_oneDNN_gets_right_stay_in_bf16(size, kernel, stride, padding):
    x, w = torch.empty(1, 4, *size), torch.empty(4, 4, kernel, kernel)
    assert not hits_onednn_bf16_defect(x, w, stride, padding, 1)


def test_guarded_weight_gradient_is_the_float32_gradient():
    """Known answer: in the defect's shape (a ResNet's last stage at 16 px: a 1x1 map into a
    3x3 stride-2 conv) the guarded step's weight gradient equals the float32 gradient every time
    (unguarded, it was non-finite in 2-6 of 8 tries on AVX-512 CPUs). The guard sees the
    operands before autocast rounds them, so only the bf16 output (and the gradient arriving at
    it) is rounded."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(12):
        x = torch.randn(16, 192, 1, 1, generator=gen)
        weight = torch.randn(96, 192, 3, 3, generator=gen, requires_grad=True)
        upstream = torch.randn(16, 96, 1, 1, generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16), cpu_bf16_guard("cpu", torch.bfloat16):
            out = F.conv2d(x, weight, stride=2, padding=1)
        assert out.dtype == torch.bfloat16  # the rest of the net sees what autocast gives it
        (out.float() * upstream).sum().backward()
        fp32_w = weight.detach().clone().requires_grad_(True)
        reference = F.conv2d(x, fp32_w, stride=2, padding=1)
        # The output is bf16, so the gradient arriving at it is rounded to bf16 too.
        (reference * upstream.bfloat16().float()).sum().backward()
        assert torch.isfinite(weight.grad).all(), f"trial {trial}"
        torch.testing.assert_close(weight.grad, fp32_w.grad, rtol=1e-5, atol=1e-5)


def test_guard_leaves_other_convolutions_and_fp32_runs_alone():
    x, w = torch.randn(2, 8, 8, 8), torch.randn(8, 8, 3, 3)
    seen = []
    with torch.autocast("cpu", dtype=torch.bfloat16), cpu_bf16_guard("cpu", torch.bfloat16):
        seen.append(F.conv2d(x, w, stride=2, padding=1).dtype)  # 4x4 output: not guarded
    with cpu_bf16_guard("cpu", None):
        seen.append(F.conv2d(x[:, :, :1, :1], w, stride=2, padding=1).dtype)
    assert seen == [torch.bfloat16, torch.float32]


@pytest.fixture(scope="module")
def process_group():
    with single_process_group():
        yield


def _five_steps(zero_stage: int) -> tuple[list[float], int, torch.Tensor, StepHealth]:
    """Five bf16-autocast steps of VICReg on a test ResNet at 16 px (its last stage meets the
    defect's shape) through a DeepSpeed engine at ``zero_stage``."""
    cfg = load_config(None, ["encoder.model=test_resnet", "data.image_size=16",
                             "objective.vicreg.expander_dims=[32,32]", "deepspeed.bf16=true",
                             f"deepspeed.zero_stage={zero_stage}"])
    objective, info = build_model(cfg)
    guarded = []
    for module in objective.encoder.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda m, args, out: guarded.append(
                hits_onednn_bf16_defect(args[0], m.weight, m.stride, m.padding, m.dilation)))
    augmenter = ViewAugmenter(cfg.augment, info.mean, info.std, 16)
    images = torch.randint(0, 256, (16, 2, 3, 16, 16), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    engine = build_engine(objective, cfg, total_steps=20, world_size=1, device=CPU)
    health, losses = StepHealth(), []
    # The same views every step, so that a falling loss means the optimizer makes progress (with
    # fresh views each step, the loss of step 4 may be above step 0's by the draw alone).
    views = augmenter(images, generator_for(0, "t", 0))
    for step in range(5):
        torch.manual_seed(step)
        losses.append(float(train_step(engine, views).loss))
    assert any(guarded), "the test must exercise the defect's shape"
    health.check(engine, 5, sum(losses) / len(losses))
    weights = torch.cat([p.detach().flatten() for p in engine.module.parameters()])
    return losses, engine.skipped_steps, weights, health


@pytest.mark.slow
def test_zero_1_and_2_skip_no_step_under_cpu_bf16_and_agree_with_zero_0(process_group):
    runs = {stage: _five_steps(stage) for stage in (0, 1, 2)}
    for stage, (losses, skipped, weights, health) in runs.items():
        assert skipped == 0 and health.skipped == 0, f"ZeRO {stage} skipped {skipped} steps"
        assert all(map(math.isfinite, losses)) and torch.isfinite(weights).all()
        assert losses[-1] < losses[0]
    for stage in (1, 2):
        gaps = [abs(a - b) / abs(b) for a, b in zip(runs[stage][0], runs[0][0], strict=True)]
        assert max(gaps) < 1e-3, (stage, gaps)
    # Stages 1 and 2 share one flat fp32 optimizer partition: the same update to rounding.
    torch.testing.assert_close(runs[2][2], runs[1][2], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_skipped_step_is_counted_and_warned(process_group, caplog, tmp_path):
    """A real ZeRO-1 engine fed a non-finite loss skips the step; the loop's health check logs
    the count as ``train/skipped_steps`` and warns, and a non-finite mean loss warns too."""
    cfg = load_config(None, ["encoder.model=test_resnet", "data.image_size=16",
                             "objective.vicreg.expander_dims=[32,32]", "deepspeed.zero_stage=1"])
    objective, info = build_model(cfg)
    augmenter = ViewAugmenter(cfg.augment, info.mean, info.std, 16)
    images = torch.randint(0, 256, (8, 2, 3, 16, 16), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    engine = build_engine(objective, cfg, total_steps=10, world_size=1, device=CPU)
    health = StepHealth()
    with caplog.at_level("WARNING", logger="pretrain.train"):
        train_step(engine, augmenter(images, generator_for(0, "t", 0)))
        assert health.check(engine, 1, 1.5) == {"train/skipped_steps": 0.0}
        assert not caplog.records
        out = engine(augmenter(images, generator_for(0, "t", 1)))
        engine.backward(out.loss * float("nan"))
        engine.step()
        assert health.check(engine, 2, float("nan")) == {"train/skipped_steps": 1.0}
    messages = [r.getMessage() for r in caplog.records if r.name == "pretrain.train"]
    assert messages == ["step 2: the optimizer skipped 1 step(s) with non-finite gradients "
                        "(1 in all)", "step 2: the mean loss of the last interval is nan"]

    # A resumed engine restores DeepSpeed's count from its checkpoint: the loop starts its check
    # from it, so an old skip is not warned about again after every resume.
    checkpoint.save(engine, checkpoint.TrainState(step=2), tmp_path)
    resumed = build_engine(build_model(cfg)[0], cfg, total_steps=10, world_size=1, device=CPU)
    checkpoint.load(resumed, tmp_path)
    assert resumed.skipped_steps == 1
    caplog.clear()
    with caplog.at_level("WARNING", logger="pretrain.train"):
        train_step(resumed, augmenter(images, generator_for(0, "t", 2)))
        assert StepHealth(resumed.skipped_steps).check(resumed, 3, 1.5) == {
            "train/skipped_steps": 1.0}
    assert not [r for r in caplog.records if r.name == "pretrain.train"]
