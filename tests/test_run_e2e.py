"""The whole path, for real: synthetic shards -> 2 Ray Train workers -> DeepSpeed ZeRO-2 ->
checkpoints -> MLflow (SQLite) -> registry -> pull, plus resume and bad-input stops."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from pretrain.config import load_config
from pretrain.data.errors import DataError
from pretrain.data.synth3d import Synth3DConfig, generate_synth3d
from pretrain.data.writer import ShardSetWriter
from pretrain.workflows.export_run import export_run
from pretrain.hub import load_encoder
from pretrain.workflows.run import run
from pretrain.tracking.runs import RUN_NAME_TAG
from pretrain.train.checkpoint import safe_load

pytestmark = pytest.mark.slow

LIGHT_PROBES = ("probes.enabled=true", "probes.every_steps=3", "probes.data=synth3d",
                "probes.synth3d_classes=4", "probes.synth3d_size=32", "probes.max_train=48",
                "probes.max_test=24", "probes.pairs_train=24", "probes.pairs_test=16",
                "probes.online_max_train=24", "probes.online_max_test=12", "probes.online_pairs=8",
                "probes.mlp_steps=50", "probes.transforms=[flip,rotation,hue,object_rotation]")
SAMPLES = 24  # 2 workers x batch 4 -> 3 steps per epoch, nothing dropped


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Synthetic objects plus one corrupt sample (kept within max_skip_frac below)."""
    out = tmp_path_factory.mktemp("synth")
    generate_synth3d(Synth3DConfig(classes=4, instances_per_class=6, views=2, size=32,
                                   shard_size=8), out)
    return out


def _config(tmp: Path, data: Path, name: str, *extra: str):
    return load_config(None, [
        f"name={name}", f"data.path={data}", "data.image_size=32", "data.batch_size=4",
        "data.num_workers=1", "data.shuffle_buffer=8", "encoder.model=test_resnet",
        "objective.vicreg.expander_dims=[32,32]", "cluster.num_workers=2",
        "cluster.cpus_per_worker=1", "deepspeed.zero_stage=2", "train.epochs=3",
        "checkpoint.every_steps=2", "checkpoint.keep=2", "tracking.log_every_steps=1",
        "tracking.system_metrics=false", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        # Relative, as in the quickstart: the tests run in ``tmp`` (``in_tmp_cwd``), and the
        # workers, whose working directory is Ray's, must still write under ``tmp / "runs"``.
        "cluster.storage_path=runs", "registry.name=e2e-encoder",
        "probes.enabled=false", *extra])


def _final_module_weights(storage: Path) -> dict[str, torch.Tensor]:
    """The encoder weights inside the newest DeepSpeed checkpoint (our own training file)."""
    newest = sorted(storage.glob("checkpoint_0*"))[-1]
    states = safe_load(newest / "engine" / "mp_rank_00_model_states.pt", map_location="cpu")
    return {k.removeprefix("encoder."): v for k, v in states["module"].items()
            if k.startswith("encoder.")}


