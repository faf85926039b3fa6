"""Import a folder of images into a shard set.

Two layouts: one subfolder per class (classes are the sorted subfolder names, their index is the
``cls`` label) or a flat folder of unlabeled images. JPEG and PNG files are stored byte for byte;
other formats are re-encoded to PNG. With ``image_size`` every image is resized (shorter side,
center crop, as the reader does) and re-encoded in its own format (JPEG stays JPEG). Files that
cannot be read (I/O errors included) or that PIL cannot decode are skipped and reported. The order
is sorted, so an import is reproducible.

Nothing half-written is ever left under the output name: the shards and ``index.json`` are
written into a hidden temporary folder beside it, which is renamed into place only when the import
is complete (and removed when it fails), so a failed import can simply be run again.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from pretrain.data.decode import BadSample, decode_image
from pretrain.data.errors import DataError
from pretrain.data.format import CLASS_KEY, INDEX_NAME
from pretrain.data.writer import ShardSetWriter

_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png"}
MAX_REPORTED = 20


@dataclass
class ImportReport:
    """What an import wrote and what it skipped.

    Attributes:
        out_dir: the shard folder written.
        shards: number of ``.tar`` shards written.
        samples: images written.
        classes: class names in label order (empty for a flat, unlabeled folder).
        reencoded: images stored re-encoded (other formats, or resized) rather than byte for byte.
        unreadable: files skipped because they are not readable images.
        unreadable_files: ``(path, reason)`` of the first ``MAX_REPORTED`` skipped files.
    """

    out_dir: Path
    shards: int
    samples: int
    classes: list[str]
    reencoded: int = 0
    unreadable: int = 0
    unreadable_files: list[tuple[str, str]] = field(default_factory=list)


def _files(folder: Path) -> list[Path]:
    """Regular, non-hidden files under ``folder``, sorted by relative path."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _layout(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and ``(file, label)`` pairs; label ``-1`` for a flat folder."""
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        return [], [(p, -1) for p in _files(folder)]
    classes = [d.name for d in class_dirs]
    return classes, [(p, label) for label, d in enumerate(class_dirs) for p in _files(d)]


def _encode(path: Path, image_size: int | None) -> tuple[str, bytes, bool]:
    """``(extension, bytes, reencoded)`` to store for one image file.

    Raises:
        BadSample: the file is not an image PIL can fully decode.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:  # unreadable file (permissions, I/O error): skipped like a bad image
        raise BadSample(f"cannot read the file ({exc.strerror or type(exc).__name__})") from exc
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, size = img.format, img.size
            img.load()  # a truncated file only fails once the pixels are decoded
            mode = img.mode
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for non-images
        raise BadSample(f"not a readable image ({type(exc).__name__}: {exc})") from exc
    ext = _KEPT_FORMATS.get(fmt or "")
    if ext is not None and (image_size is None or size == (image_size, image_size)):
        return ext, data, False
    if image_size is None and mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"):
        with Image.open(io.BytesIO(data)) as img:
            return "png", _save(img, "PNG"), True
    array = decode_image(data, image_size)
    out_format = "JPEG" if ext == "jpg" else "PNG"
    return ("jpg" if ext == "jpg" else "png"), _save(Image.fromarray(array), out_format), True


def _save(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=95)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def import_image_folder(folder: str | Path, out_dir: str | Path, shard_size: int = 1000,
                        image_size: int | None = None,
                        progress: Callable[[int, int], None] | None = None,
                        stage: Callable[[str], None] | None = None) -> ImportReport:
    """Write the images under ``folder`` as shards in ``out_dir`` (with ``index.json``).

    ``stage(line)`` is called once per stage (files found, shards moved into place);
    ``progress(done, total)`` after every file.

    Raises:
        DataError: ``folder`` is missing or holds no readable image, or ``out_dir`` already
            holds something (names the path). ``out_dir`` is then left as it was.
    """
    folder, out_dir = Path(folder), Path(out_dir)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"output folder {out_dir} is not empty; choose a new or empty folder")
    classes, files = _layout(folder)
    if not files:
        raise DataError(f"no files in image folder {folder}")
    if stage is not None:
        labels = f"{len(classes)} classes" if classes else "unlabeled"
        stage(f"found {len(files)} files ({labels}) in {folder}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.importing-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    partial.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        report = _write_shards(folder, partial, files, classes, shard_size, image_size, progress)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    report.out_dir = out_dir
    if stage is not None:
        stage(f"wrote {report.shards} shard(s) and {INDEX_NAME} to {out_dir}")
    return report


def _write_shards(folder: Path, out_dir: Path, files: list[tuple[Path, int]], classes: list[str],
                  shard_size: int, image_size: int | None,
                  progress: Callable[[int, int], None] | None) -> ImportReport:
    report = ImportReport(out_dir=out_dir, shards=0, samples=0, classes=classes)
    metadata: dict[str, object] = {"kind": "imported"}
    if classes:
        metadata["classes"] = classes
    with ShardSetWriter(out_dir, shard_size=shard_size, prefix="shard",
                        metadata=metadata) as writer:
        for done, (path, label) in enumerate(files, start=1):
            try:
                ext, payload, reencoded = _encode(path, image_size)
            except BadSample as exc:
                report.unreadable += 1
                if len(report.unreadable_files) < MAX_REPORTED:
                    report.unreadable_files.append((str(path), exc.reason))
            else:
                entry = {ext: payload}
                if label >= 0:
                    entry[CLASS_KEY] = str(label).encode()
                writer.write(f"{report.samples:09d}", entry)
                report.samples += 1
                report.reencoded += int(reencoded)
            if progress is not None:
                progress(done, len(files))
        if report.samples == 0:
            raise DataError(f"no readable image in {folder} ({report.unreadable} unreadable files)")
    report.shards = len(writer.counts)
    return report
