"""The probe suite: features once, then every probe over them; returns named metrics.

Metric names (values are floats; accuracies and R^2 are fractions, not percentages):

- ``probe/linear_top1``: multinomial logistic regression on frozen features, probe-test top-1.
- ``probe/knn_top1``: weighted cosine kNN (``knn_k``, ``knn_temperature``), probe-test top-1.
- ``probe/invariance/<T>``: s_T = (mean cos(f(x), f(Tx)) - b) / (1 - b), see ``invariance``.
- ``probe/equivariance_r2/<T>``: ridge read-out of T's parameters from [f(x), f(Tx)],
  scikit-learn R^2 (mean of per-output R^2) on held-out pairs.
- ``probe/equivariance_r2_mlp/<T>``: the same with the MLP read-out.
- ``probe/equivariance_r2_sie/<T>``, ``probe/equivariance_r2_sie_mlp/<T>``: ridge / MLP scored
  with SIE's global-mean R^2 (for comparison with SIE numbers), see ``equivariance``.
- ``probe/health/rankme``, ``probe/health/collapsed_frac``, ``probe/health/neg_cos`` (over all
  probe features), ``probe/health/pos_cos`` (mean cos(f(x), f(Tx)) over the probed T).
- ``probe/seconds``: wall time of the whole pass.
- ``probe/parts/<name>/<metric>``: the metrics above (all but ``seconds``) of an objective's
  named part of the representation (``Objective.probe_features``: SIE's ``invariant`` and
  ``equivariant`` halves, seq-JEPA's ``aggregate``), e.g.
  ``probe/parts/invariant/equivariance_r2_mlp/object_rotation``; transformations
  ``cfg.part_transforms``. Only when the caller passes ``parts``.

The representation probed is ``features.REPRESENTATION`` (the encoder's pooled output); a part
is computed from it by the objective's head, so parts cost no extra encoder pass.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from pretrain.probes.config import TRANSFORMS_3D, ProbesConfig
from pretrain.probes.equivariance import equivariance_scores, pair_inputs
from pretrain.probes.features import Preprocess, apply_head, encode
from pretrain.probes.health import health_metrics
from pretrain.probes.invariance import invariance_score, mean_cross_cosine, mean_pair_cosine
from pretrain.probes.knn import knn_top1
from pretrain.probes.linear import linear_probe
from pretrain.probes.probeset import ProbeSet
from pretrain.probes.transforms import apply_transform, transform_seed
from pretrain.progress import Progress

log = logging.getLogger("pretrain.probes")


def _labeled(probe_set: ProbeSet) -> bool:
    labels = probe_set.labels
    return bool(labels.numel()) and bool((labels >= 0).all()) and int(labels.unique().numel()) > 1


def classification_metrics(features: Tensor, probe_set: ProbeSet, cfg: ProbesConfig
                           ) -> dict[str, float]:
    """Linear-probe and kNN top-1 on the probe set's split (empty when it has no labels)."""
    if not _labeled(probe_set):
        return {}
    tr, te = probe_set.train_idx, probe_set.test_idx
    y = probe_set.labels
    out = {}
    if cfg.linear:
        out["probe/linear_top1"] = linear_probe(
            features[tr], y[tr], features[te], y[te], weight_decays=cfg.linear_weight_decays,
            max_iter=cfg.linear_max_iter).top1
    if cfg.knn:
        out["probe/knn_top1"] = knn_top1(features[tr], y[tr], features[te], y[te],
                                         k=cfg.knn_k, temperature=cfg.knn_temperature)
    return out


def _latents_3d(probe_set: ProbeSet, rows: Tensor) -> dict[str, Tensor]:
    latents = {k: v[rows] for k, v in probe_set.latents.items()}
    latents["labels"] = probe_set.labels[rows]
    latents["render_size"] = torch.tensor(probe_set.render_size or probe_set.images.shape[-1])
    if probe_set.pose_max_angle_deg is not None:
        latents["pose_max_angle_deg"] = torch.tensor(float(probe_set.pose_max_angle_deg))
    return latents


def part_key(name: str, key: str) -> str:
    """The metric key of part ``name`` for the whole-representation metric ``key``."""
    return f"probe/parts/{name}/{key.removeprefix('probe/')}"


def pair_metrics(fx: Tensor, ftx: Tensor, params: Tensor, changed: Tensor, n_tr: int, name: str,
                 cfg: ProbesConfig) -> tuple[dict[str, float], float]:
    """Invariance and equivariance of transformation ``name`` from features of the pairs
    (``n_tr`` training pairs first), and the mean positive-pair cosine."""
    baseline = mean_cross_cosine(fx)
    metrics = {f"probe/invariance/{name}": invariance_score(fx[changed], ftx[changed], baseline)}
    pairs = pair_inputs(fx, ftx)
    eq = equivariance_scores(
        pairs[:n_tr], params[:n_tr], pairs[n_tr:], params[n_tr:],
        alphas=cfg.ridge_alphas, mlp=cfg.mlp, mlp_hidden=cfg.mlp_hidden,
        mlp_steps=cfg.mlp_steps, mlp_lr=cfg.mlp_lr, mlp_weight_decay=cfg.mlp_weight_decay,
        mlp_pca_dims=cfg.mlp_pca_dims, seed=transform_seed(cfg.seed, name))
    metrics[f"probe/equivariance_r2/{name}"] = eq.r2
    metrics[f"probe/equivariance_r2_sie/{name}"] = eq.r2_sie
    if eq.r2_mlp is not None:
        metrics[f"probe/equivariance_r2_mlp/{name}"] = eq.r2_mlp
        metrics[f"probe/equivariance_r2_sie_mlp/{name}"] = eq.r2_sie_mlp
    return metrics, mean_pair_cosine(fx[changed], ftx[changed])


