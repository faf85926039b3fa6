"""Weighted cosine kNN classifier on frozen features (Wu et al. 2018, InstDisc; as in DINO)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_predict(train_x: Tensor, train_y: Tensor, test_x: Tensor, *, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None,
                chunk: int = 1024) -> Tensor:
    """Predicted class of every test row: the ``k`` most cosine-similar train rows vote for their
    class with weight ``exp(sim / temperature)``; the class with the largest total wins (ties:
    the lowest class index). ``k`` is capped at the number of train rows."""
    classes = num_classes or int(train_y.max()) + 1
    k = min(k, train_x.shape[0])
    train = F.normalize(train_x.float(), dim=1)
    preds = []
    for start in range(0, test_x.shape[0], chunk):
        test = F.normalize(test_x[start:start + chunk].float(), dim=1)
        sims, idx = (test @ train.T).topk(k, dim=1)
        weights = (sims / temperature).exp()
        votes = torch.zeros(test.shape[0], classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_y[idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)


def knn_top1(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *, k: int = 20,
             temperature: float = 0.07) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``knn_predict`` on the test rows."""
    classes = int(max(train_y.max(), test_y.max())) + 1
    pred = knn_predict(train_x, train_y, test_x, k=k, temperature=temperature,
                       num_classes=classes)
    return float((pred == test_y).double().mean())
