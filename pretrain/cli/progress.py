"""Progress for CLI commands: a rich bar on an interactive stderr, else plain lines
(``pretrain.progress.progress_lines``), usable as a ``progress(done, total, stage="")`` callback.
Both go to stderr, so a command's stdout stays its result."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pretrain.progress import Progress as ProgressCallback
from pretrain.progress import progress_lines


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[ProgressCallback]:
    if not sys.stderr.isatty():
        yield progress_lines(description)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int, stage: str = "") -> None:
            label = f"{description}: {stage}" if stage else description
            bar.update(task, completed=done, total=total, description=label)

        yield update
