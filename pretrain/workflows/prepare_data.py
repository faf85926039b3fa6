"""Turn a config's data settings into data on disk: the synthetic 3D training set and the
probe set are rendered here (once per distinct setting), so training and benchmarks never pay for
rendering, and nothing here needs MLflow or Ray."""

from __future__ import annotations

from pathlib import Path

from pretrain.config.schema import RunConfig


def prepare_data(cfg: RunConfig, progress=None) -> RunConfig:
    """With ``data.path`` unset, generate the synthetic 3D set (once per distinct setting) under
    ``data.cache_dir`` and return a config pointing at it."""
    if cfg.data.path is not None:
        return cfg
    from pretrain.data.synth3d import ensure_synth3d

    out = Path(cfg.data.cache_dir).resolve() / f"synth3d-{cfg.data.synth3d.cache_key()}"
    ensure_synth3d(cfg.data.synth3d, out, progress=progress)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": str(out)})})


def prepare_probe_data(cfg: RunConfig) -> RunConfig:
    """Pin ``probes.cache_dir`` to an absolute path (a relative one would resolve in each Ray
    worker's own temporary working directory, so nothing would ever be reused) and render the
    synthetic 3D probe set now, on the driver, when the probes will use it: training time then
    never includes rendering it."""
    from pretrain.data.synth3d import ensure_synth3d
    from pretrain.probes.probeset import synth3d_probe_dir

    probes = cfg.probes.model_copy(update={"cache_dir": str(Path(cfg.probes.cache_dir).resolve())})
    if probes.data == "synth3d" and (probes.enabled or probes.every_steps > 0):
        out, gen = synth3d_probe_dir(probes)
        ensure_synth3d(gen, out)
    return cfg.model_copy(update={"probes": probes})
