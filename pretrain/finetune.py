"""Pull a pretrained encoder, add a linear classification head, train it on labeled shards.

    from pretrain.finetune import finetune
    result = finetune("models:/invariant-encoder@latest", "data/labeled", epochs=5)
    print(result.test_accuracy, result.registered.uri)

The classifier is the encoder's own timm architecture with ``num_classes=C`` (timm's
``reset_classifier``), so the registered files load with plain timm. ``linear_only`` freezes the
encoder (eval mode, features computed once); otherwise everything trains, with random horizontal
flips. Labeled data is held in memory as ``uint8`` (CIFAR-10's 50k images are 150 MB); use
``max_train`` to cap larger sets.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from torch import Tensor, nn

from pretrain.classifier import RegisteredClassifier, register_classifier, write_classifier
from pretrain.data.errors import DataError
from pretrain.export import read_config
from pretrain.hub import load_encoder, pull
from pretrain.probes.config import ProbesConfig
from pretrain.probes.features import Preprocess, encode, prepare
from pretrain.probes.offline import SourceInfo, _experiment, describe_source
from pretrain.probes.probeset import ProbeSet, load_probe_set, probe_set_from_shards
from pretrain.progress import Progress
from pretrain.tracking.context import mlflow_run
from pretrain.tracking.runs import resolve_tracking_uri

log = logging.getLogger("pretrain.finetune")
TAG = "pretrain.finetune."
_ALL = 10**9


@dataclass(frozen=True)
class FinetuneResult:
    """Outcome: the MLflow run, test accuracy (fraction), and the registered classifier."""

    run_id: str
    test_accuracy: float
    train_loss: float
    num_classes: int
    train_samples: int
    test_samples: int
    registered: RegisteredClassifier | None
    model_dir: str | None
    source: SourceInfo
    seconds: float


def labeled_data(data: str, test_data: str | None = None, *, max_train: int | None = None,
                 max_test: int | None = None, image_size: int | None = None) -> ProbeSet:
    """Train/test images from shards: ``data`` + ``test_data``, or ``data`` alone split as the
    probe sets are (``train-*``/``test-*`` files, else every 5th sample is test; presets
    ``cifar10`` and ``synth3d`` work too). Every sample must carry a class."""
    caps = dict(max_train=max_train or _ALL, max_test=max_test or _ALL, image_size=image_size)
    if test_data is not None:
        labeled = probe_set_from_shards(data, test_data, name=data, **caps)
    else:
        labeled = load_probe_set(data, ProbesConfig(**caps))
    if bool((labeled.labels < 0).any()):
        raise DataError(f"{data}: finetuning needs a class ('cls') in every sample")
    return labeled


def _encoder_files(model_uri: str | Path, tracking_uri: str, tmp: str) -> Path:
    if ":/" in str(model_uri) and not Path(str(model_uri)).exists():
        return pull(str(model_uri), tmp, tracking_uri=tracking_uri)
    return Path(model_uri)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, pre: Preprocess,
             device: str, batch_size: int = 256) -> float:
    """Top-1 accuracy (fraction) of ``model``'s logits on uint8 ``images``."""
    logits = encode(model, images, pre=pre, device=device, batch_size=batch_size)
    return float((logits.argmax(dim=1) == labels).double().mean())


class _PreLogits(nn.Module):
    """The classifier's input features (timm's ``forward_head(..., pre_logits=True)``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _minibatch_epochs(params, n: int, batch_loss: Callable[[Tensor], Tensor | None],
                      epochs: int, lr: float, weight_decay: float, batch_size: int,
                      g: torch.Generator, on_epoch: Callable[[int, float], None],
                      progress: Progress | None = None) -> float:
    """AdamW with a cosine schedule over ``epochs`` seeded shuffles of ``n`` rows;
    ``batch_loss(indices)`` gives a batch's mean loss, or None to skip the batch. Calls
    ``on_epoch(epoch, mean loss)``, ``progress(batches done, batches, stage)`` after each batch,
    and returns the last epoch's mean loss."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, max(epochs * math.ceil(n / batch_size), 1))
    loss_value = math.nan
    per_epoch = math.ceil(n / batch_size)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=g)
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = batch_loss(idx)
            if loss is not None:
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total, seen = total + float(loss.detach()) * idx.numel(), seen + idx.numel()
            if progress is not None:
                progress(epoch * per_epoch + start // batch_size + 1, epochs * per_epoch,
                         f"epoch {epoch + 1}/{epochs}")
        loss_value = total / max(seen, 1)
        on_epoch(epoch, loss_value)
    return loss_value


def _train_head(model: nn.Module, feats: Tensor, labels: Tensor, epochs: int, lr: float,
                weight_decay: float, batch_size: int, g: torch.Generator, device: str,
                on_epoch: Callable[[int, float], None], progress: Progress | None = None
                ) -> float:
    """Only the classifier, on features extracted once (``--linear-only``)."""
    head = model.get_classifier()

    def batch_loss(idx: Tensor) -> Tensor:
        return F.cross_entropy(head(feats[idx].to(device)), labels[idx].to(device))

    return _minibatch_epochs(head.parameters(), feats.shape[0], batch_loss, epochs, lr,
                             weight_decay, batch_size, g, on_epoch, progress)


