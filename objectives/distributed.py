"""Cross-rank reductions that objectives need, in one place.

Objectives whose loss depends on batch statistics (variance, covariance, negatives) compute
those statistics on the embeddings of the *global* batch. :func:`gather_with_grad` collects
them from every rank of the default ``torch.distributed`` process group and lets gradients
flow back to the rank that produced each row. Without an initialised group (a laptop run,
a unit test) everything here degrades to the single-process identity.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and its default group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks in the default process group; 1 when no group is initialised."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the default process group; 0 when no group is initialised."""
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` + ``cat`` whose backward sums the gradient over ranks (see below)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        n_ranks = world_size()
        ctx.rank = rank()
        ctx.local_rows = x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(n_ranks)]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:  # type: ignore[override]
        # Clone: all_reduce works in place and autograd may still hold grad_output elsewhere.
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.local_rows
        return grad[start : start + ctx.local_rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients to every rank.

    Args:
        x: this rank's ``n x ...`` tensor. Every rank must pass the same shape and dtype
            (use ``drop_last`` in the loader); checking it would cost an extra collective and
            a host sync every step, so it is not checked.

    Returns:
        The ``(world_size * n) x ...`` tensor, rows ordered by rank; ``x`` itself (same
        object) when no process group is initialised or the world size is 1.

    Gradient convention (why the backward *sums*): every rank computes its loss ``L_r`` on the
    full gathered batch, so ``L_r`` depends on the rows of every rank ``k``. Rank ``k`` owns the
    parameters that produced rows ``k`` and needs ``sum_r dL_r/dz_k``; the backward therefore
    ``all_reduce(SUM)``s the incoming gradient of the gathered tensor and keeps this rank's
    slice. DDP / DeepSpeed then *average* parameter gradients over ranks, so the step follows
    ``d/dθ mean_r L_r``. For terms that are identical on every rank (a statistic of the gathered
    batch) ``mean_r L_r = L``, and the averaged gradient equals exactly the single-process
    gradient of ``L`` on the concatenated batch; ``tests/test_distributed_gather.py`` checks
    this on two gloo processes. Averaging instead of summing here, or skipping the reduction,
    would scale that gradient by ``1 / world_size``.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)
