"""Every objective under 2 Ray Train workers + DeepSpeed on CPU: a few steps, checkpoint, resume.

One embedded Ray serves the whole module (each run still builds its own worker group)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from cluster import trainer
from pretrain.config import load_config
from pretrain.config.schema import ClusterConfig
from pretrain.data.synth3d import Synth3DConfig, generate_synth3d
from pretrain.run import run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = ["simclr", "essl", "care", "sie", "seq_jepa"]


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


def _config(objective: str, tmp: Path, data: Path, name: str, *extra: str):
    return load_config(REPO / "configs" / f"{objective}-synth3d.yaml", [
        f"name={name}", f"data.path={data}", "data.image_size=32", "data.batch_size=4",
        "data.num_workers=0", "data.shuffle_buffer=0", "encoder.model=test_resnet",
        "cluster.num_workers=2", "cluster.cpus_per_worker=1", "deepspeed.zero_stage=1",
        "train.epochs=1", "checkpoint.every_steps=1", "tracking.log_every_steps=1",
        "tracking.system_metrics=false", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        f"cluster.storage_path={tmp / 'runs'}", "registry.enabled=false",
        "probes.enabled=false", *extra])


def _final_state(storage: Path) -> dict[str, torch.Tensor]:
    newest = sorted(storage.glob("checkpoint_0*"))[-1]
    return torch.load(newest / "engine" / "mp_rank_00_model_states.pt", map_location="cpu",
                      weights_only=False)["module"]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_checkpoints_and_resumes(objective, tmp_path, shards, ray_session, in_tmp_cwd):
    first = run(_config(objective, tmp_path, shards, objective, "train.max_steps=2"))
    assert first.final_step == 2 and first.plan.total_steps == 3
    resumed = run(_config(objective, tmp_path, shards, objective))
    assert resumed.final_step == 3 and resumed.run_id == first.run_id
    client = MlflowClient(resumed.tracking_uri)
    steps = sorted(m.step for m in client.get_metric_history(resumed.run_id, "loss/total"))
    assert steps == [1, 2, 3]
    terms = [k for k in client.get_run(resumed.run_id).data.metrics if k.startswith("loss/")]
    assert len(terms) >= 2, terms  # loss/total plus the objective's named terms
    state = _final_state(tmp_path / "runs" / objective)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    if objective == "seq_jepa":
        # The EMA target and its update count are in the checkpoint and survive the resume:
        # the resumed run ends exactly where an uninterrupted one does, target included.
        updates = [v for k, v in state.items() if k.endswith("updates")]
        assert updates and int(updates[0]) == 3
        straight = run(_config(objective, tmp_path, shards, "seq_jepa-straight"))
        reference = _final_state(tmp_path / "runs" / "seq_jepa-straight")
        assert any("target" in k for k in state)
        for key, value in state.items():
            assert torch.equal(value, reference[key]), key
        assert straight.final_step == 3
