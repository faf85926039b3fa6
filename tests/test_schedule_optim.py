"""LR schedule and LARS against direct computations."""

import math

import pytest
import torch

from pretrain.train.optim import LARS, param_groups
from pretrain.train.schedule import warmup_cosine_factor
from pretrain.train.seeding import derive_seed


def test_warmup_is_linear_and_cosine_ends_at_min():
    total, warm, floor = 100, 10, 0.1
    assert [warmup_cosine_factor(s, total, warm, floor) for s in range(3)] == [0.1, 0.2, 0.3]
    assert warmup_cosine_factor(9, total, warm, floor) == pytest.approx(1.0)
    assert warmup_cosine_factor(10, total, warm, floor) == pytest.approx(1.0)
    assert warmup_cosine_factor(total - 1, total, warm, floor) == pytest.approx(floor)
    mid = 10 + (total - warm - 1) / 2
    assert warmup_cosine_factor(int(mid), total, warm, floor) == pytest.approx(
        floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 89)))
    factors = [warmup_cosine_factor(s, total, warm, floor) for s in range(warm, total)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_param_groups_split_1d_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    groups = param_groups(model, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert groups[1]["lars_exclude"]


def test_lars_matches_direct_update():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(torch.randn(5))
    lr, wd, mom, eta = 0.1, 1e-3, 0.9, 0.02
    opt = LARS([{"params": [w], "weight_decay": wd, "lars_exclude": False},
                {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=lr, momentum=mom, eta=eta)
    w_ref, b_ref = w.detach().clone(), b.detach().clone()
    mw, mb = torch.zeros_like(w_ref), torch.zeros_like(b_ref)
    for _ in range(3):
        gw, gb = torch.randn(5, 3), torch.randn(5)
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        u = gw + wd * w_ref
        ratio = eta * w_ref.norm() / u.norm()
        mw = mom * mw + ratio * u
        w_ref = w_ref - lr * mw
        mb = mom * mb + gb
        b_ref = b_ref - lr * mb
    torch.testing.assert_close(w.detach(), w_ref)
    torch.testing.assert_close(b.detach(), b_ref)


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "augment", 5, 1) == derive_seed(0, "augment", 5, 1)
    seeds = {derive_seed(0, "augment", step, rank) for step in range(50) for rank in range(4)}
    assert len(seeds) == 200