def transform_metrics(encoder: nn.Module, features: Tensor, probe_set: ProbeSet,
                      cfg: ProbesConfig, pre: Preprocess, device: torch.device | str,
                      on_transform: Callable[[str], None] | None = None,
                      parts: Mapping[str, tuple[nn.Module, Tensor]] | None = None
                      ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Invariance and equivariance per T in ``cfg.transforms``; also returns the per-T mean
    positive-pair cosines per representation (``""``: the whole one, else the part's name).
    Pairs: the first ``pairs_train`` probe-train images (regressor training) and the first
    ``pairs_test`` probe-test images (held out). ``parts``: name -> (head, the head's features
    of every probe image), probed on the T in ``cfg.part_transforms`` from the same transformed
    images. ``on_transform(T)`` is called after each T is probed (or skipped)."""
    pair_tr = probe_set.train_idx[: cfg.pairs_train]
    pair_te = probe_set.test_idx[: cfg.pairs_test]
    rows = torch.cat((pair_tr, pair_te))
    n_tr = pair_tr.numel()
    parts = dict(parts or {})
    part_transforms = cfg.transforms if cfg.part_transforms is None else cfg.part_transforms
    metrics: dict[str, float] = {}
    positives: dict[str, list[float]] = {"": [], **{p: [] for p in parts}}
    skipped = [t for t in cfg.transforms if t in TRANSFORMS_3D and not probe_set.has_3d]
    if skipped:
        log.info("probe set %s has no 3D latents: skipping %s", probe_set.name, ", ".join(skipped))
    for name in cfg.transforms:
        if name in skipped:
            if on_transform is not None:
                on_transform(name)
            continue
        latents = _latents_3d(probe_set, rows) if name in TRANSFORMS_3D else None
        t = apply_transform(name, probe_set.images[rows], cfg.seed, latents)
        ftx = encode(encoder, t.images, pre=pre, device=device, batch_size=cfg.batch_size)
        changed = torch.nonzero(t.changed, as_tuple=True)[0]
        whole, cosine = pair_metrics(features[rows], ftx, t.params, changed, n_tr, name, cfg)
        metrics |= whole
        positives[""].append(cosine)
        for part, (head, part_features) in parts.items():
            if name not in part_transforms:
                continue
            part_ftx = apply_head(head, ftx, device=device)
            found, cosine = pair_metrics(part_features[rows], part_ftx, t.params, changed, n_tr,
                                         name, cfg)
            metrics |= {part_key(part, k): v for k, v in found.items()}
            positives[part].append(cosine)
        if on_transform is not None:
            on_transform(name)
    return metrics, positives


def _health(features: Tensor, positives: list[float], cfg: ProbesConfig) -> dict[str, float]:
    health = health_metrics(features, cfg.collapse_threshold, cfg.rankme_eps)
    out = {f"probe/health/{k}": v for k, v in health.items()}
    finite = [p for p in positives if not math.isnan(p)]
    out["probe/health/pos_cos"] = sum(finite) / len(finite) if finite else math.nan
    return out


def run_probe_suite(encoder: nn.Module, probe_set: ProbeSet, cfg: ProbesConfig,
                    device: torch.device | str = "cpu", *, preprocess: Preprocess | None = None,
                    progress: Progress | None = None,
                    parts: Mapping[str, nn.Module] | None = None) -> dict[str, float]:
    """Every probe of ``cfg`` on ``probe_set``; features of the probe images are extracted once
    and shared. ``preprocess`` defaults to ``Preprocess.of(encoder)``; pass
    ``Preprocess.from_info(info)`` for an encoder built for training (its ``pretrained_cfg``
    still holds timm's ImageNet defaults). Only the first ``cfg.max_train`` / ``cfg.max_test``
    rows of each split are used, so one loaded set serves both the online (``for_online()``) and
    the end-of-run passes. The encoder's train/eval mode is restored. ``progress(done, total,
    stage)`` is called after each stage: features, class probes, each transformation, health.

    ``parts``: an objective's named parts (``objective.probe_features()``: name -> head from
    backbone features to the part), probed like the whole under ``probe/parts/<name>/``."""
    start = time.perf_counter()
    total = len(cfg.transforms) + 3
    done = 0

    def step(stage: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, stage)

    probe_set = probe_set.capped(cfg.max_train, cfg.max_test)
    pre = preprocess or Preprocess.of(encoder)
    features = encode(encoder, probe_set.images, pre=pre, device=device,
                      batch_size=cfg.batch_size)
    heads = {name: (head, apply_head(head, features, device=device))
             for name, head in (parts or {}).items()}
    step("features")
    metrics = classification_metrics(features, probe_set, cfg)
    for name, (_, part_features) in heads.items():
        metrics |= {part_key(name, k): v
                    for k, v in classification_metrics(part_features, probe_set, cfg).items()}
    step("linear and kNN probes")
    per_t, positives = transform_metrics(encoder, features, probe_set, cfg, pre, device,
                                         on_transform=lambda t: step(f"transformation {t}"),
                                         parts=heads)
    metrics |= per_t
    metrics |= _health(features, positives[""], cfg)
    for name, (_, part_features) in heads.items():
        metrics |= {part_key(name, k): v
                    for k, v in _health(part_features, positives[name], cfg).items()}
    step("health")
    metrics["probe/seconds"] = time.perf_counter() - start
    return metrics
