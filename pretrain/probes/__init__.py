"""Probes: what an encoder learned to ignore (invariance) and to keep (equivariance), per
transformation, plus linear/kNN accuracy and representation health.

Pure functions over features live in ``linear``, ``knn``, ``invariance``, ``equivariance`` and
``health``; ``suite.run_probe_suite`` extracts features once and runs them all; ``plots`` draws
the PNGs; ``profile`` turns metrics into the tables of the model card and of ``pretrain show``.
Probing registered encoders into their own MLflow runs (``pretrain probe``) and ``pretrain show``
are use cases: ``pretrain.workflows.probe`` and ``pretrain.workflows.show``.
"""

from pretrain.probes.config import TRANSFORMS_2D, TRANSFORMS_3D, ProbesConfig
from pretrain.probes.features import REPRESENTATION, Preprocess, encode
from pretrain.probes.probeset import ProbeSet, load_probe_set
from pretrain.probes.suite import run_probe_suite

__all__ = ["REPRESENTATION", "TRANSFORMS_2D", "TRANSFORMS_3D", "Preprocess", "ProbeSet",
           "ProbesConfig", "encode", "load_probe_set", "run_probe_suite"]
