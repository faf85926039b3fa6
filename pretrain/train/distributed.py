"""Process-group set-up for code that runs outside Ray Train (benchmarks, single-process tools)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import torch.distributed as dist


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_process_group(backend: str = "gloo") -> bool:
    """Start a 1-process group on loopback when none exists (DeepSpeed needs one).

    Returns True when this call created it (the caller then destroys it)."""
    if dist.is_initialized():
        return False
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    dist.init_process_group(backend, rank=0, world_size=1)
    return True


def destroy_process_group() -> None:
    """Destroy the default group through DeepSpeed when it has seen it: DeepSpeed keeps a clone
    of the world group that a plain ``torch.distributed.destroy_process_group`` leaves stale, and
    the next engine built in this process would then fail on the unregistered clone."""
    from deepspeed.comm import comm as ds_comm

    if ds_comm.cdb is not None:
        ds_comm.destroy_process_group()
    else:
        dist.destroy_process_group()


@contextlib.contextmanager
def single_process_group(backend: str = "gloo") -> Iterator[None]:
    """A 1-process group for the block (DeepSpeed needs one), destroyed after if created here."""
    created = ensure_process_group(backend)
    try:
        yield
    finally:
        if created:
            destroy_process_group()
