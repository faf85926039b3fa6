"""The ``cifar10`` preset's folder is a setting ($PRETRAIN_CIFAR10_DIR), with the workspace's
shared copy only as the development default."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from probe_encoders import write_colour_shards
from pretrain.data.errors import DataError
from pretrain.probes.config import ProbesConfig
from pretrain.probes.probeset import CIFAR10_ENV, DEV_CIFAR10_DIR, cifar10_dir, load_probe_set
from pretrain.workflows.finetune_data import load_labeled

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tiny_cifar(tmp_path, monkeypatch):
    """A stand-in 'CIFAR-10' folder: colour shards under the preset's file names."""
    folder = tmp_path / "cifar"
    train = write_colour_shards(folder, per_class=4, prefix="train", seed=1, size=16)
    test = write_colour_shards(folder, per_class=2, prefix="test", seed=2, size=16)
    monkeypatch.setenv(CIFAR10_ENV, str(folder))
    return folder, train, test


def test_the_setting_is_honoured_by_probes_and_finetuning(tiny_cifar):
    folder, train, test = tiny_cifar
    assert cifar10_dir() == folder
    probe = load_probe_set("cifar10", ProbesConfig(max_train=6, max_test=3))
    assert probe.name == "cifar10"
    assert (probe.train_idx.numel(), probe.test_idx.numel()) == (6, 3)
    first_test = torch.from_numpy(test[0][0]).permute(2, 0, 1)
    assert torch.equal(probe.images[0], torch.from_numpy(train[0][0]).permute(2, 0, 1))
    assert torch.equal(probe.images[probe.test_idx[0]], first_test)
    labeled = load_labeled("cifar10")
    assert (labeled.train_idx.numel(), labeled.test_idx.numel()) == (12, 6)
    assert labeled.labels.tolist() == [label for _, label in train + test]
    assert labeled.num_classes == 3


def test_a_missing_folder_is_one_line_naming_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv(CIFAR10_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as info:
        load_probe_set("cifar10", ProbesConfig())
    message = str(info.value)
    assert CIFAR10_ENV in message and str(tmp_path / "nowhere") in message
    assert "\n" not in message
    (tmp_path / "empty").mkdir()  # a folder without train-*/test-* shards is missing too
    monkeypatch.setenv(CIFAR10_ENV, str(tmp_path / "empty"))
    with pytest.raises(DataError, match=CIFAR10_ENV):
        load_labeled("cifar10")


def test_without_the_setting_the_development_default_is_used(monkeypatch):
    monkeypatch.delenv(CIFAR10_ENV, raising=False)
    assert cifar10_dir() == DEV_CIFAR10_DIR == REPO.parent / "shared" / "data" / "cifar10"