def _train_full(model: nn.Module, images: Tensor, labels: Tensor, pre: Preprocess, epochs: int,
                lr: float, weight_decay: float, batch_size: int, g: torch.Generator,
                device: str, on_epoch: Callable[[int, float], None],
                progress: Progress | None = None) -> float:
    """Encoder and classifier together, on images with random horizontal flips."""

    def batch_loss(idx: Tensor) -> Tensor | None:
        if idx.numel() < 2 and images.shape[0] > 1:
            return None  # batch norm cannot train on a single image
        flip = torch.rand(idx.numel(), generator=g) < 0.5
        x = images[idx].clone()
        x[flip] = x[flip].flip(-1)
        return F.cross_entropy(model(prepare(x.to(device), pre)), labels[idx].to(device))

    model.train()
    try:
        return _minibatch_epochs(model.parameters(), images.shape[0], batch_loss, epochs, lr,
                                 weight_decay, batch_size, g, on_epoch, progress)
    finally:
        model.eval()


def finetune(model_uri: str | Path, data: str, epochs: int = 1, lr: float = 1e-3,
             linear_only: bool = False, tracking_uri: str | None = None,
             registry_name: str | None = "finetuned-classifier", *,
             test_data: str | None = None, batch_size: int = 64, weight_decay: float = 1e-4,
             max_train: int | None = None, max_test: int | None = None,
             image_size: int | None = None, device: str | None = None, seed: int = 0,
             experiment: str | None = None, alias: str | None = None,
             out_dir: str | Path | None = None,
             progress: Progress | None = None) -> FinetuneResult:
    """Finetune the encoder ``model_uri`` (``models:/``, ``runs:/`` or a folder) on ``data``.

    Logs an MLflow run (params, ``train/loss`` per epoch, ``test/accuracy``), writes the
    classifier (``out_dir``, else a temporary folder) and registers it as ``registry_name``
    (skipped when None)."""
    started = time.perf_counter()
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
    uri = resolve_tracking_uri(tracking_uri)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = describe_source(model_uri, uri)
    labeled = labeled_data(data, test_data, max_train=max_train, max_test=max_test,
                           image_size=image_size)
    tr, te = labeled.train_idx, labeled.test_idx
    num_classes = max(labeled.num_classes, len(labeled.classes or []))
    with tempfile.TemporaryDirectory() as tmp:
        files = _encoder_files(model_uri, uri, tmp)
        config = read_config(files)
        model = load_encoder(files)
    pre = Preprocess.of(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.reset_classifier(num_classes)
    model = model.to(device)
    g = torch.Generator().manual_seed(seed)

    client = MlflowClient(uri)
    tags = {f"{TAG}model_uri": source.uri, f"{TAG}data": data}
    if source.run_id:
        tags[f"{TAG}source_run_id"] = source.run_id
    if source.model_version:
        tags[f"{TAG}model_version"] = f"{source.model_name}/{source.model_version}"
    with mlflow_run(client, _experiment(client, uri, source.run_id, experiment),
                    run_name=f"finetune {source.label}", tags=tags) as run_id:
        params = {"model_uri": source.uri, "data": data, "test_data": test_data, "epochs": epochs,
                  "lr": lr, "linear_only": linear_only, "batch_size": batch_size,
                  "weight_decay": weight_decay, "num_classes": num_classes, "seed": seed,
                  "train_samples": tr.numel(), "test_samples": te.numel(), "device": device}
        for key, value in params.items():
            client.log_param(run_id, f"finetune.{key}", str(value))

        def on_epoch(epoch: int, loss: float) -> None:
            client.log_metric(run_id, "train/loss", loss, step=epoch + 1)
            log.info("epoch %d/%d: train loss %.4f", epoch + 1, epochs, loss)

        if linear_only:
            for p in model.parameters():
                p.requires_grad_(False)
            for p in model.get_classifier().parameters():
                p.requires_grad_(True)
            feats = encode(_PreLogits(model), labeled.images[tr], pre=pre, device=device)
            loss = _train_head(model, feats, labeled.labels[tr], epochs, lr, weight_decay,
                               batch_size, g, device, on_epoch, progress)
        else:
            loss = _train_full(model, labeled.images[tr], labeled.labels[tr], pre, epochs, lr,
                               weight_decay, batch_size, g, device, on_epoch, progress)
        model.eval()
        test_acc = accuracy(model, labeled.images[te], labeled.labels[te], pre, device)
        client.log_metric(run_id, "test/accuracy", test_acc, step=epochs)
        registered, kept = None, None
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(out_dir) if out_dir is not None else Path(tmp) / "classifier"
            write_classifier(model, target, encoder=config, num_classes=num_classes,
                             label_names=labeled.classes
                             if len(labeled.classes or []) == num_classes else None,
                             extra={"source_model": source.uri, "source_run_id": source.run_id,
                                    "run_id": run_id, "linear_only": linear_only,
                                    "test_accuracy": test_acc})
            if registry_name:
                registered = register_classifier(
                    uri, run_id, target, registry_name, alias,
                    tags={"test_accuracy": f"{test_acc:.4f}", "source_model": source.uri,
                          "linear_only": str(linear_only)},
                    description=f"Finetuned from {source.uri} on {data}: test accuracy "
                                f"{100 * test_acc:.2f}% ({te.numel()} images)")
            kept = str(target) if out_dir is not None else None
    return FinetuneResult(run_id=run_id, test_accuracy=test_acc, train_loss=loss,
                          num_classes=num_classes, train_samples=tr.numel(),
                          test_samples=te.numel(), registered=registered, model_dir=kept,
                          source=source, seconds=time.perf_counter() - started)
