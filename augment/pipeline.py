"""``ViewAugmenter``: decoded uint8 batches -> normalised views + the params that made them.

Default engine ``fused`` (``augment.program``): one draw of uniforms from the caller's CPU
generator for all views, copied to the images' device once (from pinned memory, without waiting),
then a fixed-shape device program that never reads a value back. ``augment.compile`` wraps that
program in ``torch.compile`` (optionally with CUDA graphs). Engine ``reference``
(``augment.reference``) is the op-by-op implementation; both give the same params.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from augment.batch import ViewBatch, check_images
from augment.config import AugmentConfig
from augment.program import ProgramConstants, ViewProgram
from augment.recipes import Recipe, build_recipe
from augment.reference import ReferenceViewAugmenter
from augment.relative import relative_vectors
from augment.sampling import draw_uniforms

_CACHED_SHAPES = 8  # constant sets kept per augmenter (batch/image sizes seen, e.g. a short last batch)

Program = Callable[[Tensor, Tensor, ProgramConstants], tuple[list[Tensor], list[dict[str, Tensor]]]]


class ViewAugmenter:
    """Batched augmentation on the images' device, with params drawn from a CPU generator.

    Args:
        cfg: the ``augment`` config section (recipe, crop scale, view sources, overrides, engine).
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
        self.program = ViewProgram(self.recipe, output_size, tuple(mean), tuple(std), cfg.chunk_size)
        self.reference = ReferenceViewAugmenter(self.recipe, cfg.recipe, tuple(mean), tuple(std),
                                                output_size, cfg.chunk_size)
        self._run: Program = compiled(self.program.run, cfg.compile)
        self._constants: dict[tuple, ProgramConstants] = {}

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
        if self.cfg.engine == "reference":
            return self.reference(images, generator, chunks, labels=labels, latents=latents)
        check_images(images, max(spec.source for spec in self.recipe.views) + 1, self.cfg.recipe)
        batch, _, _, height, width = images.shape
        constants = self.constants(images.device, batch, height, width, chunks)
        draws = draw_to_device(generator, sum(self.program.draw_rows(batch, chunks)), images.device)
        if self.cfg.compile == "cudagraphs" and images.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the previous batch's outputs may be reused
        views, params = self._run(images, draws, constants)
        relative = relative_vectors(self.recipe.relative, [spec.source for spec in self.recipe.views],
                                    params, latents)
        return ViewBatch(views=views, params=params, labels=labels, latents=latents, relative=relative)

    def constants(self, device: torch.device, batch: int, height: int, width: int,
                  chunks: int | None) -> ProgramConstants:
        """The program's constants for this input shape, built on first use (one host copy each)."""
        key = (device, batch, height, width, chunks)
        if key not in self._constants:
            if len(self._constants) >= _CACHED_SHAPES:
                self._constants.clear()
            self._constants[key] = self.program.constants(device, batch, height, width, chunks)
        return self._constants[key]


def draw_to_device(generator: torch.Generator, rows: int, device: torch.device) -> Tensor:
    """``rows x DRAW_COLUMNS`` uniforms from ``generator``, flat, on ``device``: one draw, one copy.

    On CUDA the draw lands in pinned memory and the copy is asynchronous (a copy from pageable
    memory would wait for the stream); the caching host allocator keeps the buffer alive until
    the copy has run.
    """
    cuda = device.type == "cuda"
    return draw_uniforms(generator, rows, pin_memory=cuda).view(-1).to(device, non_blocking=cuda)


def compiled(program: Program, mode: str) -> Program:
    """``program`` as ``augment.compile`` asks: as is, ``torch.compile``-d, or with CUDA graphs."""
    if mode == "none":
        return program
    options = {"mode": "reduce-overhead"} if mode == "cudagraphs" else {}
    return torch.compile(program, fullgraph=True, dynamic=False, **options)  # type: ignore[return-value]
