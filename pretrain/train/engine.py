"""DeepSpeed engine construction: config dict, optimizer, LR schedule."""

from __future__ import annotations

from typing import Any

import deepspeed
import torch
from torch import nn

from pretrain.config.schema import RunConfig
from pretrain.train.optim import LARS, param_groups
from pretrain.train.schedule import WarmupCosine


def use_bf16(cfg: RunConfig, device: torch.device) -> bool:
    if cfg.deepspeed.bf16 == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return bool(cfg.deepspeed.bf16)


def deepspeed_config(cfg: RunConfig, world_size: int, device: torch.device) -> dict[str, Any]:
    """The DeepSpeed config for one run. AdamW is DeepSpeed's own (``torch_adam`` so nothing is
    compiled on CPU); LARS is passed as a client optimizer instead."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.data.batch_size * world_size,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        # bf16 as torch.autocast with fp32 master weights: DeepSpeed's pure-bf16 mode casts
        # BatchNorm weights to bf16 but keeps its running statistics in fp32, which the BN
        # kernels reject; autocast keeps convnet BN (and our fp32 loss math) intact.
        "torch_autocast": {"enabled": use_bf16(cfg, device), "dtype": "bfloat16"},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if cfg.optim.grad_clip > 0:
        ds["gradient_clipping"] = cfg.optim.grad_clip
    if cfg.optim.name == "adamw":
        ds["optimizer"] = {"type": "AdamW", "params": {
            "lr": cfg.optim.lr, "betas": list(cfg.optim.betas),
            "weight_decay": cfg.optim.weight_decay, "torch_adam": True, "adam_w_mode": True}}
    if cfg.deepspeed.zero_stage > 0 and device.type == "cpu":
        # gloo has no reduce_scatter; ZeRO falls back to all-reduce of each bucket.
        ds["zero_optimization"]["reduce_scatter"] = False
    _merge(ds, cfg.deepspeed.extra)
    return ds


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def skip_cpu_shm_build() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce op on CPU.

    DeepSpeed's comm backend compiles that C++ op the first time a CPU process initialises it
    (about a minute on 2 cores, and again whenever compiler flags differ between processes).
    Marking it incompatible makes DeepSpeed use the torch.distributed (gloo) collectives, so
    nothing compiles on CPU, as with ``torch_adam``."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def build_engine(module: nn.Module, cfg: RunConfig, *, total_steps: int, world_size: int,
                 device: torch.device):
    """Wrap ``module`` in a DeepSpeed engine with warmup+cosine LR over ``total_steps``."""
    if device.type == "cpu":
        skip_cpu_shm_build()
    module.to(device)
    groups = param_groups(module, cfg.optim.weight_decay)
    client_optimizer = None
    if cfg.optim.name == "lars":
        client_optimizer = LARS(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                momentum=cfg.optim.momentum, eta=cfg.optim.lars_eta)
    schedule = WarmupCosine(total_steps, round(cfg.optim.warmup_frac * total_steps),
                            cfg.optim.min_lr_frac)

    def scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    engine, _, _, _ = deepspeed.initialize(
        model=module,
        model_parameters=groups if client_optimizer is None else None,
        optimizer=client_optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, world_size, device),
        dist_init_required=False,
    )
    if world_size == 1 and cfg.deepspeed.zero_stage == 0:
        # One rank has nothing to reduce; skipping DeepSpeed's flatten/all-reduce/unflatten of
        # every gradient saves a full copy of them per step (about 3% of a CPU step here).
        engine.enable_backward_allreduce = False
    return engine
