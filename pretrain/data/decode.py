"""Raw webdataset sample -> arrays -> batch tensors, with unreadable samples reported, not fatal.

Images are decoded with PIL, converted to RGB whatever their mode, resized (shorter side, then
center crop) only when their size differs from the requested one, and kept ``uint8``. Any
problem with one sample raises ``BadSample``; the reader decides what to do with it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pretrain.data.errors import DataError
from pretrain.data.format import CLASS_KEY, IMAGE_EXTENSIONS, LATENT_KEYS, LATENTS_KEY, view_key

_WIDE_INT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class BadSample(Exception):
    """One sample cannot be decoded; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class DecodedSample:
    """One decoded sample: ``images`` is ``V x H x W x 3`` uint8; latents are ``V x ...``."""

    images: np.ndarray
    label: int
    latents: dict[str, np.ndarray] = field(default_factory=dict)
    key: str = ""
    url: str = ""


def _to_rgb(img: Image.Image) -> Image.Image:
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


def decode_image(data: bytes, image_size: int | None) -> np.ndarray:
    """Image bytes -> ``H x W x 3`` uint8 RGB, resized to ``image_size`` square when given.

    Resizing scales the shorter side to ``image_size`` and center-crops the longer one; images
    already ``image_size`` square are returned untouched. Raises ``BadSample`` on bad bytes.
    """
    try:
        img = Image.open(io.BytesIO(data))
        if image_size is not None and img.format == "JPEG" and min(img.size) >= 2 * image_size:
            # Let libjpeg decode at a reduced scale that still covers the target size.
            img.draft(None, (image_size, image_size))
        img = _to_rgb(img)
        if image_size is not None and img.size != (image_size, image_size):
            w, h = img.size
            side = min(w, h)
            if side == image_size:
                left, top = (w - side) // 2, (h - side) // 2
                img = img.crop((left, top, left + side, top + side))
            else:
                box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)
        array = np.asarray(img)
    except BadSample:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise BadSample(f"undecodable image ({type(exc).__name__}: {exc})") from exc
    if array.ndim != 3 or array.shape[2] != 3:
        raise BadSample(f"image decoded to unexpected shape {array.shape}")
    return array


def available_views(sample: Mapping[str, Any]) -> int:
    """Number of ``view{i}.png`` entries (consecutive from 0) in a multi-view sample."""
    count = 0
    while view_key(count) in sample:
        count += 1
    return count


def choose_views(available: int, views: int, seed: Sequence[int]) -> list[int]:
    """Which of ``available`` views to decode: a seeded draw without replacement when there are
    more than ``views``, the first ``views`` when there are enough, cycled when there are fewer."""
    if available > views:
        rng = np.random.default_rng(list(seed))
        return [int(i) for i in rng.choice(available, size=views, replace=False)]
    return [i % available for i in range(views)]


def parse_label(sample: Mapping[str, Any]) -> int:
    """The sample's class index, ``-1`` when it has none; ``BadSample`` when unparsable."""
    raw = sample.get(CLASS_KEY)
    if raw is None:
        return -1
    try:
        text = raw.decode("ascii") if isinstance(raw, (bytes, bytearray)) else str(raw)
        return int(text.strip())
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadSample(f"unparsable class label {bytes(raw)[:20]!r}") from exc


def _latents(raw: bytes, available: int, chosen: Sequence[int]) -> dict[str, np.ndarray]:
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadSample(f"unparsable {LATENTS_KEY}") from exc
    if not isinstance(parsed, dict):
        raise BadSample(f"{LATENTS_KEY} is not an object")
    out = {}
    # Only the per-view latents of the format; other keys (class name, shape parameters) are
    # per-object metadata that the training batch does not carry.
    for name in LATENT_KEYS:
        if name not in parsed:
            continue
        value = parsed[name]
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise BadSample(f"{LATENTS_KEY}[{name!r}] is not numeric") from exc
        if array.ndim == 0 or array.shape[0] != available:
            raise BadSample(f"{LATENTS_KEY}[{name!r}] does not hold one entry per view ({available})")
        out[name] = array[list(chosen)]
    return out


def decode_sample(sample: Mapping[str, Any], *, image_size: int | None, views: int,
                  seed: Sequence[int]) -> DecodedSample:
    """Decode one raw webdataset sample.

    ``seed`` (e.g. ``(seed, epoch, rank, stream position)``) makes the choice of views
    deterministic when the sample holds more views than ``views``.

    Raises:
        BadSample: no image, an undecodable image, a bad label or bad latents.
    """
    available = available_views(sample)
    if available:
        chosen = choose_views(available, views, seed)
        payloads = [sample[view_key(i)] for i in chosen]
    else:
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            raise BadSample("no image in sample")
        available, chosen = 1, [0] * views
        payloads = [sample[ext]] * views
    label = parse_label(sample)
    first = decode_image(payloads[0], image_size)
    images = np.empty((views, *first.shape), dtype=np.uint8)
    images[0] = first
    for v in range(1, views):
        if payloads[v] is payloads[0]:
            images[v] = first
            continue
        image = decode_image(payloads[v], image_size)
        if image.shape != first.shape:
            raise BadSample(f"views decoded to different sizes {first.shape} and {image.shape}")
        images[v] = image
    raw_latents = sample.get(LATENTS_KEY)
    latents = _latents(raw_latents, available, chosen) if raw_latents is not None else {}
    return DecodedSample(images=images, label=label, latents=latents,
                         key=str(sample.get("__key__", "")), url=str(sample.get("__url__", "")))


def collate(samples: Sequence[DecodedSample]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Stack decoded samples into ``(images B x V x 3 x H x W uint8, labels B int64, latents)``.

    Raises:
        DataError: samples of one batch disagree in image size or latent names/shapes (a
            property of the data set, not of one sample, so it is not skipped).
    """
    first = samples[0]
    try:
        images = np.stack([s.images for s in samples])
    except ValueError as exc:
        raise DataError(f"images of different sizes in one batch (set image_size), near sample "
                        f"{first.key} of {first.url}: {exc}") from exc
    tensor = torch.from_numpy(images).permute(0, 1, 4, 2, 3).contiguous()
    labels = torch.tensor([s.label for s in samples], dtype=torch.int64)
    latents: dict[str, Tensor] = {}
    names = set(first.latents)
    for s in samples:
        if set(s.latents) != names:
            raise DataError(f"sample {s.key} of {s.url} has latents {sorted(s.latents)}, "
                            f"others in its batch have {sorted(names)}")
    for name in first.latents:
        try:
            latents[name] = torch.from_numpy(np.stack([s.latents[name] for s in samples]))
        except ValueError as exc:
            raise DataError(f"latent {name!r} has different shapes within a batch near sample "
                            f"{first.key} of {first.url}") from exc
    return tensor, labels, latents
