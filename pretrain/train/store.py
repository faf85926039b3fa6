"""A run's checkpoint folders in storage (a local folder or S3, through a pyarrow filesystem).

Layout: ``<run>/checkpoint_<step:09d>/`` holding the files of :mod:`pretrain.train.checkpoint`
and, written last, :data:`~pretrain.train.manifest.MANIFEST_NAME`. A folder is a checkpoint only
when its manifest lists exactly the files it holds, with their sizes and hashes; anything else
(a crash mid-upload, a truncated or planted file) is skipped with a reason, and resume falls back
to the next older folder. No index file lists the checkpoints, so deleting or damaging one never
makes the others unusable.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from pretrain.train.manifest import (MANIFEST_NAME, Manifest, ManifestError, check_hashes,
                                     check_listing, selected)

_NAME = re.compile(r"^checkpoint_(\d{9})$")


def checkpoint_dir_name(step: int) -> str:
    """Zero-padded so that names sort by step."""
    return f"checkpoint_{step:09d}"


def step_of(name: str) -> int | None:
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


class CheckpointRejected(Exception):
    """A checkpoint folder that is incomplete or damaged; ``str()`` is one line with the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class Found:
    """A verified checkpoint: its folder name and a local path holding (at least) the files that
    were checked."""

    name: str
    path: Path

    @property
    def step(self) -> int:
        return step_of(self.name) or 0


@dataclass(frozen=True)
class CheckpointStore:
    """The checkpoint folders under ``root`` (a path in ``filesystem``'s own spelling)."""

    filesystem: pafs.FileSystem
    root: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def path(self, name: str, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), name, *parts])

    def names(self) -> list[str]:
        """Checkpoint folder names, oldest first."""
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        names = [i.base_name for i in infos
                 if i.type == pafs.FileType.Directory and step_of(i.base_name) is not None]
        return sorted(names, key=lambda n: step_of(n) or 0)

    # --- reading --------------------------------------------------------------------------

    def manifest(self, name: str) -> Manifest:
        """The folder's manifest, checked against the folder's listing (sizes, no extra file).

        Raises:
            CheckpointRejected: no manifest (an incomplete checkpoint) or one that does not match."""
        path = self.path(name, MANIFEST_NAME)
        if self.filesystem.get_file_info(path).type != pafs.FileType.File:
            raise CheckpointRejected(name, "no manifest (incomplete checkpoint)")
        # Other read errors (storage unreachable) propagate: they say nothing about the folder.
        with self.filesystem.open_input_stream(path) as handle:
            data = handle.read()
        try:
            manifest = Manifest.parse(data)
            if manifest.step != step_of(name):
                raise ManifestError(f"manifest says step {manifest.step}")
            check_listing(manifest, self._listing(name))
        except ManifestError as err:
            raise CheckpointRejected(name, str(err)) from None
        return manifest

    def _listing(self, name: str) -> dict[str, int]:
        base = self.path(name)
        infos = self.filesystem.get_file_info(pafs.FileSelector(base, recursive=True,
                                                                allow_not_found=True))
        return {i.path[len(base) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}

    @contextlib.contextmanager
    def open_checked(self, name: str, prefixes: Sequence[str] | None = None) -> Iterator[Path]:
        """A local folder holding checkpoint ``name``'s files that start with one of
        ``prefixes`` (None: all), each verified against the manifest. Local storage is checked
        in place; remote files are downloaded into a temporary folder first, so the bytes that
        were hashed are the bytes that get read.

        Raises:
            CheckpointRejected: the folder is incomplete or a file does not match."""
        manifest = self.manifest(name)
        with contextlib.ExitStack() as stack:
            if self.is_local:
                local = Path(self.path(name))
            else:
                local = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pretrain-ckpt-")))
                for rel in selected(manifest, prefixes):
                    (local / rel).parent.mkdir(parents=True, exist_ok=True)
                    pafs.copy_files(self.path(name, rel), str(local / rel),
                                    source_filesystem=self.filesystem,
                                    destination_filesystem=pafs.LocalFileSystem())
            try:
                check_hashes(local, manifest, prefixes)
            except ManifestError as err:
                raise CheckpointRejected(name, str(err)) from None
            yield local

    @contextlib.contextmanager
    def newest(self, prefixes: Sequence[str] | None = None,
               on_skip: Callable[[CheckpointRejected], None] | None = None) -> Iterator[Found | None]:
        """The newest checkpoint whose selected files verify (None: none does); each newer one
        that fails is passed to ``on_skip``."""
        for name in reversed(self.names()):
            stack = contextlib.ExitStack()
            try:
                local = stack.enter_context(self.open_checked(name, prefixes))
            except CheckpointRejected as rejected:
                if on_skip is not None:
                    on_skip(rejected)
                continue
            with stack:
                yield Found(name, local)
            return
        yield None

    def complete(self, name: str) -> bool:
        """Cheap check (manifest + listing + sizes, no hashing)."""
        try:
            self.manifest(name)
        except CheckpointRejected:
            return False
        return True

    # --- writing --------------------------------------------------------------------------

    def upload(self, local_dir: Path, name: str) -> None:
        """Copy the files under ``local_dir`` into folder ``name`` (ranks upload side by side)."""
        self.filesystem.create_dir(self.path(name), recursive=True)
        pafs.copy_files(str(local_dir), self.path(name), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.filesystem)

    def publish(self, name: str, manifest: Manifest) -> None:
        """Write the manifest, after every file is in place, so that it appears whole or not at
        all: locally by renaming a finished temporary file, on S3 as one object (an object
        becomes visible only when its upload completes)."""
        final = self.path(name, MANIFEST_NAME)
        target = f"{final}.{uuid.uuid4().hex}.tmp" if self.is_local else final
        with self.filesystem.open_output_stream(target) as out:
            out.write(manifest.to_json())
        if target != final:
            self.filesystem.move(target, final)

    def remove(self, name: str) -> None:
        if self.filesystem.get_file_info(self.path(name)).type != pafs.FileType.NotFound:
            self.filesystem.delete_dir(self.path(name))

    def prune(self, keep: int, written: str | None = None) -> list[str]:
        """Keep the ``keep`` newest complete checkpoints; delete every older folder, complete or
        not (crash leftovers). Folders newer than the newest complete one are left alone.
        Returns the deleted names.

        ``written``: the checkpoint just written. Folders newer than it are ones that resume
        skipped (damaged, or refused to unpickle) before this run went back to an older step;
        they are left alone and never counted as kept, or the ``keep`` newest "complete" folders
        would be those and the checkpoint just written would be deleted at once."""
        limit = step_of(written) if written is not None else None
        names = [n for n in self.names() if limit is None or (step_of(n) or 0) <= limit]
        complete = [n for n in names if self.complete(n)]
        if not complete:
            return []
        kept = set(complete[-keep:])
        newest = step_of(complete[-1]) or 0
        doomed = [n for n in names if n not in kept and (step_of(n) or 0) < newest]
        for name in doomed:
            self.remove(name)
        return doomed


def local_store(path: str | Path) -> CheckpointStore:
    """The store of a run folder on the local filesystem (made absolute)."""
    return CheckpointStore(pafs.LocalFileSystem(), str(Path(path).expanduser().resolve()))
