"""gather_with_grad on 2 real gloo processes against the 1-process computation on the full batch."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from objectives.distributed import gather_with_grad, rank, world_size
from objectives.vicreg import covariance_term, variance_term, vicreg_loss

WORLD = 2
N, IN_DIM, EMB_DIM = 8, 6, 4


class _GatherWithoutReduce(torch.autograd.Function):
    """Deliberately wrong gather (test only): backward keeps only this rank's own gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def _model_and_data() -> tuple[nn.Module, Tensor, Tensor]:
    """Same parameters and full batch (two views) in every process."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN_DIM, 5), nn.Tanh(), nn.Linear(5, EMB_DIM)).double()
    g = torch.Generator().manual_seed(1)
    x_a = torch.randn(N, IN_DIM, generator=g, dtype=torch.float64)
    x_b = x_a + 0.3 * torch.randn(N, IN_DIM, generator=g, dtype=torch.float64)
    return model, x_a, x_b


def _averaged_grads(model: nn.Module) -> Tensor:
    """Flat parameter gradient averaged over ranks, as DDP / DeepSpeed average it."""
    flat = torch.cat([p.grad.flatten() for p in model.parameters()])
    if world_size() > 1:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world_size()
    return flat


def _local(x: Tensor) -> Tensor:
    rows = x.shape[0] // world_size()
    return x[rank() * rows : (rank() + 1) * rows]


def _varcov_case(gather: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
    model, x_a, _ = _model_and_data()
    z = gather(model(_local(x_a)))
    loss = variance_term(z) + covariance_term(z)
    loss.backward()
    return {"loss": loss.detach(), "grad": _averaged_grads(model)}


def _vicreg_case() -> dict[str, Tensor]:
    model, x_a, x_b = _model_and_data()
    out = vicreg_loss(model(_local(x_a)), model(_local(x_b)), gather=True)
    out["total"].backward()
    result = {k: v.detach() for k, v in out.items()}
    result["grad"] = _averaged_grads(model)
    return result


def _worker(rank_: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank_,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        results = {f"varcov/{k}": v for k, v in _varcov_case(gather_with_grad).items()}
        results |= {f"naive/{k}": v for k, v in _varcov_case(_GatherWithoutReduce.apply).items()}
        results |= {f"vicreg/{k}": v for k, v in _vicreg_case().items()}
        torch.save(results, Path(out_dir) / f"rank{rank_}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Tensor]]:
    tmp = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def test_single_process_is_identity() -> None:
    assert world_size() == 1 and rank() == 0
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


@pytest.mark.timeout(180)
def test_gathered_varcov_matches_single_process(two_rank_results: list[dict[str, Tensor]]) -> None:
    ref = _varcov_case(gather_with_grad)  # no process group here: full batch, identity gather
    for res in two_rank_results:
        assert res["varcov/loss"].item() == pytest.approx(ref["loss"].item(), rel=1e-12)
        torch.testing.assert_close(res["varcov/grad"], ref["grad"], rtol=0, atol=1e-5)
    assert ref["grad"].abs().max() > 1e-2  # the comparison is not between two zero vectors


@pytest.mark.timeout(180)
def test_backward_without_reduction_is_detected(two_rank_results: list[dict[str, Tensor]]) -> None:
    ref = _varcov_case(gather_with_grad)
    naive = two_rank_results[0]["naive/grad"]
    assert (naive - ref["grad"]).abs().max() > 1e-3
    # Dropping the other ranks' contributions scales the step by 1 / world size, as documented.
    torch.testing.assert_close(naive, ref["grad"] / WORLD, rtol=0, atol=1e-5)


@pytest.mark.timeout(180)
def test_vicreg_loss_matches_single_process(two_rank_results: list[dict[str, Tensor]]) -> None:
    model, x_a, x_b = _model_and_data()
    ref = vicreg_loss(model(x_a), model(x_b))
    ref["total"].backward()
    ref_grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    for res in two_rank_results:
        # Gathered statistics are identical on every rank.
        assert res["vicreg/variance"].item() == pytest.approx(ref["variance"].item(), rel=1e-12)
        assert res["vicreg/covariance"].item() == pytest.approx(ref["covariance"].item(), rel=1e-12)
        torch.testing.assert_close(res["vicreg/grad"], ref_grad, rtol=0, atol=1e-5)
    # Invariance is local; its mean over ranks (what DDP optimises) is the full-batch value.
    for key in ("invariance", "total"):
        mean = sum(res[f"vicreg/{key}"] for res in two_rank_results) / WORLD
        assert mean.item() == pytest.approx(ref[key].item(), rel=1e-12)
