"""The reference augmenter: params sampled per view on the CPU, applied op by op (``augment.ops``).

This was the pipeline before the fused program (``augment.program``). It stays as the slow, plain
implementation the fused one is tested and benchmarked against, and can be selected with
``augment.engine: reference``. On a GPU it copies host index lists per op (host-device traffic
inside the step), which is what the fused program removes. Given the same generator it draws the
same numbers, so both engines produce the same params.
"""

from __future__ import annotations

import torch
from kornia.enhance import normalize
from torch import Tensor

from augment.batch import ViewBatch, check_images
from augment.fused import quarter_turn
from augment.ops import apply_view
from augment.recipes import Recipe
from augment.relative import relative_vectors
from augment.sampling import chunk_count, chunk_index, sample_view_params


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


class ReferenceViewAugmenter:
    """``recipe``'s views, one view and one op at a time (see the module docstring).

    Args:
        recipe: the views to make; ``name``: the recipe's name (for error messages).
        mean, std: per-channel normalisation of the encoder; ``output_size``: default view side.
        chunk_size: rows per chunk of the recipe's ``chunked`` views.
    """

    def __init__(self, recipe: Recipe, name: str, mean: tuple[float, ...], std: tuple[float, ...],
                 output_size: int, chunk_size: int) -> None:
        self.recipe, self.name = recipe, name
        self.output_size, self.chunk_size = output_size, chunk_size
        self._mean = torch.tensor(mean, dtype=torch.float32)
        self._std = torch.tensor(std, dtype=torch.float32)

    def __call__(self, images: Tensor, generator: torch.Generator, chunks: int | None = None, *,
                 labels: Tensor | None = None, latents: dict[str, Tensor] | None = None) -> ViewBatch:
        """Same contract as ``augment.pipeline.ViewAugmenter.__call__``."""
        check_images(images, max(spec.source for spec in self.recipe.views) + 1, self.name)
        batch, _, _, height, width = images.shape
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
                view_chunks = chunk_count(batch, self.chunk_size) if spec.chunked else chunks
                host = sample_view_params(spec.config, batch, height, width, generator, view_chunks)
                device_params = params_to_device(host, images.device)
                view = apply_view(sources[spec.source], device_params, spec.config,
                                  spec.side(self.output_size), host=host)
                view = normalize(view, mean, std)
                if spec.chunked:
                    device_params["chunk"] = chunk_index(batch, view_chunks).to(images.device)
            unturned.append(view)
            if spec.quarter_turns % 4:
                view, device_params = quarter_turn(view, device_params, spec.quarter_turns)
            views.append(view)
            params.append(device_params)
        relative = relative_vectors(self.recipe.relative, [spec.source for spec in self.recipe.views],
                                    params, latents)
        return ViewBatch(views=views, params=params, labels=labels, latents=latents, relative=relative)
