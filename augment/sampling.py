"""Per-sample augmentation parameters: one row of uniform draws per sample, then pure tensor maths.

Randomness comes only from an explicit CPU generator, in one call per view: ``draw_uniforms``
fills ``n x DRAW_COLUMNS`` float64 values in ``[0, 1)``. Every call draws the same amount whatever
the probabilities are, so the generator state after a call depends only on ``(seed, rows)``:
seeding per (seed, step, rank) reproduces a run exactly after a resume. ``derive_params`` turns the
draws into parameters with fixed-shape tensor ops only (no ``.item()``, no data-dependent shape),
so it runs as well on the CPU (``sample_view_params``, the reference path) as inside the fused,
compilable device program (``augment.program``), batched over views.

Params of one view (every tensor has leading dimension ``B``; float32 unless noted):

- ``crop_box``: ``B x 4`` ``(x0, y0, x1, y1)``, fractions of the source width/height; the crop covers
  source pixels ``[x0 * W, x1 * W) x [y0 * H, y1 * H)`` (pixel-aligned, as torchvision).
- ``flip``: 1 where the crop was flipped left-right.
- ``jitter_applied``; ``brightness``, ``contrast``, ``saturation`` (factors, neutral 1);
  ``hue`` (shift in turns, neutral 0); ``jitter_order`` (``B x 4`` int64: op indices in the order
  applied, 0 brightness, 1 contrast, 2 saturation, 3 hue; neutral ``0, 1, 2, 3``).
- ``grayscale``; ``blur_applied``; ``blur_sigma`` (pixels, neutral 0); ``solarize``.
- ``rotation_angle``: degrees, counter-clockwise as displayed, neutral 0.

Rows where an op was skipped hold its neutral values, never the unused random draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from augment.view_config import ViewConfig

CROP_TRIES = 10
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
PARAM_KEYS = (
    "crop_box",
    "flip",
    "jitter_applied",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "jitter_order",
    "grayscale",
    "blur_applied",
    "blur_sigma",
    "solarize",
    "rotation_angle",
)
# Columns of params_to_vector; jitter_order is left out (it reorders, it does not parametrise).
PARAM_VECTOR_LAYOUT = (
    "crop_x0",
    "crop_y0",
    "crop_x1",
    "crop_y1",
    "flip",
    "jitter_applied",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "grayscale",
    "blur_applied",
    "blur_sigma",
    "solarize",
    "rotation_cos",
    "rotation_sin",
)

# One row of draws: CROP_TRIES area fractions, CROP_TRIES log aspect ratios, the crop corner
# (left, top), one coin per optional op, one value per ranged parameter, one jitter-order key per op.
COINS = ("flip", "jitter", "grayscale", "blur", "solarize", "rotation")
VALUES = ("brightness", "contrast", "saturation", "hue", "blur_sigma", "rotation_angle")
_CORNER = 2 * CROP_TRIES
_COIN = _CORNER + 2
_VALUE = _COIN + len(COINS)
_ORDER = _VALUE + len(VALUES)
DRAW_COLUMNS = _ORDER + len(JITTER_OPS)
# Value when the op was skipped; the coin that decides whether each value is used.
_VALUE_NEUTRAL = (1.0, 1.0, 1.0, 0.0, 0.0, 0.0)
_VALUE_COIN = ("jitter",) * 4 + ("blur", "rotation")


def draw_uniforms(generator: torch.Generator, rows: int, columns: int = DRAW_COLUMNS,
                  pin_memory: bool = False) -> Tensor:
    """``rows x columns`` float64 uniforms in ``[0, 1)`` from ``generator`` (one call, CPU).

    ``pin_memory`` puts them in page-locked memory, so that a copy to a GPU need not wait.
    """
    if generator.device.type != "cpu":
        raise ValueError(f"augmentation params are sampled on the CPU, got a {generator.device} generator")
    return torch.rand(rows, columns, generator=generator, dtype=torch.float64, pin_memory=pin_memory)


def central_crop(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's fallback crop size (h, w): the whole image, clipped to the ratio range."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return int(round(width / ratio[0])), width
    if in_ratio > ratio[1]:
        return height, int(round(height * ratio[1]))
    return height, width


@dataclass(frozen=True)
class CropTable:
    """Constants of RandomResizedCrop for ``V`` views on ``height x width`` sources (float64).

    ``low``/``span``: ``V x 1 x 2 x 1`` ranges of (area in pixels, log aspect ratio);
    ``fallback_wh`` and ``fallback_xy``: ``V x 1 x 2``, torchvision's central crop (size and
    corner) when no try fits; ``extent``: ``2 x 1`` ``(W, H)``; ``corner_room``: ``(W + 1, H + 1)``;
    ``box_extent``: ``(W, H, W, H)``; ``ratio_sign``: ``2 x 1`` ``(1, -1)`` (w grows with the
    ratio, h shrinks). The 1s broadcast over samples and tries.
    """

    low: Tensor
    span: Tensor
    fallback_wh: Tensor
    fallback_xy: Tensor
    extent: Tensor
    corner_room: Tensor
    box_extent: Tensor
    ratio_sign: Tensor

    @classmethod
    def build(cls, scales: Sequence[tuple[float, float]], ratios: Sequence[tuple[float, float]],
              height: int, width: int) -> CropTable:
        area = float(height * width)
        low, span, fallback_wh, fallback_xy = [], [], [], []
        for scale, ratio in zip(scales, ratios, strict=True):
            log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
            low.append((area * scale[0], log_lo))
            span.append((area * (scale[1] - scale[0]), log_hi - log_lo))
            h, w = central_crop(height, width, ratio)
            fallback_wh.append((w, h))
            fallback_xy.append(((width - w) // 2, (height - h) // 2))
        def table(rows: object, *shape: int) -> Tensor:
            return torch.tensor(rows, dtype=torch.float64).view(*shape)

        return cls(low=table(low, -1, 1, 2, 1), span=table(span, -1, 1, 2, 1),
                   fallback_wh=table(fallback_wh, -1, 1, 2), fallback_xy=table(fallback_xy, -1, 1, 2),
                   extent=table([width, height], 2, 1), corner_room=table([width + 1, height + 1], 2),
                   box_extent=table([width, height] * 2, 4), ratio_sign=table([1.0, -1.0], 2, 1))


@dataclass(frozen=True)
class ViewTable:
    """Per-view constants of ``derive_params`` for ``V`` views, as tensors (leading dimension ``V``).

    ``probability``: ``V x 1 x 6`` per coin (``COINS``); ``value_low``/``value_span``: ``V x 1 x 6``
    ranges of ``VALUES``; ``random_order``: ``V x 1 x 1`` bool; ``value_neutral`` (``6``) and
    ``neutral_order`` (``4``, int64) are the skipped-op values; ``value_coin`` (``6``, int64): the
    coin of each value. Build once per source size and device and reuse.
    """

    crop: CropTable
    probability: Tensor
    value_low: Tensor
    value_span: Tensor
    random_order: Tensor
    value_neutral: Tensor
    neutral_order: Tensor
    value_coin: Tensor

    @classmethod
    def build(cls, configs: Sequence[ViewConfig], height: int, width: int) -> ViewTable:
        probability, low, span = [], [], []
        for cfg in configs:
            probability.append((cfg.flip_p, cfg.jitter_p, cfg.grayscale_p, cfg.blur_p,
                                cfg.solarize_p, cfg.rotation_p))
            ranges = (
                (max(0.0, 1.0 - cfg.brightness), 1.0 + cfg.brightness),
                (max(0.0, 1.0 - cfg.contrast), 1.0 + cfg.contrast),
                (max(0.0, 1.0 - cfg.saturation), 1.0 + cfg.saturation),
                (-cfg.hue, cfg.hue),
                cfg.blur_sigma,
                (-cfg.rotation_degrees, cfg.rotation_degrees),
            )
            low.append([lo for lo, _ in ranges])
            span.append([hi - lo for lo, hi in ranges])
        crop = CropTable.build([c.crop_scale for c in configs], [c.crop_ratio for c in configs],
                               height, width)
        return cls(
            crop=crop,
            probability=torch.tensor(probability, dtype=torch.float64).view(-1, 1, len(COINS)),
            value_low=torch.tensor(low, dtype=torch.float64).view(-1, 1, len(VALUES)),
            value_span=torch.tensor(span, dtype=torch.float64).view(-1, 1, len(VALUES)),
            random_order=torch.tensor([c.jitter_random_order for c in configs]).view(-1, 1, 1),
            value_neutral=torch.tensor(_VALUE_NEUTRAL, dtype=torch.float64),
            value_coin=torch.tensor([COINS.index(coin) for coin in _VALUE_COIN]),
            neutral_order=torch.arange(len(JITTER_OPS)),
        )

    def to(self, device: torch.device | str) -> ViewTable:
        """The same table on ``device`` (one copy per tensor: do it once, not per batch)."""
        crop = CropTable(*(getattr(self.crop, f.name).to(device) for f in fields(CropTable)))
        return ViewTable(crop, *(getattr(self, f.name).to(device) for f in fields(self)[1:]))


def crop_boxes(draws: Tensor, table: CropTable) -> Tensor:
    """RandomResizedCrop boxes ``... x 4`` (normalised ``(x0, y0, x1, y1)``, float32) from draws.

    ``draws``: ``V x n x (2 T + 2)`` (T tries of area, T of log ratio, then the corner ``(x, y)``)
    for the ``V`` views of ``table``. Each sample takes the first of its T (area, ratio) candidates
    that fits the image, else torchvision's central crop; sizes are rounded to whole pixels and the
    corner is a uniform integer, as in torchvision. float64, so that rounding matches torchvision's
    Python-float arithmetic.
    """
    tries = (draws.shape[-1] - 2) // 2
    area, log_ratio = torch.addcmul(table.low, table.span,
                                    draws[..., : 2 * tries].unflatten(-1, (2, tries))).unbind(-2)
    # (w, h) = round(sqrt(area * r)), round(sqrt(area / r)) for every try: V x n x 2 x T.
    wh = torch.round(torch.sqrt(area.unsqueeze(-2) * torch.exp(log_ratio.unsqueeze(-2) * table.ratio_sign)))
    fits = ((wh >= 1.0) & (wh <= table.extent)).all(dim=-2)
    found, first = fits.to(torch.uint8).max(dim=-1, keepdim=True)  # max returns the first maximum
    found = found.bool()
    wh = torch.where(found, wh.gather(-1, first.unsqueeze(-2).expand(*first.shape[:-1], 2, 1)).squeeze(-1),
                     table.fallback_wh)
    # Corner uniform in 0 .. extent - wh: a draw below 1 keeps floor(draw * (room + 1)) <= room.
    xy = torch.floor(draws[..., 2 * tries:] * (table.corner_room - wh))
    xy = torch.where(found, xy, table.fallback_xy)  # torchvision centres the fallback crop
    return (torch.cat((xy, xy + wh), dim=-1) / table.box_extent).to(torch.float32)


@dataclass(frozen=True)
class PackedParams:
    """The params of ``V x n`` samples in four tensors (leading dims ``V x n``; see ``unpack``).

    ``crop_box``: ``... x 4``; ``flags``: ``... x 6`` float32 0/1 per coin (``COINS``); ``values``:
    ``... x 6`` float32 (``VALUES``, neutral where skipped); ``order``: ``... x 4`` int64.
    """

    crop_box: Tensor
    flags: Tensor
    values: Tensor
    order: Tensor

    def select(self, index: int | slice) -> PackedParams:
        """The same params for ``index`` of the leading (view) dimension."""
        return PackedParams(self.crop_box[index], self.flags[index], self.values[index], self.order[index])

    def flatten(self) -> PackedParams:
        """Leading ``V x n`` merged into one dimension of ``V n`` rows."""
        return PackedParams(*(t.flatten(0, 1) for t in (self.crop_box, self.flags, self.values, self.order)))

    def unpack(self) -> dict[str, Tensor]:
        """The params dict (``PARAM_KEYS``); its tensors are views into the packed ones."""
        flag = dict(zip(COINS, self.flags.unbind(-1), strict=True))
        value = dict(zip(VALUES, self.values.unbind(-1), strict=True))
        return {
            "crop_box": self.crop_box,
            "flip": flag["flip"],
            "jitter_applied": flag["jitter"],
            "brightness": value["brightness"],
            "contrast": value["contrast"],
            "saturation": value["saturation"],
            "hue": value["hue"],
            "jitter_order": self.order,
            "grayscale": flag["grayscale"],
            "blur_applied": flag["blur"],
            "blur_sigma": value["blur_sigma"],
            "solarize": flag["solarize"],
            "rotation_angle": value["rotation_angle"],
        }


def derive_params(table: ViewTable, draws: Tensor) -> PackedParams:
    """Params of ``V`` views from their draws ``V x n x DRAW_COLUMNS``, on ``draws``' device.

    Pure fixed-shape tensor maths: every op is skipped by its coin (``draw < p``) through neutral
    values, never by selecting rows.
    """
    coins = draws[..., _COIN:_VALUE] < table.probability
    value_on = coins.index_select(-1, table.value_coin)
    values = torch.addcmul(table.value_low, table.value_span, draws[..., _VALUE:_ORDER])
    shuffled = value_on[..., :1] & table.random_order  # value 0's coin: the jitter coin
    return PackedParams(
        crop_box=crop_boxes(draws[..., :_COIN], table.crop),
        flags=coins.to(torch.float32),
        values=torch.where(value_on, values, table.value_neutral).to(torch.float32),
        order=torch.where(shuffled, draws[..., _ORDER:].argsort(dim=-1), table.neutral_order),
    )


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    tries: int = CROP_TRIES,
) -> Tensor:
    """``n x 4`` RandomResizedCrop boxes (see ``crop_boxes``) drawn from ``generator``."""
    draws = draw_uniforms(generator, n, 2 * tries + 2)
    return crop_boxes(draws[None], CropTable.build([scale], [ratio], height, width))[0]


def chunk_sizes(batch_size: int, chunks: int) -> list[int]:
    """Sizes of ``chunks`` contiguous chunks covering ``batch_size`` rows (as ``torch.tensor_split``)."""
    if not 1 <= chunks <= batch_size:
        raise ValueError(f"chunks must be in [1, batch size = {batch_size}], got {chunks}")
    base, extra = divmod(batch_size, chunks)
    return [base + 1 if k < extra else base for k in range(chunks)]


def chunk_count(batch_size: int, chunk_size: int) -> int:
    """Chunks of at least ``chunk_size`` rows: ``max(1, batch_size // chunk_size)``."""
    return max(1, batch_size // chunk_size)


def chunk_index(batch_size: int, chunks: int) -> Tensor:
    """``B`` int64 chunk of every row, sizes as ``chunk_sizes`` (CPU)."""
    return torch.repeat_interleave(torch.arange(chunks), torch.tensor(chunk_sizes(batch_size, chunks)))


def sample_view_params(
    cfg: ViewConfig,
    batch_size: int,
    height: int,
    width: int,
    generator: torch.Generator,
    chunks: int | None = None,
) -> dict[str, Tensor]:
    """Sample one view's params for ``batch_size`` source images of ``height x width`` pixels (CPU).

    With ``chunks = K`` the batch is split into K contiguous chunks (sizes as ``torch.tensor_split``)
    and every row of a chunk shares one parameter set (K rows of draws instead of B).
    """
    rows = batch_size if chunks is None else chunks
    if chunks is not None:
        chunk_sizes(batch_size, chunks)  # validates
    draws = draw_uniforms(generator, rows)
    params = derive_params(ViewTable.build([cfg], height, width), draws[None]).select(0).unpack()
    if chunks is None:
        return params
    rows_of = chunk_index(batch_size, chunks)
    return {key: value.index_select(0, rows_of) for key, value in params.items()}


def neutral_params(crop_box: Tensor) -> dict[str, Tensor]:
    """Params that only crop (``crop_box``: ``B x 4`` normalised) and leave every other op neutral."""
    n = crop_box.shape[0]
    zeros = torch.zeros(n, device=crop_box.device)
    ones = torch.ones(n, device=crop_box.device)
    return {
        "crop_box": crop_box.float(),
        "flip": zeros.clone(),
        "jitter_applied": zeros.clone(),
        "brightness": ones.clone(),
        "contrast": ones.clone(),
        "saturation": ones.clone(),
        "hue": zeros.clone(),
        "jitter_order": torch.arange(len(JITTER_OPS), device=crop_box.device).expand(n, -1).contiguous(),
        "grayscale": zeros.clone(),
        "blur_applied": zeros.clone(),
        "blur_sigma": zeros.clone(),
        "solarize": zeros.clone(),
        "rotation_angle": zeros.clone(),
    }


def params_to_vector(params: dict[str, Tensor]) -> Tensor:
    """Flatten one view's params to ``B x 16`` float32 in the order of ``PARAM_VECTOR_LAYOUT``.

    The rotation angle enters as (cos, sin) so that the vector is continuous across +-180 degrees.
    """
    missing = [key for key in PARAM_KEYS if key != "jitter_order" and key not in params]
    if missing:
        raise KeyError(f"params lack {missing}")
    radians = torch.deg2rad(params["rotation_angle"].float())
    scalars = [params[key].float() for key in PARAM_VECTOR_LAYOUT[4:14]]
    columns = [params["crop_box"].float(), *(s[:, None] for s in scalars), radians.cos()[:, None]]
    return torch.cat([*columns, radians.sin()[:, None]], dim=1)
