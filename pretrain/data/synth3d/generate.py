"""Generate synthetic 3D object shards: sample latents per object, render its views, write tars.

Sample ``i`` is object ``i // classes`` of class ``i % classes`` (classes interleave, so every
shard is class-balanced). Its latents come from a generator seeded by ``(seed, i)`` only, so a
sample never depends on batch sizes or on the other samples, and the same seed gives the same PNG
bytes (the renderer is per-pixel deterministic too). ``image_format="jpeg"`` stores the views as
``view{i}.jpg`` instead (``jpeg_quality``): the fast-decoding form of the 224 px benchmark
(``configs/bench224.yaml`` renders 256 px JPEG views on the spot).

What varies per view (3DIEBench varies the pose per view): the rotation always. By default the
object hue, background hue and light are fixed per *object* so that views differ by rotation only
(a clean equivariance target); ``hue_jitter_per_view``, ``background_per_view`` and
``light_per_view`` turn on per-view variation of the other latents, which are recorded per view
either way. Fixed colours also let the views of an object be matched by colour alone, a shortcut
that objectives trained on rendering pairs with light augmentation take (SIE, seq-JEPA; see
docs/results.md); the ``configs/*-synth3d.yaml`` turn all three on.
"""

from __future__ import annotations

import hashlib

import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from augment.quaternion import quat_rotate, random_quaternion
from pretrain.data.format import CLASS_KEY, INDEX_NAME, LATENTS_KEY, view_key
from pretrain.data.synth3d.render import RenderSettings, render_views
from pretrain.data.synth3d.shapes import MAX_PARAMS, SHAPE_NAMES, SHAPES, pad_params
from pretrain.data.writer import ShardSetWriter

log = logging.getLogger("pretrain.data")

SHARD_PREFIX = "synth3d"


class Synth3DConfig(BaseModel):
    """What to generate. Defaults give a small, quick embedded dataset."""

    model_config = ConfigDict(extra="forbid")

    classes: int = Field(12, ge=1, le=len(SHAPES), description="first N shape classes of SHAPES")
    instances_per_class: int = Field(100, ge=1, description="objects per class")
    views: int = Field(8, ge=1, description="rendered views per object")
    size: int = Field(64, ge=8, le=1024, description="image side in pixels")
    seed: int = Field(0, ge=0)
    shard_size: int = Field(256, ge=1, description="samples (objects) per tar")
    max_angle_deg: float | None = Field(
        None, gt=0, le=180,
        description="None: poses uniform on SO(3); else rotation from the canonical pose by a "
                    "uniform axis and an angle uniform in [0, max_angle_deg]")
    object_hue_range: tuple[float, float] = Field((0.0, 1.0), description="per-object hue range")
    background_hue_range: tuple[float, float] = Field((0.0, 1.0))
    hue_jitter_per_view: float = Field(
        0.0, ge=0, le=0.5, description="per-view object hue offset, uniform in +-this (wraps)")
    background_per_view: bool = Field(False, description="sample the background hue per view")
    light_dir: tuple[float, float, float] = Field(
        (-0.4, 0.55, 0.73), description="mean direction towards the light (world frame)")
    light_jitter_deg: float = Field(30.0, ge=0, le=90, description="light tilted by at most this")
    light_per_view: bool = Field(False, description="sample the light per view, not per object")
    render_batch_views: int = Field(512, ge=1, description="views per render call (speed only)")
    image_format: Literal["png", "jpeg"] = Field(
        "png", description="how views are stored: png (lossless) or jpeg (several times faster "
                           "to decode; decodable on the GPU with data.gpu_decode)")
    jpeg_quality: int = Field(90, ge=1, le=95, description="JPEG quality with image_format=jpeg")

    def cache_key(self) -> str:
        """Ten hex digits of the SHA-256 of the settings: the name of the folder a rendered set is
        cached in. The storage format entered the settings after sets had been cached, so it
        counts only when it is not the original PNG (and the JPEG quality only for JPEG): the
        folders of existing PNG sets keep their names, and runs on them still resume."""
        settings = self.model_dump(mode="json")
        if settings["image_format"] == "png":
            del settings["image_format"], settings["jpeg_quality"]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]

    @model_validator(mode="after")
    def _check_ranges(self) -> "Synth3DConfig":
        for name in ("object_hue_range", "background_hue_range"):
            low, high = getattr(self, name)
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"{name} must satisfy 0 <= low <= high <= 1, got {(low, high)}")
        if math.hypot(*self.light_dir) < 1e-6:
            raise ValueError("light_dir must be non-zero")
        return self

    @property
    def samples(self) -> int:
        return self.classes * self.instances_per_class


