"""Import a folder of images into a shard set.

Two layouts: one subfolder per class (classes are the sorted subfolder names, their index is the
``cls`` label) or a flat folder of unlabeled images. By default (``image_format="keep"``) JPEG and
PNG files are stored byte for byte and other formats are re-encoded to PNG. With ``image_size``
every image is resized (shorter side, center crop, as the reader does) and re-encoded in its own
format (JPEG stays JPEG). Files that cannot be read (I/O errors included) or that PIL cannot decode
are skipped and reported. The order is sorted, so an import is reproducible.

``image_format="jpeg"`` writes the ImageNet-style set that fast input pipelines expect: every
image as an RGB baseline JPEG (``quality``, default 90) whose shorter side is at most
``short_side`` (default 256; aspect ratio kept, never enlarged). A JPEG that already fits (RGB or
grey, baseline) is kept byte for byte, everything else is decoded, resized (Lanczos, after a
reduced-size JPEG decode where the source is at least twice as large) and re-encoded. Stored at
about 256 px, a 224 px training crop decodes several times faster than from PNG
(``benchmarks/decode_speed.py``), and the files suit nvJPEG (``data.gpu_decode``).

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from pretrain.data.image import BadSample, decode_image, to_rgb
from pretrain.data.errors import DataError
from pretrain.data.format import CLASS_KEY, INDEX_NAME
from pretrain.data.writer import ShardSetWriter

_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png"}
MAX_REPORTED = 20
IMAGE_FORMATS = ("keep", "jpeg", "png")
JPEG_SHORT_SIDE = 256  # ImageNet-style: a 224 px crop fits, with some room for scale jitter
JPEG_QUALITY = 90
KEEP_QUALITY = 95  # re-encoded JPEGs of the "keep" format (resized with image_size)
_MIN_SHORT_SIDE = 8


@dataclass(frozen=True)
class Encoding:
    """How images are stored.

    Attributes:
        image_format: ``keep`` (JPEG and PNG as they are, other formats as PNG), ``jpeg`` or
            ``png`` (every image in that format).
        short_side: shorter side at most this many pixels (aspect ratio kept, never enlarged);
            None keeps sizes.
        quality: JPEG quality of re-encoded images (1-95); None: 90 for ``jpeg``, 95 for
            ``keep`` (the quality before ``jpeg`` existed).
    """

    image_format: Literal["keep", "jpeg", "png"] = "keep"
    short_side: int | None = None
    quality: int | None = None

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, got "
                             f"{self.image_format!r}")
        if self.short_side is not None and self.short_side < _MIN_SHORT_SIDE:
            raise ValueError(f"short_side must be >= {_MIN_SHORT_SIDE} px, got {self.short_side}")
        if self.quality is not None and not 1 <= self.quality <= 95:
            raise ValueError(f"quality must be in 1..95 (PIL's useful range), got {self.quality}")

    @property
    def jpeg_quality(self) -> int:
        if self.quality is not None:
            return self.quality
        return JPEG_QUALITY if self.image_format == "jpeg" else KEEP_QUALITY

    @staticmethod
    def for_format(image_format: str, short_side: int | None = None,
                   quality: int | None = None) -> "Encoding":
        """The encoding a user asking for ``image_format`` means: ``jpeg`` without a short side
        gets ``JPEG_SHORT_SIDE``; ``short_side=0`` keeps sizes."""
        if short_side is None and image_format == "jpeg":
            short_side = JPEG_SHORT_SIDE
        return Encoding(image_format, short_side or None, quality)  # type: ignore[arg-type]


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


def _encode(path: Path, image_size: int | None, encoding: Encoding) -> tuple[str, bytes, bool]:
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
            progressive = bool(img.info.get("progressive") or img.info.get("progression"))
            img.load()  # a truncated file only fails once the pixels are decoded
            mode = img.mode
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for non-images
        raise BadSample(f"not a readable image ({type(exc).__name__}: {exc})") from exc
    ext = _KEPT_FORMATS.get(fmt or "")
    if encoding.image_format == "keep":
        out_ext = "jpg" if ext == "jpg" else "png"
    else:
        out_ext = "jpg" if encoding.image_format == "jpeg" else "png"
    if image_size is not None:
        if ext == out_ext and size == (image_size, image_size):
            return ext, data, False
        array = decode_image(data, image_size)
        return out_ext, _save(Image.fromarray(array), out_ext, encoding.jpeg_quality), True
    new_size = _fitted_size(size, encoding.short_side)
    if new_size is None and ext == out_ext:
        # A JPEG written by --format jpeg must also be baseline RGB/grey, which nvJPEG and every
        # other decoder take; "keep" stores whatever JPEG it is given.
        if out_ext == "png" or encoding.image_format == "keep" or (
                mode in ("RGB", "L") and not progressive):
            return ext, data, False
    with Image.open(io.BytesIO(data)) as img:
        if new_size is None and out_ext == "png" and mode in (
                "RGB", "RGBA", "L", "LA", "P", "1", "I;16"):
            return "png", _save(img, "png", encoding.jpeg_quality), True
        if new_size is not None:
            img.draft(None, new_size)  # JPEG only: a reduced-scale decode that still covers it
        rgb = to_rgb(img)
        if new_size is not None:
            rgb = rgb.resize(new_size, Image.Resampling.LANCZOS)
        return out_ext, _save(rgb, out_ext, encoding.jpeg_quality), True


def _fitted_size(size: tuple[int, int], short_side: int | None) -> tuple[int, int] | None:
    """``(w, h)`` scaled so the shorter side is ``short_side``; None when it already fits."""
    w, h = size
    if short_side is None or min(w, h) <= short_side:
        return None
    scale = short_side / min(w, h)
    if w <= h:
        return short_side, max(1, round(h * scale))
    return max(1, round(w * scale)), short_side


def _save(img: Image.Image, ext: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if ext == "jpg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def import_image_folder(folder: str | Path, out_dir: str | Path, shard_size: int = 1000,
                        image_size: int | None = None,
                        progress: Callable[[int, int], None] | None = None,
                        stage: Callable[[str], None] | None = None,
                        encoding: Encoding | None = None) -> ImportReport:
    """Write the images under ``folder`` as shards in ``out_dir`` (with ``index.json``).

    ``encoding`` chooses the stored format and size (default: as they are, see ``Encoding``);
    ``image_size`` (square, center-cropped) cannot be combined with ``encoding.short_side``.
    ``stage(line)`` is called once per stage (files found, shards moved into place);
    ``progress(done, total)`` after every file.

    Raises:
        DataError: ``folder`` is missing or holds no readable image, or ``out_dir`` already
            holds something (names the path). ``out_dir`` is then left as it was.
        ValueError: both ``image_size`` and ``encoding.short_side``.
    """
    encoding = encoding or Encoding()
    if image_size is not None and encoding.short_side is not None:
        raise ValueError("give image_size (square crop) or a short side, not both")
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
        report = _write_shards(folder, partial, files, classes, shard_size, image_size, encoding,
                               progress)
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
                  shard_size: int, image_size: int | None, encoding: Encoding,
                  progress: Callable[[int, int], None] | None) -> ImportReport:
    report = ImportReport(out_dir=out_dir, shards=0, samples=0, classes=classes)
    metadata: dict[str, object] = {"kind": "imported"}
    if encoding != Encoding():
        metadata["encoding"] = {**asdict(encoding), "quality": encoding.jpeg_quality}
    if classes:
        metadata["classes"] = classes
    with ShardSetWriter(out_dir, shard_size=shard_size, prefix="shard",
                        metadata=metadata) as writer:
        for done, (path, label) in enumerate(files, start=1):
            try:
                ext, payload, reencoded = _encode(path, image_size, encoding)
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
