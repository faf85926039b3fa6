"""Where probes attach to a training run: online on rank 0, and the full suite at the end."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from pretrain.probes.config import ProbesConfig
from pretrain.probes.features import Preprocess
from pretrain.probes.probeset import ProbeSet, load_probe_set
from pretrain.probes.suite import run_probe_suite
from pretrain.progress import progress_lines


class OnlineProber:
    """Runs the light probe pass every ``cfg.every_steps`` on rank 0 and tracks its time share.

    The probe set is loaded (or rendered) once, on first use."""

    def __init__(self, cfg: ProbesConfig, preprocess: Preprocess, device: torch.device) -> None:
        self.cfg = cfg.for_online()
        self.every = cfg.every_steps
        self.data = cfg.data
        self.full_cfg = cfg
        self.preprocess = preprocess
        self.device = device
        self.seconds = 0.0
        self._probe_set: ProbeSet | None = None

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def run(self, encoder: nn.Module) -> dict[str, float]:
        start = time.perf_counter()
        if self._probe_set is None:
            self._probe_set = load_probe_set(self.data, self.full_cfg)
        metrics = run_probe_suite(encoder, self._probe_set, self.cfg, self.device,
                                  preprocess=self.preprocess)
        self.seconds += time.perf_counter() - start
        return metrics


def end_of_run_probes(cfg: ProbesConfig, encoder_dir: str | Path, tracking_uri: str, run_id: str,
                      step: int) -> dict[str, float]:
    """The full suite on the exported encoder (loaded like a user would), logged to the run at
    ``step`` with the invariance-profile PNG."""
    from pretrain.hub import load_encoder
    from pretrain.probes.offline import log_probe_results

    encoder = load_encoder(encoder_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe_set = load_probe_set(cfg.data, cfg)
    metrics = run_probe_suite(encoder, probe_set, cfg, device, preprocess=Preprocess.of(encoder),
                              progress=progress_lines(f"probe suite (step {step})"))
    log_probe_results(tracking_uri, run_id, metrics, step=step,
                      subtitle=f"step {step}, probe data {cfg.data}")
    return metrics


def summary_tags(metrics: dict[str, float]) -> dict[str, str]:
    """Headline probe metrics as model-version tags (accuracies, RankMe, collapse); the
    per-transformation profile is in the model card and the run (``pretrain.probes.profile``)."""
    from pretrain.probes.profile import headline_tags

    return headline_tags(metrics)