@dataclass(frozen=True)
class SampleLatents:
    """Ground truth of one object: class, shape parameters and per-view latents (float32)."""

    index: int
    class_id: int
    params: Tensor          # K (the class's own parameter count)
    quaternion: Tensor      # V x 4, canonical [w, x, y, z], object-to-world
    object_hue: Tensor      # V
    background_hue: Tensor  # V
    light_dir: Tensor       # V x 3, unit, world frame

    def to_json(self) -> dict[str, Any]:
        """The ``latents.json`` payload (float32 values, so reading back is exact)."""
        spec = SHAPES[self.class_id]
        return {
            "quaternion": self.quaternion.tolist(),
            "object_hue": self.object_hue.tolist(),
            "background_hue": self.background_hue.tolist(),
            "light_dir": self.light_dir.tolist(),
            "class_name": spec.name,
            "shape_params": self.params.tolist(),
            "param_names": list(spec.param_names),
            "index": self.index,
        }

    @staticmethod
    def from_json(obj: dict[str, Any], class_id: int) -> "SampleLatents":
        """Inverse of ``to_json`` (``class_id`` comes from the sample's ``cls``)."""
        f32 = torch.float32
        return SampleLatents(
            index=int(obj.get("index", -1)),
            class_id=class_id,
            params=torch.tensor(obj["shape_params"], dtype=f32),
            quaternion=torch.tensor(obj["quaternion"], dtype=f32),
            object_hue=torch.tensor(obj["object_hue"], dtype=f32),
            background_hue=torch.tensor(obj["background_hue"], dtype=f32),
            light_dir=torch.tensor(obj["light_dir"], dtype=f32),
        )


@dataclass(frozen=True)
class Synth3DReport:
    """What ``generate_synth3d`` wrote and how fast."""

    samples: int
    views: int
    seconds: float
    views_per_s: float
    out_dir: Path


def _sample_generator(seed: int, index: int) -> torch.Generator:
    # SeedSequence mixes (seed, index) into well-separated streams; neighbours stay independent.
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> Tensor:
    """``n`` float64 values uniform in ``[low, high)``."""
    return low + torch.rand(n, generator=g, dtype=torch.float64) * (high - low)


def _hue(h: Tensor) -> Tensor:
    """Wrap to ``[0, 1)`` in float32 (a value just below 1 may round up to 1.0: that is hue 0)."""
    h = torch.remainder(h, 1.0).to(torch.float32)
    return torch.where(h >= 1.0, torch.zeros_like(h), h)


def _lights(n: int, cfg: Synth3DConfig, g: torch.Generator) -> Tensor:
    base = torch.tensor(cfg.light_dir, dtype=torch.float64)
    base = base / base.norm()
    if cfg.light_jitter_deg == 0.0:
        return base.to(torch.float32).expand(n, 3).clone()
    tilt = random_quaternion(n, g, max_angle_deg=cfg.light_jitter_deg, dtype=torch.float64)
    light = quat_rotate(tilt, base.expand(n, 3))
    return (light / light.norm(dim=-1, keepdim=True)).to(torch.float32)


def sample_latents(cfg: Synth3DConfig, index: int) -> SampleLatents:
    """Latents of sample ``index``: a pure function of ``cfg`` and ``index``."""
    g = _sample_generator(cfg.seed, index)
    class_id = index % cfg.classes
    v = cfg.views
    params = SHAPES[class_id].sample_params(1, g)[0]
    hue = _uniform(1, *cfg.object_hue_range, g).expand(v)
    if cfg.hue_jitter_per_view > 0.0:
        hue = hue + _uniform(v, -cfg.hue_jitter_per_view, cfg.hue_jitter_per_view, g)
    bg = _uniform(v if cfg.background_per_view else 1, *cfg.background_hue_range, g).expand(v)
    light = _lights(v if cfg.light_per_view else 1, cfg, g).expand(v, 3).clone()
    quats = random_quaternion(v, g, max_angle_deg=cfg.max_angle_deg)
    hue, bg = _hue(hue), _hue(bg)
    return SampleLatents(index, class_id, params, quats, hue, bg, light)


