"""Where probes attach to a training run: the online pass on rank 0 (the end-of-run pass over the
exported encoder is a use case: ``pretrain.workflows.probe.end_of_run_probes``)."""

from __future__ import annotations

import time

import torch
from torch import nn

from pretrain.probes.config import ProbesConfig
from pretrain.probes.features import Preprocess
from pretrain.probes.probeset import ProbeSet, load_probe_set
from pretrain.probes.suite import run_probe_suite


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

    def run(self, encoder: nn.Module, parts: dict[str, nn.Module] | None = None
            ) -> dict[str, float]:
        """The light pass on ``encoder``, and on the objective's named ``parts`` when it
        declares some (``Objective.probe_features``: SIE's halves, seq-JEPA's aggregate), logged
        as ``probe/parts/<name>/...``."""
        start = time.perf_counter()
        if self._probe_set is None:
            self._probe_set = load_probe_set(self.data, self.full_cfg)
        metrics = run_probe_suite(encoder, self._probe_set, self.cfg, self.device,
                                  preprocess=self.preprocess, parts=parts or None)
        self.seconds += time.perf_counter() - start
        return metrics

