"""Every objective under 2 Ray Train workers + DeepSpeed on CPU: checkpoint, damage, resume.

Per objective: one uninterrupted run checkpointing every step; then its final checkpoint is
truncated or deleted (the failures seen in issue 11) and the same name is run again. The re-run must skip
that checkpoint, resume from the one before and end bitwise where the uninterrupted run ended,
every tensor of the objective included (encoder, heads, predictors, EMA targets). One embedded
Ray serves the whole module (each run still builds its own worker group)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from cluster import trainer
from pretrain.config import load_config
from pretrain.config.schema import ClusterConfig
from pretrain.data.synth3d import Synth3DConfig, generate_synth3d
from pretrain.workflows.run import run
from pretrain.train.checkpoint import safe_load
from pretrain.train.manifest import MANIFEST_NAME
from pretrain.train.store import checkpoint_dir_name

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
# Objective -> ZeRO stage: every objective checked, and stages 0, 1 and 2 each twice.
OBJECTIVES = {"vicreg": 2, "simclr": 0, "essl": 1, "care": 2, "sie": 0, "seq_jepa": 1}
STEPS = 3  # 24 samples / (2 workers x batch 4)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    started = trainer.connect(ClusterConfig(num_workers=2, cpus_per_worker=1))
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_synth3d(Synth3DConfig(classes=4, instances_per_class=6, views=4, size=32,
                                   shard_size=8), out)
    return out


def _config(objective: str, tmp: Path, data: Path, *extra: str):
    return load_config(REPO / "configs" / f"{objective}-synth3d.yaml", [
        f"name={objective}", f"data.path={data}", "data.image_size=32", "data.batch_size=4",
        "data.num_workers=0", "data.shuffle_buffer=0", "encoder.model=test_resnet",
        "cluster.num_workers=2", "cluster.cpus_per_worker=1",
        f"deepspeed.zero_stage={OBJECTIVES[objective]}", "train.epochs=1",
        "checkpoint.every_steps=1", "tracking.log_every_steps=1",
        "tracking.system_metrics=false", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        f"cluster.storage_path={tmp / 'runs'}", "registry.enabled=false",
        "probes.enabled=false", *extra])


def _module_state(folder: Path) -> dict[str, torch.Tensor]:
    return safe_load(folder / "engine" / "mp_rank_00_model_states.pt", map_location="cpu")["module"]


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_objective_resumes_past_a_damaged_checkpoint_bitwise(objective, tmp_path, shards,
                                                             ray_session, in_tmp_cwd):
    straight = run(_config(objective, tmp_path, shards))
    assert straight.final_step == STEPS and straight.plan.total_steps == STEPS
    storage = tmp_path / "runs" / objective
    # Checkpoints are the workers' own (manifest last); Ray Train registers none of them.
    assert not (storage / "checkpoint_manager_snapshot.json").exists()
    final, previous = storage / checkpoint_dir_name(STEPS), storage / checkpoint_dir_name(STEPS - 1)
    reference = _module_state(final)
    assert any(not k.startswith("encoder.") for k in reference), "no head in the checkpoint"
    kept = os.stat(previous / MANIFEST_NAME)
    if objective == "simclr":  # deleted outright: Ray Train used to refuse the whole run folder
        shutil.rmtree(final)
    else:  # truncated: resume used to fail with "PytorchStreamReader failed reading zip archive"
        states = final / "engine" / "mp_rank_00_model_states.pt"
        states.write_bytes(states.read_bytes()[:4096])

    resumed = run(_config(objective, tmp_path, shards))
    assert resumed.final_step == STEPS and resumed.run_id == straight.run_id
    # Resumed from the checkpoint before the damaged one, not from scratch: that one was not
    # written again, and the damaged (or deleted) one was replaced by a new one.
    again = os.stat(previous / MANIFEST_NAME)
    assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    state = _module_state(final)
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(state[key], value), key
    if objective == "seq_jepa":  # the EMA target and its update count went through the resume
        assert any("target" in k for k in state)
        assert [int(v) for k, v in state.items() if k.endswith("updates")] == [STEPS]
    client = MlflowClient(resumed.tracking_uri)
    steps = sorted(m.step for m in client.get_metric_history(resumed.run_id, "loss/total"))
    assert steps == list(range(1, STEPS + 1))  # each step once, the re-run step not duplicated
    terms = [k for k in client.get_run(resumed.run_id).data.metrics if k.startswith("loss/")]
    assert len(terms) >= 2, terms  # loss/total plus the objective's named terms