def render_samples(samples: list[SampleLatents], size: int,
                   settings: RenderSettings | None = None) -> Tensor:
    """Render every view of ``samples``: ``uint8`` ``len(samples) x V x 3 x size x size``."""
    views = samples[0].quaternion.shape[0]
    class_ids = torch.tensor([s.class_id for s in samples]).repeat_interleave(views)
    params = torch.stack([pad_params(s.params) for s in samples]).repeat_interleave(views, dim=0)
    images = render_views(
        class_ids,
        params,
        torch.cat([s.quaternion for s in samples]),
        torch.cat([s.object_hue for s in samples]),
        torch.cat([s.background_hue for s in samples]),
        torch.cat([s.light_dir for s in samples]),
        size,
        settings,
    )
    return images.reshape(len(samples), views, 3, size, size)


def encode_view(image: Tensor, image_format: str = "png", quality: int = 90) -> bytes:
    """``png`` or ``jpeg`` (baseline, 4:2:0, ``quality``) bytes of a ``uint8`` ``3 x H x W``
    image."""
    buf = io.BytesIO()
    img = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    if image_format == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def sample_files(latents: SampleLatents, views: Tensor, image_format: str = "png",
                 quality: int = 90) -> dict[str, bytes]:
    """The webdataset files of one sample (``pretrain.data.format``): an image per view
    (``view{i}.png``, or ``view{i}.jpg`` for ``image_format="jpeg"``), cls, latents."""
    ext = "jpg" if image_format == "jpeg" else "png"
    files = {view_key(i, ext): encode_view(img, image_format, quality)
             for i, img in enumerate(views)}
    files[CLASS_KEY] = str(latents.class_id).encode("ascii")
    files[LATENTS_KEY] = json.dumps(latents.to_json()).encode("utf-8")
    return files


def index_metadata(cfg: Synth3DConfig) -> dict[str, Any]:
    """Extra ``index.json`` keys describing a synthetic 3D shard set."""
    return {
        "kind": "synth3d",
        "classes": list(SHAPE_NAMES[: cfg.classes]),
        "views": cfg.views,
        "image_size": cfg.size,
        "seed": cfg.seed,
        "max_params": MAX_PARAMS,
        "config": cfg.model_dump(mode="json"),
    }


def ensure_synth3d(cfg: Synth3DConfig, out_dir: str | Path,
                   progress: Callable[[int, int], None] | None = None) -> Path:
    """``out_dir`` holding the set ``cfg`` describes: generated unless a finished one (its
    index written last) is already there, so a cache folder is rendered once."""
    out = Path(out_dir)
    if not (out / INDEX_NAME).is_file():
        log.info("rendering synthetic 3D data into %s", out)
        generate_synth3d(cfg, out, progress=progress)
    return out


def generate_synth3d(cfg: Synth3DConfig, out_dir: str | Path,
                     progress: Callable[[int, int], None] | None = None) -> Synth3DReport:
    """Render ``cfg.samples`` objects into ``{SHARD_PREFIX}-NNNNNN.tar`` shards under ``out_dir``.

    ``progress(done, total)`` is called with sample counts after each rendered batch; without
    one, progress lines with an ETA go to stderr (rendering can take minutes).
    """
    if progress is None:
        from pretrain.progress import progress_lines

        progress = progress_lines(f"synth3d {Path(out_dir).name}: rendering objects")
    out = Path(out_dir)
    total = cfg.samples
    per_batch = max(1, cfg.render_batch_views // cfg.views)
    start = time.perf_counter()
    with ShardSetWriter(out, shard_size=cfg.shard_size, prefix=SHARD_PREFIX,
                        metadata=index_metadata(cfg)) as writer:
        for first in range(0, total, per_batch):
            batch = [sample_latents(cfg, i) for i in range(first, min(first + per_batch, total))]
            images = render_samples(batch, cfg.size)
            for latents, views in zip(batch, images):
                writer.write(f"{latents.index:08d}", sample_files(
                    latents, views, cfg.image_format, cfg.jpeg_quality))
            progress(first + len(batch), total)
    seconds = time.perf_counter() - start
    views = total * cfg.views
    return Synth3DReport(samples=total, views=views, seconds=seconds,
                         views_per_s=views / max(seconds, 1e-9), out_dir=out)
