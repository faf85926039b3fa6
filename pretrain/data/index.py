"""Per-shard sample counts: from ``index.json`` beside the shards, else by scanning tar headers.

Counts must be identical on every rank (they drive the epoch plan), so they come either from the
index the writer left or from a deterministic scan that groups tar members into samples exactly
like ``webdataset.tariterators.group_by_keys``. Scans are cached per process, so a shard is
scanned at most once per process however many epochs are planned.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, meta_prefix, meta_suffix

from pretrain.data.errors import DataError
from pretrain.data.format import INDEX_FORMAT, INDEX_NAME
from pretrain.data.sources import SourceLike, expand_sources, local_path

# Same pattern webdataset's tar_file_iterator uses to drop metadata members.
_SKIP_META = re.compile(r"__[^/]*__($|/)")

_scan_cache: dict[tuple[str, int, int], int] = {}


@dataclass(frozen=True)
class ShardSet:
    """A resolved data source: shard URLs, their sample counts and the index metadata."""

    urls: list[str]
    counts: list[int]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Number of samples over all shards."""
        return sum(self.counts)


def _member_prefix(name: str) -> str | None:
    """The sample key a tar member belongs to, or ``None`` when webdataset would drop it."""
    if "/" not in name and name.startswith(meta_prefix) and name.endswith(meta_suffix):
        return None
    if _SKIP_META.match(name):
        return None
    prefix, _ = base_plus_ext(name)
    return prefix


def _count_members(tar: tarfile.TarFile) -> int:
    """Count samples as runs of consecutive members sharing a key (group_by_keys semantics)."""
    count = 0
    current: str | None = None
    for info in tar:
        if not info.isreg():
            continue
        prefix = _member_prefix(info.name)
        if prefix is None:
            continue
        if prefix != current:
            count += 1
            current = prefix
    return count


def scan_shard(url: str) -> int:
    """Number of samples in one shard, read from its tar headers (cached per process).

    Local shards are opened seekable so only headers are read; other URLs are streamed once.

    Raises:
        DataError: the shard cannot be opened or is not a valid tar (names the URL).
    """
    path = local_path(url)
    key: tuple[str, int, int]
    try:
        if path is not None:
            stat = path.stat()
            key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
            if key in _scan_cache:
                return _scan_cache[key]
            with tarfile.open(path, mode="r:") as tar:
                count = _count_members(tar)
        else:
            key = (url, -1, -1)
            if key in _scan_cache:
                return _scan_cache[key]
            stream = gopen(url, "rb")
            try:
                with tarfile.open(fileobj=stream, mode="r|*") as tar:
                    count = _count_members(tar)
            finally:
                stream.close()
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise DataError(f"cannot count samples of shard {url}: {exc}") from exc
    _scan_cache[key] = count
    return count


def read_index_file(location: str) -> dict[str, Any]:
    """Parse an ``index.json`` (local path or any URL webdataset can open).

    Raises:
        DataError: unreadable, not JSON, or not in this project's index format (names it).
    """
    try:
        path = local_path(location)
        if path is not None:
            text = path.read_text()
        else:
            stream = gopen(location, "rb")
            try:
                text = stream.read().decode()
            finally:
                stream.close()
        index = json.loads(text)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read shard index {location}: {exc}") from exc
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise DataError(f"shard index {location} is not in format {INDEX_FORMAT!r}")
    shards = index.get("shards")
    if not isinstance(shards, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("samples"), int)
        for s in shards
    ):
        raise DataError(f"shard index {location} has a malformed 'shards' list")
    return index


def _local_indices(urls: Sequence[str]) -> dict[Path, dict[str, Any]]:
    """The ``index.json`` files that sit beside local shards, by folder."""
    found: dict[Path, dict[str, Any]] = {}
    for url in urls:
        path = local_path(url)
        if path is None or path.parent in found:
            continue
        candidate = path.parent / INDEX_NAME
        if candidate.is_file():
            found[path.parent] = read_index_file(str(candidate))
    return found


def _listed(index: dict[str, Any]) -> dict[str, int]:
    """Shard name -> sample count of a parsed index."""
    return {s["name"]: s["samples"] for s in index["shards"]}


def shard_counts(urls: Sequence[str], index: str | None = None) -> tuple[list[int], dict[str, Any]]:
    """Sample count of every shard in ``urls``, plus the metadata of the index used.

    Counts come from ``index`` when given (a path or URL of an ``index.json``, for remote
    shard sets), else from the ``index.json`` beside local shards, else from scanning. A shard
    the index does not list is scanned. Metadata is the index's extra keys (e.g. ``classes``)
    from the first index found.
    """
    explicit = read_index_file(index) if index is not None else None
    folder_indices = _local_indices(urls) if explicit is None else {}
    by_folder = {folder: _listed(idx) for folder, idx in folder_indices.items()}
    counts = []
    for url in urls:
        path = local_path(url)
        name = path.name if path is not None else url.rstrip("/").rsplit("/", 1)[-1]
        if explicit is not None:
            listed = _listed(explicit)
        else:
            listed = by_folder.get(path.parent, {}) if path is not None else {}
        counts.append(listed[name] if name in listed else scan_shard(url))
    indices = [explicit] if explicit is not None else list(folder_indices.values())
    metadata = {k: v for k, v in indices[0].items() if k not in ("format", "shards")} if indices else {}
    return counts, metadata


def open_source(source: SourceLike, index: str | None = None) -> ShardSet:
    """Resolve a data source into shard URLs and counts, failing before training if it is bad.

    Raises:
        DataError: missing path, empty shard list, unreadable shard or index, or no samples
            at all (the message names the source).
    """
    urls = expand_sources(source)
    counts, metadata = shard_counts(urls, index=index)
    if sum(counts) == 0:
        raise DataError(f"data source {source} holds no samples")
    return ShardSet(urls=urls, counts=counts, metadata=metadata)
