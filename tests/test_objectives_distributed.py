"""Gathered-batch losses (SimCLR/E-SSL, CARE, SIE) on 2 gloo processes against 1 process on the full
batch: same loss (mean over ranks) and same rank-averaged gradient."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from objectives.care import care_equivariance_loss
from objectives.distributed import rank, world_size
from objectives.sie import hypernetwork_predict, sie_loss
from objectives.simclr import nt_xent_loss

WORLD = 2
N, IN_DIM, EMB_DIM = 8, 6, 5
INV = 3  # SIE: the first 3 embedding dims are invariant, the last 2 equivariant


def _model_and_data() -> tuple[nn.Module, Tensor, Tensor, Tensor, Tensor]:
    """Same parameters and full batch (two views, actions, chunk ids) in every process."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN_DIM, 7), nn.Tanh(), nn.Linear(7, EMB_DIM)).double()
    model.basis = nn.Parameter(torch.randn(4, EMB_DIM - INV, EMB_DIM - INV, dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    x_a = torch.randn(N, IN_DIM, generator=g, dtype=torch.float64)
    x_b = x_a + 0.3 * torch.randn(N, IN_DIM, generator=g, dtype=torch.float64)
    actions = torch.randn(N, 4, generator=g, dtype=torch.float64)
    chunks = torch.arange(N) // 2  # chunks of 2 rows, never across ranks
    return model, x_a, x_b, actions, chunks


def _local(x: Tensor) -> Tensor:
    rows = x.shape[0] // world_size()
    return x[rank() * rows : (rank() + 1) * rows]


def _averaged_grads(model: nn.Module) -> Tensor:
    flat = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros_like(p).flatten()
                      for p in model.parameters()])
    if world_size() > 1:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world_size()
    return flat


def _simclr_case() -> dict[str, Tensor]:
    model, x_a, x_b, _, _ = _model_and_data()
    loss = nt_xent_loss(model(_local(x_a)), model(_local(x_b)), temperature=0.5)
    loss.backward()
    return {"loss": loss.detach(), "grad": _averaged_grads(model)}


def _care_case() -> dict[str, Tensor]:
    model, x_a, x_b, _, chunks = _model_and_data()
    z_a, z_b = model(_local(x_a)), model(_local(x_b))
    # The chunk pair is played by the same two views here; chunk ids are rank-local.
    local_chunks = _local(chunks) - _local(chunks).min()
    loss = nt_xent_loss(z_a, z_b) + 0.03 * care_equivariance_loss(z_a, z_b, local_chunks)
    loss.backward()
    return {"loss": loss.detach(), "grad": _averaged_grads(model)}


def _sie_case() -> dict[str, Tensor]:
    model, x_a, x_b, actions, _ = _model_and_data()
    z_a, z_b = model(_local(x_a)), model(_local(x_b))
    prediction = hypernetwork_predict(z_a[:, INV:], _local(actions), model.basis)
    out = sie_loss(z_a[:, :INV], z_b[:, :INV], z_a[:, INV:], z_b[:, INV:], prediction)
    out["total"].backward()
    return {**{k: v.detach() for k, v in out.items()}, "grad": _averaged_grads(model)}


CASES = {"simclr": _simclr_case, "care": _care_case, "sie": _sie_case}


def _worker(rank_: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank_,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        results = {f"{name}/{k}": v for name, case in CASES.items() for k, v in case().items()}
        torch.save(results, Path(out_dir) / f"rank{rank_}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Tensor]]:
    tmp = tmp_path_factory.mktemp("gloo-objectives")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def _mean(results: list[dict[str, Tensor]], key: str) -> float:
    return float(sum(r[key] for r in results) / len(results))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", ["simclr", "care"])
def test_contrastive_losses_match_the_full_batch(two_ranks: list[dict[str, Tensor]], name: str) -> None:
    ref = CASES[name]()  # no process group: the full batch, identity gather
    assert _mean(two_ranks, f"{name}/loss") == pytest.approx(ref["loss"].item(), rel=1e-12)
    # Each rank alone sees different anchors: the local values differ, only their mean matches.
    assert two_ranks[0][f"{name}/loss"].item() != pytest.approx(two_ranks[1][f"{name}/loss"].item())
    for res in two_ranks:
        torch.testing.assert_close(res[f"{name}/grad"], ref["grad"], rtol=0, atol=1e-10)
    assert ref["grad"].abs().max() > 1e-3


@pytest.mark.timeout(180)
def test_sie_loss_matches_the_full_batch(two_ranks: list[dict[str, Tensor]]) -> None:
    ref = _sie_case()
    for res in two_ranks:
        for key in ("variance", "pred_variance", "covariance"):  # gathered: equal on every rank
            assert res[f"sie/{key}"].item() == pytest.approx(ref[key].item(), rel=1e-12)
        torch.testing.assert_close(res["sie/grad"], ref["grad"], rtol=0, atol=1e-10)
    for key in ("invariance", "equivariance", "total"):  # local: the mean over ranks matches
        assert _mean(two_ranks, f"sie/{key}") == pytest.approx(ref[key].item(), rel=1e-12)
    assert ref["grad"].abs().max() > 1e-3
