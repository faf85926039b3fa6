"""The fused view program of a recipe: uniform draws + uint8 images -> views and params, on the device.

``ViewProgram.run(images, draws, constants)`` is a pure function with a fixed op sequence for a
given recipe and input shape: every op runs on every row (neutral parameters make it a no-op),
nothing is read back to the host, so ``torch.compile(run, fullgraph=True)`` and CUDA-graph capture
work. Structure that does not depend on the data is settled when the program is built:

- views that share a side and a blur kernel form one *group* and go through the ops together as
  one batch of ``views x B`` rows (E-SSL's half-size crop is a second group);
- an op that no view of a group can apply (probability or range 0) is left out of that group.

Params of all views are derived together (``augment.sampling.derive_params``) from one tensor of
draws. ``constants`` (``ProgramConstants``) holds every tensor the program needs besides its
inputs, built once per (device, batch size, source size, chunks) by ``ViewProgram.constants``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import Tensor

from augment.fused import (
    Colour,
    PixelGrid,
    blur_taps,
    colour_jitter,
    gaussian_blur,
    geometry,
    grayscale,
    normalise,
    quarter_turn,
    solarize,
)
from augment.recipes import Recipe, ViewSpec
from augment.sampling import (
    COINS,
    DRAW_COLUMNS,
    VALUES,
    PackedParams,
    ViewTable,
    chunk_count,
    chunk_index,
    chunk_sizes,
    derive_params,
)

_FLAG = {name: k for k, name in enumerate(COINS)}
_VALUE = {name: k for k, name in enumerate(VALUES)}


@dataclass(frozen=True)
class ViewGroup:
    """Views with one side and blur kernel, augmented together; which ops any of them can apply."""

    views: tuple[int, ...]
    size: int
    blur_kernel: int
    rotate: bool
    jitter: bool
    hue: bool
    shuffled: bool
    grayscale: bool
    blur: bool
    solarize: bool

    @classmethod
    def of(cls, specs: list[ViewSpec], views: tuple[int, ...], size: int) -> ViewGroup:
        configs = [specs[v].config for v in views]
        jitter = [c for c in configs if c.jitter_p > 0]
        return cls(
            views=views,
            size=size,
            blur_kernel=configs[0].blur_kernel_size(size),
            rotate=any(c.rotation_p > 0 and c.rotation_degrees > 0 for c in configs),
            jitter=any(c.brightness > 0 or c.contrast > 0 or c.saturation > 0 or c.hue > 0 for c in jitter),
            hue=any(c.hue > 0 for c in jitter),
            shuffled=any(c.jitter_random_order for c in jitter),
            grayscale=any(c.grayscale_p > 0 for c in configs),
            blur=any(c.blur_p > 0 for c in configs),
            solarize=any(c.solarize_p > 0 for c in configs),
        )


@dataclass(frozen=True)
class ProgramConstants:
    """Device tensors of one program for one (device, batch size, source size, chunks).

    ``table``: per-view sampling constants in group order; ``rows``: ``V x B`` row of the draws
    each (view, sample) uses (chunked views repeat their chunk's row); per group: ``sources``
    (decoded view of each view), ``grids`` (``PixelGrid``), ``blur_taps`` and ``thresholds``
    (solarize, one per row); ``chunks``: per view in group order, ``B`` chunk index or ``None``;
    ``colour``; ``scale``/``bias``: the normalisation.
    """

    table: ViewTable
    rows: Tensor
    sources: tuple[Tensor, ...]
    grids: tuple[PixelGrid, ...]
    blur_taps: tuple[Tensor, ...]
    thresholds: tuple[Tensor, ...]
    chunks: tuple[Tensor | None, ...]
    colour: Colour
    scale: Tensor
    bias: Tensor


class ViewProgram:
    """The fused program of ``recipe`` (see the module docstring).

    Args:
        recipe: the views; ``output_size``: side of views that do not set their own.
        mean, std: per-channel normalisation of the encoder.
        chunk_size: rows per chunk of the recipe's ``chunked`` views.
    """

    def __init__(self, recipe: Recipe, output_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 chunk_size: int) -> None:
        self.recipe, self.chunk_size = recipe, chunk_size
        self.mean, self.std = mean, std
        specs = list(recipe.views)
        # Views with their own params, in recipe order: the order of the draws.
        self.drawn = tuple(i for i, spec in enumerate(specs) if spec.same_params_as is None)
        keys: dict[tuple[int, int], list[int]] = {}
        for i in self.drawn:
            size = specs[i].side(output_size)
            keys.setdefault((size, specs[i].config.blur_kernel_size(size)), []).append(i)
        self.groups = tuple(ViewGroup.of(specs, tuple(views), size) for (size, _), views in keys.items())
        self.order = tuple(v for group in self.groups for v in group.views)  # derivation order

    def draw_rows(self, batch_size: int, chunks: int | None) -> list[int]:
        """Rows of draws per drawn view, recipe order: ``B``, or the chunk count of chunked views."""
        specs = self.recipe.views
        plain = batch_size if chunks is None else chunks
        rows = [chunk_count(batch_size, self.chunk_size) if specs[i].chunked else plain for i in self.drawn]
        for count in rows:
            chunk_sizes(batch_size, count)  # validates 1 <= count <= B
        return rows

    def constants(self, device: torch.device, batch_size: int, height: int, width: int,
                  chunks: int | None) -> ProgramConstants:
        """Build the program's constant tensors on ``device`` (host work and one copy each: cache it)."""
        specs = self.recipe.views
        counts = dict(zip(self.drawn, self.draw_rows(batch_size, chunks), strict=True))
        offsets = dict(zip(self.drawn, accumulate(counts.values(), initial=0), strict=False))
        rows, chunk_ids = [], []
        for v in self.order:
            count = counts[v]
            index = torch.arange(batch_size) if count == batch_size else chunk_index(batch_size, count)
            rows.append(offsets[v] + index)
            chunk_ids.append(chunk_index(batch_size, count).to(device) if specs[v].chunked else None)
        thresholds = [
            torch.tensor([specs[v].config.solarize_threshold for v in group.views],
                         dtype=torch.float32).repeat_interleave(batch_size).to(device)
            for group in self.groups
        ]
        std = torch.tensor(self.std, dtype=torch.float32)
        return ProgramConstants(
            table=ViewTable.build([specs[v].config for v in self.order], height, width).to(device),
            rows=torch.stack(rows).to(device),
            sources=tuple(torch.tensor([specs[v].source for v in g.views]).to(device) for g in self.groups),
            grids=tuple(PixelGrid.build(g.size, height, width, device) for g in self.groups),
            blur_taps=tuple(blur_taps(g.blur_kernel, device) for g in self.groups),
            thresholds=tuple(thresholds),
            chunks=tuple(chunk_ids),
            colour=Colour.build(device),
            scale=(1.0 / std).to(device),
            bias=(-torch.tensor(self.mean, dtype=torch.float32) / std).to(device),
        )

    def run(self, images: Tensor, draws: Tensor, constants: ProgramConstants
            ) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        """Views and params of ``images`` (uint8 ``B x V x 3 x H x W``) from ``draws``.

        ``draws``: ``sum(draw_rows) * DRAW_COLUMNS`` float64 uniforms on the images' device, the
        drawn views' rows one after the other in recipe order. Returns one view and one params dict
        per recipe view, as ``augment.batch.ViewBatch`` holds them.
        """
        batch = images.shape[0]
        derived = derive_params(constants.table, draws.view(-1, DRAW_COLUMNS)[constants.rows])
        specs = self.recipe.views
        views: list[Tensor] = [images] * len(specs)  # placeholders, all replaced below
        params: list[dict[str, Tensor]] = [{}] * len(specs)
        start = 0
        for g, group in enumerate(self.groups):
            stop = start + len(group.views)
            out = self._augment(images, derived.select(slice(start, stop)).flatten(), group, constants, g)
            for local, view in enumerate(out.view(stop - start, batch, *out.shape[1:]).unbind(0)):
                v = group.views[local]
                views[v], params[v] = view, derived.select(start + local).unpack()
                chunk = constants.chunks[start + local]
                if chunk is not None:
                    params[v]["chunk"] = chunk
            start = stop
        unturned = list(views)
        for i, spec in enumerate(specs):
            if spec.same_params_as is not None:
                views[i] = unturned[spec.same_params_as]
                params[i] = {k: v for k, v in params[spec.same_params_as].items() if k != "chunk"}
            if spec.quarter_turns % 4:
                views[i], params[i] = quarter_turn(views[i], params[i], spec.quarter_turns)
        return views, params

    @staticmethod
    def _augment(images: Tensor, p: PackedParams, group: ViewGroup, constants: ProgramConstants,
                 g: int) -> Tensor:
        """The ops of one group on its ``views x B`` rows: normalised ``N x 3 x size x size``."""
        flags, values = p.flags.unbind(-1), p.values.unbind(-1)
        sources = images.transpose(0, 1).index_select(0, constants.sources[g]).flatten(0, 1).float()
        angle = values[_VALUE["rotation_angle"]] if group.rotate else None
        x = geometry(sources, p.crop_box, flags[_FLAG["flip"]], angle, constants.grids[g], scale=1.0 / 255.0)
        if group.jitter:  # values[..., :4]: brightness, contrast, saturation, hue
            x = colour_jitter(x, p.values[:, :4], p.order, constants.colour, group.shuffled, group.hue)
        if group.grayscale:
            x = grayscale(x, flags[_FLAG["grayscale"]] > 0.5, constants.colour)
        if group.blur:
            x = gaussian_blur(x, values[_VALUE["blur_sigma"]], constants.blur_taps[g])
        if group.solarize:
            x = solarize(x, torch.where(flags[_FLAG["solarize"]] > 0.5, constants.thresholds[g], 2.0))
        return normalise(x, constants.scale, constants.bias)
