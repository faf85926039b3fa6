"""Raw webdataset sample -> arrays -> batch tensors, with unreadable samples reported, not fatal.

Each view's image is decoded by ``pretrain.data.image.decode_image`` (RGB, ``uint8``, resized
only when needed, reduced-scale JPEG decoding where the stored size allows it). Any problem with
one sample raises ``BadSample``; the reader decides what to do with it.

With ``keep_encoded`` the JPEG bytes of the chosen views are kept undecoded and ``collate`` packs
them (``pretrain.data.gpu_decode.PackedJpegs``) for a batched decode on the GPU.
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
from torch.utils.data import get_worker_info

from pretrain.data.errors import DataError
from pretrain.data.format import CLASS_KEY, IMAGE_EXTENSIONS, LATENT_KEYS, LATENTS_KEY, view_key
from pretrain.data.gpu_decode import PackedJpegs, is_jpeg, pack_jpegs
from pretrain.data.image import BadSample, decode_image

@dataclass
class DecodedSample:
    """One decoded sample: ``images`` is ``V x H x W x 3`` uint8; latents are ``V x ...``.

    When decoded with ``keep_encoded``, ``images`` is empty and ``encoded`` holds the ``V`` JPEG
    files of the chosen views instead, to be decoded to ``image_size`` on the device.
    """

    images: np.ndarray
    label: int
    latents: dict[str, np.ndarray] = field(default_factory=dict)
    key: str = ""
    url: str = ""
    encoded: tuple[bytes, ...] = ()
    image_size: int | None = None


def _view_keys(sample: Mapping[str, Any]) -> list[str]:
    """The keys of the ``view{i}.png`` / ``view{i}.jpg`` entries (consecutive from 0)."""
    keys: list[str] = []
    while True:
        key = next((k for k in (view_key(len(keys)), view_key(len(keys), "jpg")) if k in sample),
                   None)
        if key is None:
            return keys
        keys.append(key)


def available_views(sample: Mapping[str, Any]) -> int:
    """Number of ``view{i}.png`` or ``view{i}.jpg`` entries (consecutive from 0) in a multi-view
    sample."""
    return len(_view_keys(sample))


_MASK64 = (1 << 64) - 1


def _splitmix64(state: int) -> tuple[int, int]:
    """One step of SplitMix64 (Steele, Lea & Flood 2014): ``(next state, 64-bit output)``."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def choose_views(available: int, views: int, seed: Sequence[int]) -> list[int]:
    """Which of ``available`` views to decode: a seeded draw without replacement when there are
    more than ``views``, the first ``views`` when there are enough, cycled when there are fewer.

    The draw is a partial Fisher-Yates shuffle driven by SplitMix64 over the seed tuple: a few
    integer operations per sample, where building a numpy Generator per sample cost ~40 us (the
    per-sample work issue 12 names). Modulo bias is below ``available / 2**64``.
    """
    if available > views:
        state = 0
        for part in seed:
            state, mixed = _splitmix64(state ^ (int(part) & _MASK64))
            state ^= mixed
        pool = list(range(available))
        for i in range(views):
            state, draw = _splitmix64(state)
            j = i + draw % (available - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:views]
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
                  seed: Sequence[int], keep_encoded: bool = False) -> DecodedSample:
    """Decode one raw webdataset sample.

    ``seed`` (e.g. ``(seed, epoch, rank, stream position)``) makes the choice of views
    deterministic when the sample holds more views than ``views``. With ``keep_encoded`` the
    chosen views' JPEG bytes are returned undecoded (``DecodedSample.encoded``) for a batched GPU
    decode; their headers are checked here, so a sample that is not a JPEG at all is still
    skipped in the loader.

    Raises:
        BadSample: no image, an undecodable image, a bad label or bad latents.
        DataError: ``keep_encoded`` and the sample's image is not a JPEG (a property of the
            shard set: GPU decode needs JPEG shards).
    """
    keys = _view_keys(sample)
    available = len(keys)
    if available:
        chosen = choose_views(available, views, seed)
        payloads = [sample[keys[i]] for i in chosen]
    else:
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            raise BadSample("no image in sample")
        available, chosen = 1, [0] * views
        payloads = [sample[ext]] * views
    label = parse_label(sample)
    raw_latents = sample.get(LATENTS_KEY)
    latents = _latents(raw_latents, available, chosen) if raw_latents is not None else {}
    key, url = str(sample.get("__key__", "")), str(sample.get("__url__", ""))
    if keep_encoded:
        for payload in payloads:
            _check_jpeg(payload, key, url)
        return DecodedSample(images=np.empty((0,), dtype=np.uint8), label=label, latents=latents,
                             key=key, url=url, encoded=tuple(bytes(p) for p in payloads),
                             image_size=image_size)
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
    return DecodedSample(images=images, label=label, latents=latents, key=key, url=url)


def _check_jpeg(payload: bytes, key: str, url: str) -> None:
    """For ``keep_encoded``: a JPEG whose header PIL can parse (the pixels are left to the GPU)."""
    if not is_jpeg(payload):
        raise DataError(f"data.gpu_decode needs JPEG shards, but sample {key} of {url} holds "
                        "another image format; import with 'pretrain data import --format jpeg' "
                        "or set data.gpu_decode=false")
    try:
        with Image.open(io.BytesIO(payload)) as img:
            img.size  # noqa: B018 - parsing the header is the check
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise BadSample(f"unreadable JPEG header ({type(exc).__name__}: {exc})") from exc


def _batch_buffer(shape: tuple[int, ...]) -> Tensor:
    """An uninitialised ``uint8`` tensor for a collated batch.

    In a DataLoader worker it is allocated in shared memory, as torch's own ``default_collate``
    does, so handing the batch to the main process does not copy it once more.
    """
    numel = int(np.prod(shape))
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(numel)  # uint8: one byte per element
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape)


def collate(samples: Sequence[DecodedSample]
            ) -> tuple[Tensor | PackedJpegs, Tensor, dict[str, Tensor]]:
    """Stack decoded samples into ``(images B x V x 3 x H x W uint8, labels B int64, latents)``.

    The images are copied once, straight into the batch's (shared-memory, in a loader worker)
    tensor in channel-first order. Samples decoded with ``keep_encoded`` give ``PackedJpegs``
    instead of the image tensor.

    Raises:
        DataError: samples of one batch disagree in image size or latent names/shapes (a
            property of the data set, not of one sample, so it is not skipped).
    """
    first = samples[0]
    if first.encoded:
        tensor: Tensor | PackedJpegs = pack_jpegs([s.encoded for s in samples],
                                                  image_size=first.image_size)
    else:
        shape = first.images.shape
        for s in samples:
            if s.images.shape != shape:
                raise DataError(f"images of different sizes in one batch (set image_size), near "
                                f"sample {first.key} of {first.url}: {tuple(shape)} and "
                                f"{tuple(s.images.shape)} (sample {s.key})")
        tensor = _batch_buffer((len(samples), shape[0], shape[3], shape[1], shape[2]))
        out = tensor.numpy()
        for i, s in enumerate(samples):
            # numpy's strided copy transposes HWC -> CHW ~4x faster than stack + torch permute
            # on one thread (a loader worker's), measured at 64 x 2 x 224^2.
            np.copyto(out[i], s.images.transpose(0, 3, 1, 2))
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
