"""Batched JPEG decoding on the GPU (nvJPEG through ``torchvision.io.decode_jpeg``), opt-in with
``data.gpu_decode``.

The loader workers then skip the decode: they check each JPEG's header, keep its bytes, and
``pack_jpegs`` concatenates a batch's files into one ``uint8`` tensor with offsets
(``PackedJpegs``), which pins and crosses process boundaries like any tensor. In the training
process ``decode_packed`` decodes the whole batch in one call and brings every image to
``image_size`` square the way the CPU decoder does (shorter side resized, center crop; bilinear
with antialiasing, the filter PIL's ``BILINEAR`` applies when shrinking). ``PackedJpegs.to(device)``
does exactly that, so a batch moved with ``ShardBatch.to(device)`` arrives as the usual
``B x V x 3 x H x W`` uint8 tensor.

Defensive reading is kept: when the batched call fails (nvJPEG rejects the whole batch for one
bad file), the images are decoded one by one, each failure retried with PIL on the CPU, and an
image that PIL cannot read either is replaced by the batch's previous good image (as the loader
pads batches left short by unreadable samples) with one warning per batch.

``resolve_gpu_decode`` decides whether the setting applies: only on a CUDA device; elsewhere it
logs one line and the loader workers decode on the CPU as usual.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.data.errors import DataError
from pretrain.data.image import BadSample, decode_image

logger = logging.getLogger("pretrain.data")

_JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(payload: bytes) -> bool:
    """True when ``payload`` starts with the JPEG start-of-image marker."""
    return bytes(payload[:3]) == _JPEG_MAGIC


def resolve_gpu_decode(requested: bool, device: torch.device | str) -> bool:
    """Whether batches are decoded on ``device``: ``requested`` and ``device`` is CUDA.

    A request that cannot be honoured (CPU device) is logged here, once per process however
    many loaders ask (the bench opens several), and the loader workers decode on the CPU
    instead, so one config serves a laptop and a GPU cluster.
    """
    if not requested:
        return False
    kind = torch.device(device).type
    if kind != "cuda":
        if kind not in _fallback_logged:
            _fallback_logged.add(kind)
            logger.warning("data.gpu_decode is set but the device is %s: JPEGs are decoded on "
                           "the CPU in the loader workers", kind)
        return False
    return True


_fallback_logged: set[str] = set()


@dataclass
class PackedJpegs:
    """A batch of encoded JPEG views, packed for the trip to the device.

    Attributes:
        data: ``uint8`` CPU tensor, every JPEG file of the batch concatenated (sample-major, then
            view).
        offsets: ``int64`` tensor of ``B * V + 1`` entries; file ``k`` is ``data[offsets[k]:
            offsets[k + 1]]``.
        batch_size: ``B``.
        views: ``V``.
        image_size: side the images are brought to when decoded (None: kept as stored).
    """

    data: Tensor
    offsets: Tensor
    batch_size: int
    views: int
    image_size: int | None = None

    def files(self) -> list[Tensor]:
        """The ``B * V`` JPEG files as 1-D ``uint8`` views into ``data`` (no copy)."""
        bounds = self.offsets.tolist()
        return [self.data[bounds[k]:bounds[k + 1]] for k in range(len(bounds) - 1)]

    def pin_memory(self) -> "PackedJpegs":
        return PackedJpegs(self.data.pin_memory(), self.offsets, self.batch_size, self.views,
                           self.image_size)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Tensor:
        """Decoded on ``device``: ``uint8`` ``B x V x 3 x S x S`` (see ``decode_packed``), so
        ``ShardBatch.to(device)`` hands the training step the usual image tensor."""
        del non_blocking  # nvJPEG reads the host bytes itself; the output is produced on device
        return decode_packed(self, device, image_size=self.image_size)


def pack_jpegs(samples: Sequence[Sequence[bytes]], image_size: int | None = None) -> PackedJpegs:
    """Pack ``B`` samples of ``V`` JPEG files each into one ``PackedJpegs`` (one copy of the
    bytes).

    Raises:
        DataError: the samples hold different numbers of views.
    """
    views = len(samples[0])
    if any(len(files) != views for files in samples):
        raise DataError(f"samples of one batch hold different numbers of views "
                        f"({sorted({len(f) for f in samples})})")
    flat = [f for files in samples for f in files]
    sizes = torch.tensor([0] + [len(f) for f in flat], dtype=torch.int64)
    offsets = torch.cumsum(sizes, 0)
    data = torch.empty(int(offsets[-1]), dtype=torch.uint8)
    buffer = data.numpy()
    for k, f in enumerate(flat):
        buffer[int(offsets[k]):int(offsets[k + 1])] = memoryview(f)
    return PackedJpegs(data=data, offsets=offsets, batch_size=len(samples), views=views,
                       image_size=image_size)


def decode_packed(packed: PackedJpegs, device: torch.device | str,
                  image_size: int | None = None) -> Tensor:
    """Decode a packed batch on ``device`` into ``uint8`` ``B x V x 3 x S x S`` (``S`` =
    ``image_size``; without it every image must already share one size).

    One ``decode_jpeg`` call for the whole batch (nvJPEG's batched decoder on CUDA; the same
    function on the CPU, which is how the tests check this path without a GPU).

    Raises:
        DataError: ``image_size`` is None and the images differ in size, or no image of the
            batch could be decoded.
    """
    device = torch.device(device)
    files = packed.files()
    images = _decode_files(files, device)
    out = square_batch(images, image_size)
    return out.reshape(packed.batch_size, packed.views, *out.shape[1:])


def _decode_jpeg(files: list[Tensor], device: torch.device) -> list[Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; the call
        # is still the supported nvJPEG entry point of the pinned version.
        warnings.filterwarnings("ignore", message=".*TorchVision are deprecated")
        return decode_jpeg(files, mode=ImageReadMode.RGB, device=device)


def _decode_files(files: list[Tensor], device: torch.device) -> list[Tensor]:
    """``3 x H x W`` uint8 images on ``device``; failures retried one by one, then with PIL."""
    try:
        return _decode_jpeg(files, device)
    except RuntimeError:
        pass
    out: list[Tensor | None] = []
    for f in files:
        try:
            out.append(_decode_jpeg([f], device)[0])
            continue
        except RuntimeError:
            pass
        try:  # e.g. CMYK or an unusual subsampling nvJPEG does not take; PIL reads those
            array = decode_image(f.numpy().tobytes(), None)
            out.append(torch.from_numpy(array).permute(2, 0, 1).to(device))
        except BadSample:
            out.append(None)
    bad = sum(image is None for image in out)
    if bad == len(out):
        raise DataError(f"none of the {len(out)} JPEG files of a batch could be decoded")
    if bad:
        logger.warning("%d of %d JPEG files of a batch could not be decoded; each is replaced by "
                       "the batch's previous good image", bad, len(out))
        last = next(image for image in out if image is not None)
        for k, image in enumerate(out):
            if image is None:
                out[k] = last
            else:
                last = image
    return [image for image in out if image is not None]


def square_batch(images: Sequence[Tensor], image_size: int | None) -> Tensor:
    """``N`` images ``3 x H_i x W_i`` (uint8) -> ``N x 3 x S x S`` uint8 like the CPU decoder:
    shorter side resized to ``S`` with antialiased bilinear filtering, longer side center-cropped;
    images already ``S`` square are kept as they are.

    Images of the same size are resized together, so a batch of equal sizes (a rendered set,
    or square images) costs one call. The crop is cut at whole pixels, as the CPU decoder cuts it,
    and torch's antialiased bilinear filter is PIL's, so the two agree to the decoders' rounding.
    """
    if image_size is None:
        sizes = {tuple(image.shape) for image in images}
        if len(sizes) > 1:
            raise DataError(f"images of different sizes in one batch (set image_size): "
                            f"{sorted(sizes)[:3]}")
        return torch.stack(list(images))
    groups: dict[tuple[int, int], list[int]] = {}
    for k, image in enumerate(images):
        groups.setdefault((int(image.shape[1]), int(image.shape[2])), []).append(k)
    squares = {size: _square(torch.stack([images[k] for k in members]), image_size)
               for size, members in groups.items()}
    if len(squares) == 1:  # the common case: one size, no scatter
        return next(iter(squares.values()))
    out = torch.empty((len(images), 3, image_size, image_size), dtype=torch.uint8,
                      device=images[0].device)
    for size, members in groups.items():
        for row, k in enumerate(members):
            out[k] = squares[size][row]
    return out


def _square(batch: Tensor, image_size: int) -> Tensor:
    """``N x 3 x H x W`` uint8 (one size) -> ``N x 3 x S x S``: center crop, then resize."""
    h, w = batch.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    batch = batch[:, :, top:top + side, left:left + side]
    if side == image_size:
        return batch.contiguous()
    resized = F.interpolate(batch.float(), size=(image_size, image_size), mode="bilinear",
                            align_corners=False, antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)
