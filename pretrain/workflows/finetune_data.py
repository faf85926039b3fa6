"""Finetuning's input: labelled images in memory, split into train and test.

The shards are read by the probe sets' reader (:mod:`pretrain.probes.probeset`: stream order,
capped, deterministic, bad samples skipped), so a folder, pattern or preset means the same thing
to ``pretrain finetune`` as to ``pretrain probe``; what finetuning keeps is only the images, the
classes and the split.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from pretrain.data.errors import DataError
from pretrain.probes.config import ProbesConfig
from pretrain.probes.probeset import load_probe_set, probe_set_from_shards

_ALL = 10**9  # "no cap" for the reader


@dataclass(frozen=True)
class LabeledSet:
    """Attributes:
        images: ``uint8`` ``N x 3 x H x W`` (square), train and test rows together.
        labels: ``int64`` ``N``, every one a class index.
        train_idx, test_idx: the rows of each split.
        classes: class names in label order, when the data says.
        name: where the set came from.
    """

    images: Tensor
    labels: Tensor
    train_idx: Tensor
    test_idx: Tensor
    classes: list[str] | None
    name: str

    @property
    def num_classes(self) -> int:
        """Classes the head needs: the data's named classes, or the largest label + 1."""
        seen = int(self.labels.max().item()) + 1 if self.labels.numel() else 0
        return max(seen, len(self.classes or []))

    @property
    def label_names(self) -> list[str] | None:
        """The class names when there is one per class, else None."""
        return self.classes if len(self.classes or []) == self.num_classes else None


def load_labeled(data: str, test_data: str | None = None, *, max_train: int | None = None,
                 max_test: int | None = None, image_size: int | None = None) -> LabeledSet:
    """Train/test images from shards: ``data`` + ``test_data``, or ``data`` alone split as the
    probe sets are (``train-*``/``test-*`` files, else every 5th sample is test; presets
    ``cifar10`` and ``synth3d`` work too). Every sample must carry a class (``DataError``)."""
    caps = dict(max_train=max_train or _ALL, max_test=max_test or _ALL, image_size=image_size)
    if test_data is not None:
        read = probe_set_from_shards(data, test_data, name=data, **caps)
    else:
        read = load_probe_set(data, ProbesConfig(**caps))
    if bool((read.labels < 0).any()):
        raise DataError(f"{data}: finetuning needs a class ('cls') in every sample")
    return LabeledSet(images=read.images, labels=read.labels, train_idx=read.train_idx,
                      test_idx=read.test_idx, classes=read.classes, name=read.name)
