"""The driver pins the probe cache to an absolute path and renders the 3D probe set up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.config.schema import RunConfig
from pretrain.data.format import INDEX_NAME
from pretrain.probes.probeset import synth3d_probe_dir
from pretrain.workflows.prepare_data import prepare_probe_data

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**probes) -> RunConfig:
    return RunConfig.model_validate({"probes": {"cache_dir": "probe-cache", "max_train": 8,
                                                "max_test": 4, "synth3d_size": 16, **probes}})


def test_probe_set_rendered_once_under_an_absolute_cache_dir(in_tmp_cwd):
    cfg = prepare_probe_data(_config())
    assert Path(cfg.probes.cache_dir) == in_tmp_cwd / "probe-cache"
    out, _ = synth3d_probe_dir(cfg.probes)
    index = out / INDEX_NAME
    assert index.is_file()
    stamp = index.stat().st_mtime_ns
    prepare_probe_data(_config())  # the second run reuses it
    assert index.stat().st_mtime_ns == stamp


def test_nothing_rendered_when_no_probe_will_run(in_tmp_cwd):
    cfg = prepare_probe_data(_config(enabled=False, every_steps=0))
    assert Path(cfg.probes.cache_dir).is_absolute()
    assert not (in_tmp_cwd / "probe-cache").exists()
