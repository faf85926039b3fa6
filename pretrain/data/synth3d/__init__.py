"""Synthetic 3D objects (in the spirit of 3DIEBench): SDF shape classes (``shapes``), a batched
sphere-tracing renderer (``render``) and a shard generator with per-view ground-truth latents
(``generate``): rotation, object hue, background hue and light direction."""

from pretrain.data.synth3d.generate import (
    SampleLatents,
    Synth3DConfig,
    Synth3DReport,
    ensure_synth3d,
    generate_synth3d,
    sample_latents,
)
from pretrain.data.synth3d.render import RenderSettings, render_views
from pretrain.data.synth3d.shapes import SHAPE_NAMES, SHAPES, ShapeSpec

__all__ = [
    "ensure_synth3d",
    "SHAPES",
    "SHAPE_NAMES",
    "RenderSettings",
    "SampleLatents",
    "ShapeSpec",
    "Synth3DConfig",
    "Synth3DReport",
    "generate_synth3d",
    "render_views",
    "sample_latents",
]
