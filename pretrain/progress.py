"""Progress for long waits, as plain lines: ``label: 120/480 (25%) stage, 12s elapsed, ETA 36s``.

Every long step (rendering synthetic data, the probe suite, finetuning) takes a
``progress(done, total, stage="")`` callback. ``progress_lines`` is the one that prints: plain
lines on stderr, at most one every ``every_s`` seconds plus the last one, so they read well in a
terminal, a Ray job log and CI alike (``pretrain.cli.progress`` draws a bar instead when stderr is
a terminal).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO


class Progress(Protocol):
    def __call__(self, done: int, total: int, stage: str = "") -> None: ...


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_lines(label: str, every_s: float = 5.0, stream: TextIO | None = None,
                   clock: Callable[[], float] = time.monotonic) -> Progress:
    """A ``progress(done, total, stage)`` callback printing throttled lines with an ETA (from
    the average rate so far)."""
    start = clock()
    last = [-float("inf")]

    def update(done: int, total: int, stage: str = "") -> None:
        now = clock()
        finished = total > 0 and done >= total
        if not finished and now - last[0] < every_s:
            return
        last[0] = now
        elapsed = now - start
        line = f"{label}: {done}/{total}" if total > 0 else f"{label}: {done}"
        if total > 0:
            line += f" ({100 * done / total:.0f}%)"
        if stage:
            line += f" {stage}"
        line += f", {_duration(elapsed)} elapsed"
        if finished:
            line += ", done"
        elif total > 0 and done > 0:
            line += f", ETA {_duration(elapsed / done * (total - done))}"
        print(line, file=stream or sys.stderr, flush=True)

    return update
