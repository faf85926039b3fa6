"""``ViewAugmenter``: decoded uint8 batches -> normalised views + the params that made them."""

from __future__ import annotations

import torch
from kornia.enhance import normalize
from torch import Tensor

from augment.batch import ViewBatch
from augment.config import AugmentConfig
from augment.ops import apply_view
from augment.recipes import Recipe, ViewSpec, build_recipe
from augment.relative import relative_vectors
from augment.sampling import chunk_sizes, sample_view_params


def params_to_device(params: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Move one view's params to ``device``, one transfer per dtype (they are tiny: latency dominates)."""
    if device.type == "cpu":
        return dict(params)
    out: dict[str, Tensor] = {}
    for dtype in {value.dtype for value in params.values()}:
        keys = [key for key, value in params.items() if value.dtype == dtype]
        flat = [params[key].reshape(params[key].shape[0], -1) for key in keys]
        moved = torch.cat(flat, dim=1).to(device).split([f.shape[1] for f in flat], dim=1)
        out.update({key: m.reshape(params[key].shape) for key, m in zip(keys, moved, strict=True)})
    return {key: out[key] for key in params}


class ViewAugmenter:
    """Batched augmentation on the images' device, with params sampled on the CPU.

    Args:
        cfg: the ``augment`` config section (recipe, crop scale, view sources, overrides).
        mean, std: per-channel normalisation of the encoder (applied to [0, 1] images).
        output_size: side of the output views unless a recipe view sets its own.
    """

    def __init__(
        self, cfg: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...], output_size: int
    ) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 channels, got {mean} and {std}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        if output_size < 1:
            raise ValueError(f"output_size must be positive, got {output_size}")
        self.cfg = cfg
        self.recipe: Recipe = build_recipe(cfg)
        self.output_size = output_size
        self._mean = torch.tensor(mean, dtype=torch.float32)
        self._std = torch.tensor(std, dtype=torch.float32)

    @property
    def num_views(self) -> int:
        return len(self.recipe.views)

    def __call__(
        self,
        images: Tensor,
        generator: torch.Generator,
        chunks: int | None = None,
        *,
        labels: Tensor | None = None,
        latents: dict[str, Tensor] | None = None,
    ) -> ViewBatch:
        """Augment ``images`` (``uint8`` ``B x V x 3 x H x W``) into the recipe's views.

        ``generator`` is a CPU generator, the only source of randomness. With ``chunks = K`` every
        row of each of K contiguous chunks shares its params (per view); recipe views marked
        ``chunked`` always share per chunk of ``cfg.chunk_size`` rows. ``labels``/``latents`` are
        passed through to the batch; ``relative`` holds the recipe's relative transforms
        (``augment.relative``).
        """
        if images.dtype != torch.uint8 or images.dim() != 5 or images.shape[2] != 3:
            shape = tuple(images.shape)
            raise ValueError(f"expected uint8 B x V x 3 x H x W images, got {images.dtype} {shape}")
        batch, decoded, _, height, width = images.shape
        needed = max(spec.source for spec in self.recipe.views) + 1
        if needed > decoded:
            raise ValueError(
                f"recipe {self.cfg.recipe!r} cuts views from {needed} decoded views, the batch has "
                f"{decoded} (set data.views >= {needed})"
            )

        mean, std = self._mean.to(images.device), self._std.to(images.device)
        sources: dict[int, Tensor] = {}
        unturned: list[Tensor] = []
        views: list[Tensor] = []
        params: list[dict[str, Tensor]] = []
        for spec in self.recipe.views:
            if spec.same_params_as is not None:
                view, device_params = unturned[spec.same_params_as], params[spec.same_params_as]
                device_params = {k: v for k, v in device_params.items() if k != "chunk"}
            else:
                if spec.source not in sources:
                    sources[spec.source] = images[:, spec.source].float().div_(255.0)
                view_chunks = chunk_count(batch, self.cfg.chunk_size) if spec.chunked else chunks
                host = sample_view_params(spec.config, batch, height, width, generator, view_chunks)
                device_params = params_to_device(host, images.device)
                view = apply_view(sources[spec.source], device_params, spec.config, self._size(spec),
                                  host=host)
                view = normalize(view, mean, std)
                if spec.chunked:
                    device_params["chunk"] = chunk_ids(batch, view_chunks, images.device)
            unturned.append(view)
            if spec.quarter_turns % 4:
                view, device_params = quarter_turn(view, device_params, spec.quarter_turns)
            views.append(view)
            params.append(device_params)
        relative = relative_vectors(self.recipe.relative, [spec.source for spec in self.recipe.views],
                                    params, latents)
        return ViewBatch(views=views, params=params, labels=labels, latents=latents, relative=relative)

    def _size(self, spec: ViewSpec) -> int:
        if spec.output_size is not None:
            return spec.output_size
        if spec.output_fraction is not None:
            return max(1, round(spec.output_fraction * self.output_size))
        return self.output_size


def chunk_count(batch_size: int, chunk_size: int) -> int:
    """Chunks of at least ``chunk_size`` rows: ``max(1, batch_size // chunk_size)``."""
    return max(1, batch_size // chunk_size)


def chunk_ids(batch_size: int, chunks: int, device: torch.device) -> Tensor:
    """``B`` int64 chunk index of every row, chunk sizes as ``augment.sampling.chunk_sizes``."""
    sizes = torch.tensor(chunk_sizes(batch_size, chunks))
    return torch.repeat_interleave(torch.arange(chunks), sizes).to(device)


def quarter_turn(view: Tensor, params: dict[str, Tensor], turns: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Rotate ``view`` by ``turns * 90`` degrees counter-clockwise as displayed and record it.

    ``torch.rot90`` over (H, W) is exact and commutes with every photometric op and the
    per-channel normalisation, so turning the finished view equals turning inside the op chain.
    ``rotation_angle`` becomes ``angle + 90 turns`` wrapped to ``[-180, 180)``.
    """
    angle = torch.remainder(params["rotation_angle"] + 90.0 * turns + 180.0, 360.0) - 180.0
    return torch.rot90(view, turns, dims=(-2, -1)), {**params, "rotation_angle": angle}


