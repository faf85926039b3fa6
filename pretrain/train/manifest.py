"""A checkpoint's manifest: every file's relative path, size and SHA-256, written last.

The manifest decides whether a checkpoint folder is complete and intact: a crash while writing
leaves no manifest; a truncated, replaced or added file no longer matches it. It detects damage,
not tampering: whoever can write the files can write the manifest too, which is why loading
never unpickles (see :mod:`pretrain.train.checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MANIFEST_NAME = "manifest.json"
FORMAT = 1
_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A manifest that cannot be trusted to describe its folder (one-line message)."""


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    step: int
    files: Mapping[str, FileEntry]

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "step": self.step,
                           "files": {p: {"sha256": e.sha256, "bytes": e.bytes}
                                     for p, e in sorted(self.files.items())}},
                          indent=1).encode()

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Read a manifest written by :meth:`to_json`; anything else raises ManifestError."""
        try:
            raw = json.loads(data)
            if raw["format"] != FORMAT:
                raise ManifestError(f"manifest format {raw['format']!r} is not {FORMAT}")
            step, files = raw["step"], raw["files"]
            if not isinstance(step, int) or not isinstance(files, dict) or not files:
                raise ManifestError("manifest has no step or no files")
            entries = {}
            for path, entry in files.items():
                digest, size = entry["sha256"], entry["bytes"]
                if not (isinstance(digest, str) and len(digest) == 64
                        and all(c in "0123456789abcdef" for c in digest)):
                    raise ManifestError(f"manifest entry {path!r} has no SHA-256")
                if not isinstance(size, int) or size < 0:
                    raise ManifestError(f"manifest entry {path!r} has no size")
                entries[check_relative(path)] = FileEntry(digest, size)
        except ManifestError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ManifestError(f"manifest is not valid ({type(err).__name__}: {err})") from None
        return cls(step, entries)


def check_relative(path: str) -> str:
    """``path`` if it is a plain relative POSIX path inside the folder (no ``..``, not absolute,
    not the manifest itself): a manifest from storage must not point anywhere else."""
    pure = PurePosixPath(path)
    if (not path or pure.is_absolute() or "\\" in path or path != pure.as_posix()
            or any(part in ("", ".", "..") for part in pure.parts) or path == MANIFEST_NAME):
        raise ManifestError(f"manifest entry {path!r} is not a relative path inside the folder")
    return path


def hash_file(path: Path) -> FileEntry:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(digest.hexdigest(), size)


def hash_folder(root: Path) -> dict[str, FileEntry]:
    """Entries for every file below ``root`` (relative POSIX paths), the manifest excluded."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): hash_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_NAME}


def merge(parts: Iterable[Mapping[str, FileEntry]]) -> dict[str, FileEntry]:
    """One file list from every rank's own; a path two ranks wrote differently is an error."""
    merged: dict[str, FileEntry] = {}
    for part in parts:
        for path, entry in part.items():
            if merged.setdefault(path, entry) != entry:
                raise ValueError(f"two ranks wrote different {path} into one checkpoint")
    return merged


def selected(manifest: Manifest, prefixes: Sequence[str] | None) -> list[str]:
    """The manifest's paths that start with one of ``prefixes`` (None: all)."""
    return sorted(p for p in manifest.files
                  if prefixes is None or any(p.startswith(prefix) for prefix in prefixes))


def check_listing(manifest: Manifest, listing: Mapping[str, int]) -> None:
    """The folder holds exactly the manifest's files, each of its recorded size (cheap: no
    hashing), so nothing unlisted can be read and a truncated file is caught at once.

    Raises:
        ManifestError: naming the first file that differs."""
    for path, entry in sorted(manifest.files.items()):
        if path not in listing:
            raise ManifestError(f"{path} is missing")
        if listing[path] != entry.bytes:
            raise ManifestError(f"{path} has {listing[path]} bytes, the manifest says {entry.bytes}")
    extra = sorted(set(listing) - set(manifest.files) - {MANIFEST_NAME})
    if extra:
        raise ManifestError(f"{extra[0]} is not in the manifest")


def check_hashes(root: Path, manifest: Manifest, prefixes: Sequence[str] | None = None) -> None:
    """Every selected file under the local folder ``root`` has its recorded SHA-256.

    Raises:
        ManifestError: naming the first file that differs."""
    for path in selected(manifest, prefixes):
        local = Path(root) / path
        if not local.is_file():
            raise ManifestError(f"{path} is missing")
        if hash_file(local) != manifest.files[path]:
            raise ManifestError(f"{path}: SHA-256 does not match the manifest")
