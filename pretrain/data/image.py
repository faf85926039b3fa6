"""One image's bytes -> an ``H x W x 3`` uint8 RGB array, with PIL; the building block of the
sample decoder (``pretrain.data.decode``), the importer, and the GPU decoder's fallback.

Images are converted to RGB whatever their mode, resized (shorter side, then center crop) only
when their size differs from the requested one, and kept ``uint8``. Any problem raises
``BadSample``; callers decide what to do with it.

A JPEG stored at least twice the requested size is decoded at a reduced scale (libjpeg's DCT
scaling through ``Image.draft``: 1/2, 1/4 or 1/8, the smallest that still covers the requested
size) and then resized; this is several times faster and differs from a full decode + resize by
about one grey level on average (``tests/test_decode_fast.py`` states the bound).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


_WIDE_INT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class BadSample(Exception):
    """One sample cannot be decoded; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; alpha is dropped (colour channels kept as stored)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _WIDE_INT_MODES:
        values = np.asarray(img, dtype=np.float32)
        # 16-bit data is rescaled to 8 bits; 8-bit data stored in a wide mode is kept as is.
        if mode != "F" and values.size and values.max() > 255:
            values = values / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode in ("P", "PA"):
        # Palette transparency must go through RGBA or PIL warns and may mis-map colours.
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, image_size: int | None, *, reduced: bool = True) -> np.ndarray:
    """Image bytes -> ``H x W x 3`` uint8 RGB, resized to ``image_size`` square when given.

    Resizing center-crops the longer side to a square (at whole pixels) and scales it to
    ``image_size`` (bilinear, antialiased when shrinking); images already ``image_size`` square
    are returned untouched. ``reduced=False`` turns off the reduced-scale JPEG decode (every
    pixel decoded: the reference that tests and ``benchmarks/decode_speed.py`` compare with).
    Raises ``BadSample`` on bad bytes.
    """
    try:
        img = Image.open(io.BytesIO(data))
        if image_size is not None and reduced:
            draft_for(img, image_size)
        img = to_rgb(img)
        if image_size is not None and img.size != (image_size, image_size):
            w, h = img.size
            side = min(w, h)
            # The crop is cut at whole pixels, so the GPU decoder (pretrain.data.gpu_decode),
            # which crops tensors, sees exactly the same square.
            left, top = (w - side) // 2, (h - side) // 2
            box = (left, top, left + side, top + side)
            if side == image_size:
                img = img.crop(box)
            else:
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)
        array = np.asarray(img)
    except BadSample:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise BadSample(f"undecodable image ({type(exc).__name__}: {exc})") from exc
    if array.ndim != 3 or array.shape[2] != 3:
        raise BadSample(f"image decoded to unexpected shape {array.shape}")
    return array


def draft_for(img: Image.Image, image_size: int) -> bool:
    """Ask libjpeg to decode ``img`` (opened, not yet loaded) at a reduced scale when it is a JPEG
    whose shorter side is at least ``2 * image_size``; True when it did.

    PIL picks the largest of 1/2, 1/4, 1/8 that keeps both sides at least ``image_size``, so the
    shorter side still covers the requested size and the center crop + resize that follows sees
    the same field of view (to within one source pixel at the right/bottom edge, where the scaled
    size is rounded up).
    """
    if img.format != "JPEG" or min(img.size) < 2 * image_size:
        return False
    img.draft(None, (image_size, image_size))
    return True
