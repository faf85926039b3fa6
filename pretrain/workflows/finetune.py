"""Pull a pretrained encoder, add a linear classification head, train it on labelled shards,
register the classifier: three steps, :func:`load_model`, :func:`train` and :func:`register`,
that :func:`finetune` runs inside one MLflow run.

    from pretrain.config.finetune import FinetuneConfig
    from pretrain.workflows.finetune import finetune
    result = finetune(FinetuneConfig(model_uri="models:/invariant-encoder@latest",
                                     data="data/labeled", epochs=5))
    print(result.test_accuracy, result.registered.uri)

The classifier is the encoder's own timm architecture with ``num_classes=C`` (timm's
``reset_classifier``), so the registered files load with plain timm. ``linear_only`` freezes the
encoder (eval mode, features computed once); otherwise everything trains, with random horizontal
flips. Labelled data is held in memory as ``uint8`` (CIFAR-10's 50k images are 150 MB); use
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

from pretrain.config.finetune import FinetuneConfig
from pretrain.models.classifier import RegisteredClassifier, register_classifier, write_classifier
from pretrain.models.folder import ModelConfig, read_config
from pretrain.models.loading import load_encoder, pull
from pretrain.models.source import describe_source
from pretrain.probes.features import Preprocess, encode, prepare
from pretrain.progress import Progress
from pretrain.tracking.context import mlflow_run
from pretrain.tracking.lineage import EncoderSource, derived_experiment, lineage_tags
from pretrain.tracking.runs import resolve_tracking_uri
from pretrain.workflows.finetune_data import LabeledSet, load_labeled

log = logging.getLogger("pretrain.finetune")
TAG = "pretrain.finetune."


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
    source: EncoderSource
    seconds: float


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


def load_model(model_uri: str | Path, num_classes: int, tracking_uri: str, *, seed: int = 0,
               device: str = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Step 1: the encoder (pulled and verified, never unpickled) with a new ``num_classes`` head
    initialised from ``seed``, on ``device``; and the encoder's ``config.json``."""
    with tempfile.TemporaryDirectory() as tmp:
        files = _encoder_files(model_uri, tracking_uri, tmp)
        config = read_config(files)
        model = load_encoder(files)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.reset_classifier(num_classes)
    return model.to(device), config


def train(model: nn.Module, labeled: LabeledSet, cfg: FinetuneConfig, device: str,
          on_epoch: Callable[[int, float], None] = lambda epoch, loss: None,
          progress: Progress | None = None) -> float:
    """Step 2: train on ``labeled``'s train split as ``cfg`` says: only the head on features
    extracted once (``linear_only``), else everything; leaves ``model`` in eval mode and returns
    the last epoch's mean loss."""
    pre = Preprocess.of(model)
    tr = labeled.train_idx
    g = torch.Generator().manual_seed(cfg.seed)
    common = dict(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                  batch_size=cfg.batch_size, g=g, device=device, on_epoch=on_epoch,
                  progress=progress)
    if cfg.linear_only:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
        feats = encode(_PreLogits(model), labeled.images[tr], pre=pre, device=device)
        loss = _train_head(model, feats, labeled.labels[tr], **common)
    else:
        loss = _train_full(model, labeled.images[tr], labeled.labels[tr], pre, **common)
    model.eval()
    return loss


def register(model: nn.Module, encoder: ModelConfig, labeled: LabeledSet, cfg: FinetuneConfig,
             *, tracking_uri: str, run_id: str, source: EncoderSource, test_accuracy: float
             ) -> tuple[RegisteredClassifier | None, str | None]:
    """Step 3: write the classifier (timm-native folder: ``cfg.out_dir``, else a temporary one)
    and register it as ``cfg.registry_name`` (skipped when None) under ``run_id``. Returns the
    registered version and the kept folder (None without ``out_dir``)."""
    registered = None
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(cfg.out_dir) if cfg.out_dir is not None else Path(tmp) / "classifier"
        write_classifier(model, target, encoder=encoder, num_classes=labeled.num_classes,
                         label_names=labeled.label_names,
                         extra={"source_model": source.uri, "source_run_id": source.run_id,
                                "run_id": run_id, "linear_only": cfg.linear_only,
                                "test_accuracy": test_accuracy})
        if cfg.registry_name:
            registered = register_classifier(
                tracking_uri, run_id, target, cfg.registry_name, cfg.alias,
                tags={"test_accuracy": f"{test_accuracy:.4f}", "source_model": source.uri,
                      "linear_only": str(cfg.linear_only)},
                description=f"Finetuned from {source.uri} on {cfg.data}: test accuracy "
                            f"{100 * test_accuracy:.2f}% ({labeled.test_idx.numel()} images)")
    return registered, (str(target) if cfg.out_dir is not None else None)


def finetune(cfg: FinetuneConfig, progress: Progress | None = None) -> FinetuneResult:
    """Finetune the encoder ``cfg.model_uri`` (``models:/``, ``runs:/`` or a folder) on
    ``cfg.data``: load the data and the model, then, inside one MLflow run (params,
    ``train/loss`` per epoch, ``test/accuracy``; FAILED if a step fails), train, test and
    register. The run is tagged with the encoder's source (:mod:`pretrain.tracking.lineage`)
    and lives in the source run's experiment unless ``cfg.experiment`` names one."""
    started = time.perf_counter()
    uri = resolve_tracking_uri(cfg.tracking_uri)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = describe_source(cfg.model_uri, uri)
    labeled = load_labeled(cfg.data, cfg.test_data, max_train=cfg.max_train,
                           max_test=cfg.max_test, image_size=cfg.image_size)
    tr, te = labeled.train_idx, labeled.test_idx
    model, encoder = load_model(cfg.model_uri, labeled.num_classes, uri, seed=cfg.seed,
                                device=device)

    client = MlflowClient(uri)
    with mlflow_run(client, derived_experiment(client, uri, source.run_id, cfg.experiment),
                    run_name=f"finetune {source.label}",
                    tags={**lineage_tags(TAG, source), f"{TAG}data": cfg.data}) as run_id:
        params = {"model_uri": source.uri, "data": cfg.data, "test_data": cfg.test_data,
                  "epochs": cfg.epochs, "lr": cfg.lr, "linear_only": cfg.linear_only,
                  "batch_size": cfg.batch_size, "weight_decay": cfg.weight_decay,
                  "num_classes": labeled.num_classes, "seed": cfg.seed,
                  "train_samples": tr.numel(), "test_samples": te.numel(), "device": device}
        for key, value in params.items():
            client.log_param(run_id, f"finetune.{key}", str(value))

        def on_epoch(epoch: int, loss: float) -> None:
            client.log_metric(run_id, "train/loss", loss, step=epoch + 1)
            log.info("epoch %d/%d: train loss %.4f", epoch + 1, cfg.epochs, loss)

        loss = train(model, labeled, cfg, device, on_epoch, progress)
        test_acc = accuracy(model, labeled.images[te], labeled.labels[te], Preprocess.of(model),
                            device)
        client.log_metric(run_id, "test/accuracy", test_acc, step=cfg.epochs)
        registered, kept = register(model, encoder, labeled, cfg, tracking_uri=uri,
                                    run_id=run_id, source=source, test_accuracy=test_acc)
    return FinetuneResult(run_id=run_id, test_accuracy=test_acc, train_loss=loss,
                          num_classes=labeled.num_classes, train_samples=tr.numel(),
                          test_samples=te.numel(), registered=registered, model_dir=kept,
                          source=source, seconds=time.perf_counter() - started)
