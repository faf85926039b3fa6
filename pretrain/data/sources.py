"""Where samples come from: expanding shard patterns into URLs and streaming a shard's samples.

A *source* is a folder (its ``*.tar`` files, sorted), a single ``.tar`` path, a glob, a
brace pattern such as ``data/train-{000000..000009}.tar`` or any URL webdataset can open
(``file:``, ``pipe:``, ``http(s)://``, ...), or a list of those. Local paths are checked up
front so a typo fails before training starts; remote URLs can only fail when opened.
"""

from __future__ import annotations

import glob
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import braceexpand
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

from pretrain.data.errors import DataError

SourceLike = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def local_path(url: str) -> Path | None:
    """The filesystem path behind ``url`` (plain path or ``file:`` URL), else ``None``.

    Mirrors how ``webdataset.gopen`` maps ``file:`` URLs so the checked path is the opened one.
    """
    parsed = urlparse(url)
    if parsed.scheme == "":
        return Path(url)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    # A one-letter scheme is a Windows drive letter, not a URL scheme.
    if len(parsed.scheme) == 1:
        return Path(url)
    return None


def _expand_one(source: str) -> list[str]:
    """Expand one folder / file / glob / brace pattern / URL into shard URLs."""
    if "{" in source and "}" in source:
        return list(braceexpand.braceexpand(source))
    path = local_path(source)
    if path is None:
        return [source]
    if path.is_dir():
        shards = sorted(str(p) for p in path.glob("*.tar") if p.is_file())
        if not shards:
            raise DataError(f"no .tar shards in data folder {path}")
        return shards
    if any(ch in str(path) for ch in "*?["):
        matches = sorted(glob.glob(str(path)))
        if not matches:
            raise DataError(f"no shards match data path pattern {source}")
        return matches
    return [source]


def expand_sources(source: SourceLike) -> list[str]:
    """Ordered shard URLs for ``source`` (a folder, pattern, URL, or a list of them).

    Raises:
        DataError: the source is empty, a local path does not exist, or a folder holds no
            ``.tar`` files. The message names the offending path.
    """
    items: list[str]
    if isinstance(source, (str, os.PathLike)):
        items = [os.fspath(source)]
    else:
        items = [os.fspath(s) for s in source]
    if not items:
        raise DataError("empty shard list: no data source given")
    urls: list[str] = []
    for item in items:
        if not item.strip():
            raise DataError("empty data path given as a shard source")
        urls.extend(_expand_one(item))
    validate_sources(urls)
    return urls


def validate_sources(urls: Sequence[str]) -> None:
    """Fail early on an empty shard list or a local shard that is not a readable file.

    Remote URLs are accepted as they are; they fail when opened.

    Raises:
        DataError: naming the missing path(s).
    """
    if not urls:
        raise DataError("empty shard list: the data source expanded to no shards")
    missing = []
    for url in urls:
        path = local_path(url)
        if path is not None and not path.is_file():
            missing.append(str(path))
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DataError(f"data path not found: {', '.join(missing[:3])}{more}")


def iter_shard(url: str, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples ``start:stop`` of one shard, grouped by key exactly as webdataset does.

    Each sample is a dict ``{"__key__", "__url__", <ext>: bytes, ...}``; nothing is decoded.
    Samples before ``start`` are read past (their bytes pass through the tar reader) but not
    returned. The shard stream is closed as soon as ``stop`` is reached.

    Raises:
        DataError: the shard cannot be opened or its tar stream is broken (names the URL).
    """
    if stop is not None and stop <= start:
        return
    opened: dict[str, Any] | None = None
    finished = False
    try:
        opened = next(url_opener([{"url": url}]))
        samples = group_by_keys(tar_file_expander([opened]))
        for position, sample in enumerate(samples):
            if position < start:
                continue
            yield sample
            if stop is not None and position + 1 >= stop:
                return
        finished = True
        opened["stream"].close()  # at the natural end a failing pipe's exit status is an error
    except (OSError, ValueError, EOFError, KeyError, tarfile.TarError) as exc:
        raise DataError(f"cannot read shard {url}: {exc}") from exc
    finally:
        if opened is not None and not finished:
            _close_quietly(opened["stream"])


def _close_quietly(stream: Any) -> None:
    """Close a shard stream; a pipe closed before its end reports SIGPIPE, which is expected."""
    try:
        stream.close()
    except Exception:  # noqa: BLE001 - an early-closed pipe's exit status is not a data error
        pass
