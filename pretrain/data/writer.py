"""Write webdataset shards plus the ``index.json`` that lets readers plan without scanning."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from pretrain.data.format import INDEX_FORMAT, INDEX_NAME


class ShardSetWriter:
    """Writes samples into ``{prefix}-{n:06d}.tar`` files of at most ``shard_size`` samples.

    Use as a context manager; ``index.json`` is written on a clean exit only, so an interrupted
    write never leaves an index that claims more than the tars hold. Each tar is written to a
    temporary name and renamed when complete.
    """

    def __init__(self, out_dir: str | Path, shard_size: int = 1000, prefix: str = "shard",
                 metadata: dict[str, Any] | None = None) -> None:
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self.out_dir = Path(out_dir)
        self.shard_size = shard_size
        self.prefix = prefix
        self.metadata = dict(metadata or {})
        self.counts: list[tuple[str, int]] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp_path: Path | None = None
        self._in_shard = 0

    def __enter__(self) -> "ShardSetWriter":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, key: str, files: dict[str, bytes]) -> None:
        """Add one sample: ``files`` maps extension (``"png"``, ``"cls"``, ...) to bytes."""
        if "." in key:
            raise ValueError(f"sample key {key!r} must not contain '.' (webdataset splits on it)")
        if self._tar is None or self._in_shard >= self.shard_size:
            self._close_shard()
            self._open_shard()
        assert self._tar is not None
        mtime = 0  # fixed, so the same samples give byte-identical shards
        for ext, payload in files.items():
            info = tarfile.TarInfo(name=f"{key}.{ext}")
            info.size = len(payload)
            info.mtime = mtime
            self._tar.addfile(info, io.BytesIO(payload))
        self._in_shard += 1

    def _open_shard(self) -> None:
        name = f"{self.prefix}-{len(self.counts):06d}.tar"
        self._tmp_path = self.out_dir / (name + ".partial")
        self._tar = tarfile.open(self._tmp_path, "w", format=tarfile.USTAR_FORMAT)
        self.counts.append((name, 0))
        self._in_shard = 0

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        name, _ = self.counts[-1]
        self.counts[-1] = (name, self._in_shard)
        assert self._tmp_path is not None
        self._tmp_path.rename(self.out_dir / name)
        self._tar = None

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close_shard()
        if exc_type is not None:
            return
        index = {
            "format": INDEX_FORMAT,
            "shards": [{"name": n, "samples": c} for n, c in self.counts],
            **self.metadata,
        }
        (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=1))
