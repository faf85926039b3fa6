"""The Ray Train side of the training loop's ``Reporter`` protocol."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import ray.train


def checkpoint_dir_name(step: int) -> str:
    """Zero-padded so that names sort by step."""
    return f"checkpoint_{step:09d}"


class RayReporter:
    """Checkpoints go through ``ray.train.report``: every rank uploads its files into one
    checkpoint folder, and Ray records the checkpoint only once all ranks are done, so resume
    never sees a half-written one."""

    @contextlib.contextmanager
    def restore_dir(self) -> Iterator[Path | None]:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as local:
            yield Path(local)

    def report(self, step: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)),
                         checkpoint_dir_name=checkpoint_dir_name(step))
