"""Settings refused when the config is validated, before anything starts: storage URIs with
userinfo, and DeepSpeed settings that would make resume unpickle checkpoint files (the rule in
:mod:`pretrain.config.safe_loading`, checked here against DeepSpeed's own reading of them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.config.safe_loading import unsafe_loading_problem

PRETRAIN = [str(Path(sys.executable).with_name("pretrain"))]

DS_CONFIGS = [
    {},
    {"checkpoint": {}},
    {"checkpoint": {"load_universal": True}},
    {"checkpoint": {"load_universal": 1}},
    {"checkpoint": {"load_universal": False}},
    {"checkpoint": {"tag_validation": "Warn", "use_node_local_storage": True}},
    {"checkpoint": {"writer": {}}},
    {"checkpoint": {"writer": {"type": "python"}}},
    {"checkpoint": {"writer": {"decoupled": True}}},
    {"checkpoint": {"writer": None}},
    {"datastates_ckpt": {}},
    {"datastates_ckpt": None},
    {"datastates_ckpt": True},
    {"datastates_ckpt": False},
    {"zero_optimization": {"stage": 2}, "steps_per_print": 10},
]


@pytest.mark.parametrize("ds", DS_CONFIGS, ids=[repr(d) for d in DS_CONFIGS])
def test_rule_agrees_with_how_deepspeed_reads_the_config(ds):
    """The rule refuses exactly the configs for which DeepSpeed 0.19.8 turns on universal
    loading or builds another checkpoint engine than its torch one (by its own parsers, the ones
    ``DeepSpeedConfig`` and ``create_checkpoint_engine`` use)."""
    from deepspeed.datastates.config import DeepSpeedDataStatesConfig
    from deepspeed.runtime.config import get_checkpoint_params
    from deepspeed.runtime.model_checkpointing.config import get_checkpoint_config

    universal = bool(get_checkpoint_params(ds).get("load_universal", False))
    other_engine = (get_checkpoint_config(ds)["writer"] is not None
                    or DeepSpeedDataStatesConfig(ds).enabled)
    assert (unsafe_loading_problem(ds) is not None) == (universal or other_engine)


@pytest.mark.parametrize("override, needle", [
    ("cluster.storage_endpoint=http://AKIAKEY:SECRETKEY@minio:9000",
     "cluster.storage_endpoint: holds URI userinfo"),
    ("deepspeed.extra.checkpoint.load_universal=true",
     "deepspeed.extra: checkpoint.load_universal is not supported"),
])
def test_cli_refuses_before_anything_starts(tmp_path, override, needle):
    (tmp_path / "c.yaml").write_text("{}\n")
    result = subprocess.run([*PRETRAIN, "run", "c.yaml", override], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "SECRETKEY" not in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]  # no data, store or run made
