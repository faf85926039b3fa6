"""Checkpoint and resume across ranks, on top of :mod:`pretrain.train.store`.

Saving: each rank writes its files locally, hashes them and uploads them into the step's folder;
after every rank is done, rank 0 writes the manifest (last, atomically) and prunes old folders.
Resuming: all ranks walk the folders newest first and load the first one that every rank could
verify (manifest, hashes) and unpickle the safe way, so they always agree; each skipped folder is
logged once with its reason. Nothing depends on an orchestrator having registered a checkpoint:
a checkpoint is usable as soon as its manifest exists.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.train import checkpoint
from pretrain.train.manifest import FileEntry, Manifest, hash_folder, merge
from pretrain.train.store import (CheckpointRejected, CheckpointStore, Found,
                                  checkpoint_dir_name)

log = logging.getLogger("pretrain.train")


def _distributed(world_size: int) -> bool:
    return world_size > 1 and dist.is_initialized()


def _rank0_value(value, world_size: int, device: torch.device):
    """Rank 0's ``value`` on every rank (a list of names: ranks must walk the same folders)."""
    if not _distributed(world_size):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=device)
    return box[0]


def _all_objects(value, world_size: int) -> list:
    if not _distributed(world_size):
        return [value]
    out: list = [None] * world_size
    dist.all_gather_object(out, value)
    return out


def _all_flags(ok: bool, world_size: int, device: torch.device) -> list[bool]:
    if not _distributed(world_size):
        return [ok]
    mine = torch.tensor([int(ok)], dtype=torch.int32, device=device)
    every = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(every, mine)
    return [bool(t.item()) for t in every]


@contextlib.contextmanager
def newest_loadable(store: CheckpointStore, *, rank: int, world_size: int,
                    device: torch.device) -> Iterator[Found | None]:
    """The newest checkpoint that every rank verified and could unpickle safely (None: none),
    as a local folder that lives as long as the block."""
    names = _rank0_value(list(reversed(store.names())), world_size, device)
    for name in names:
        stack = contextlib.ExitStack()
        reason = None
        try:
            local = stack.enter_context(store.open_checked(name))
            checkpoint.check_loadable(local)
        except CheckpointRejected as err:
            reason = err.reason
        except checkpoint.UnsafeCheckpointError as err:
            reason = str(err)
        verdicts = _all_flags(reason is None, world_size, device)
        if all(verdicts):
            with stack:
                yield Found(name, local)
            return
        stack.close()
        if rank == 0:
            failed = [r for r, ok in enumerate(verdicts) if not ok]
            log.warning("resume: skipping %s: %s", name,
                        reason or f"rank(s) {failed} could not verify it (see their log)")
        elif reason is not None and verdicts[0]:
            log.warning("resume: rank %d skipping %s: %s", rank, name, reason)
    if names and rank == 0:
        log.warning("resume: none of the %d checkpoint folder(s) verified; starting from step 0",
                    len(names))
    yield None


def save(store: CheckpointStore, engine, state: checkpoint.TrainState, *, rank: int,
         world_size: int, device: torch.device, keep: int,
         extras: Callable[[Path], None] = lambda out: None) -> str:
    """Write the checkpoint of ``state.step`` (``extras`` adds this rank's own files, e.g. the
    encoder on rank 0); returns its folder name. Collective: every rank calls it."""
    name = checkpoint_dir_name(state.step)
    if rank == 0:
        # A folder of this step can only be one that did not verify when this run resumed
        # (resume takes the newest that does): its files must not mix with the new ones.
        store.remove(name)
    if _distributed(world_size):
        dist.barrier()
    with tempfile.TemporaryDirectory(prefix=f"pretrain-ckpt-r{rank}-") as tmp:
        out = Path(tmp)
        checkpoint.save(engine, state, out)
        extras(out)
        files = {path: (e.sha256, e.bytes) for path, e in hash_folder(out).items()}
        store.upload(out, name)
    parts = _all_objects(files, world_size)  # also: every rank's upload has finished
    if rank == 0:
        merged = merge({p: FileEntry(*e) for p, e in part.items()} for part in parts)
        store.publish(name, Manifest(state.step, merged))
        for old in store.prune(keep, written=name):
            log.info("deleted old checkpoint %s (checkpoint.keep=%d)", old, keep)
    return name