def test_two_worker_zero2_run_resumes_and_registers(tmp_path, shards, in_tmp_cwd):
    interrupted = _config(tmp_path, shards, "resumed", "train.max_steps=4")
    first = run(interrupted)
    assert first.final_step == 4 and first.plan.total_steps == 9
    assert not ray.is_initialized()

    resumed = run(_config(tmp_path, shards, "resumed"))
    assert resumed.run_id == first.run_id  # same MLflow run continues
    assert resumed.final_step == 9

    client = MlflowClient(resumed.tracking_uri)
    history = client.get_metric_history(resumed.run_id, "loss/total")
    assert sorted(m.step for m in history) == list(range(1, 10))  # each step once
    run_data = client.get_run(resumed.run_id).data
    assert run_data.params["data.batch_size"] == "4"
    assert run_data.params["deepspeed.zero_stage"] == "2"
    assert run_data.tags[RUN_NAME_TAG] == "resumed"
    for key in ("loss/invariance", "loss/variance", "loss/covariance", "lr",
                "throughput/img_per_s", "throughput/data_wait_frac", "data/skipped"):
        assert client.get_metric_history(resumed.run_id, key), key
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    config_yaml = client.download_artifacts(resumed.run_id, "config.yaml", str(tmp_path))
    assert "zero_stage: 2" in Path(config_yaml).read_text()

    # The registered encoder is exactly the trained one (compared with the DeepSpeed checkpoint).
    assert resumed.registered is not None and resumed.registered.version == "2"
    encoder = load_encoder(resumed.registered.uri, tracking_uri=resumed.tracking_uri)
    trained = _final_module_weights(tmp_path / "runs" / "resumed")
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = load_encoder(resumed.encoder_dir)
    torch.testing.assert_close(encoder(x), reference(x), rtol=0, atol=0)

    # Re-running the finished run trains nothing and registers no duplicate version.
    again = run(_config(tmp_path, shards, "resumed"))
    assert again.final_step == 9 and again.registered.version == "2"
    assert len(client.get_metric_history(resumed.run_id, "loss/total")) == 9

    # `pretrain export RUN_ID` registers the latest checkpointed encoder as a new version.
    exported = export_run(resumed.run_id, tracking_uri=resumed.tracking_uri)
    assert (exported.name, exported.version) == ("e2e-encoder", "3")
    again_loaded = load_encoder("models:/e2e-encoder/3", tracking_uri=resumed.tracking_uri)
    torch.testing.assert_close(again_loaded(x), reference(x), rtol=0, atol=0)

    # Retention: only checkpoint.keep checkpoints remain.
    assert len(list((tmp_path / "runs" / "resumed").glob("checkpoint_0*"))) == 2

    # The same run without interruption ends with the same weights, bit for bit; this one also
    # probes online (rank 0, every 3 steps) and at the end, and the version carries the results.
    straight = run(_config(tmp_path, shards, "straight", *LIGHT_PROBES))
    assert straight.final_step == 9
    uninterrupted = _final_module_weights(tmp_path / "runs" / "straight")
    for key, value in trained.items():
        assert torch.equal(value, uninterrupted[key]), key
    history = client.get_metric_history(straight.run_id, "probe/invariance/flip")
    # online at steps 3 and 6, then the end-of-run suite at step 9
    assert sorted(m.step for m in history) == [3, 6, 9]
    metrics = client.get_run(straight.run_id).data.metrics
    assert 0.0 <= metrics["probe/knn_top1"] <= 1.0
    assert "probe/equivariance_r2/rotation" in metrics
    assert "probe/online_time_frac" in metrics
    artifacts = [a.path for a in client.list_artifacts(straight.run_id, "probes")]
    assert any(p.endswith(".png") for p in artifacts), artifacts
    version = client.get_model_version("e2e-encoder", straight.registered.version)
    assert "probe/knn_top1" in version.tags


def _corrupt_copy(src: Path, dst: Path, bad: int) -> Path:
    """``src`` re-written with the first ``bad`` samples' images replaced by garbage bytes."""
    from pretrain.data.sources import iter_shard

    with ShardSetWriter(dst, shard_size=8, prefix="bad") as writer:
        count = 0
        for shard in sorted(src.glob("*.tar")):
            for sample in iter_shard(str(shard)):
                files = {k: v for k, v in sample.items() if not k.startswith("__")}
                if count < bad:
                    files = {k: (b"not a png" if k.endswith("png") else v) for k, v in files.items()}
                writer.write(f"s{count:05d}", files)
                count += 1
    return dst


def test_bad_samples_are_skipped_counted_or_stop_the_run(tmp_path, shards, in_tmp_cwd):
    data = _corrupt_copy(shards, tmp_path / "bad", bad=3)
    strict = ("train.epochs=1", "checkpoint.every_steps=1")
    # 3 bad > 1% of a rank's 12 samples: stops at once, with a loader worker process too, and
    # the message is ours (not torch's "Caught DataError in DataLoader worker process 0.").
    with pytest.raises(DataError, match=r"^too many unreadable samples: \d+ of 12 = .*; shards: "
                                        r".*bad-00000\d\.tar \(\d+ of \d+ read\)"):
        run(_config(tmp_path, data, "too-many-bad", *strict))
    kept = sorted((tmp_path / "runs" / "too-many-bad").glob("checkpoint_0*"))
    assert kept, "checkpoints written before the stop must survive it"
    # Raising the tolerance and re-running the same name resumes from what was kept.
    resumed = run(_config(tmp_path, data, "too-many-bad", *strict, "data.max_skip_frac=0.5",
                          "registry.enabled=false"))
    client = MlflowClient(resumed.tracking_uri)
    steps = [m.step for m in client.get_metric_history(resumed.run_id, "loss/total")]
    assert sorted(steps) == list(range(1, resumed.plan.stop_step + 1))

    tolerated = run(_config(tmp_path, data, "tolerated", "data.max_skip_frac=0.5",
                            "train.epochs=1", "cluster.num_workers=1", "deepspeed.zero_stage=0",
                            "registry.enabled=false"))
    skipped = client.get_metric_history(tolerated.run_id, "data/skipped")
    # One worker reads all 24 samples in one epoch; exactly the 3 corrupted ones are skipped.
    assert max(m.value for m in skipped) == 3


def test_missing_or_empty_data_stops_before_ray_starts(tmp_path, in_tmp_cwd, monkeypatch):
    # ray.is_initialized() after run() proves nothing (run() shuts Ray down in any case):
    # starting Ray must not even be tried, and no MLflow store or run may appear.
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", no_ray)
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        run(_config(tmp_path, tmp_path / "nowhere", "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        run(_config(tmp_path, empty, "empty"))
    assert not (tmp_path / "mlflow.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
