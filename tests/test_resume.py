"""Checkpoint and resume with real DeepSpeed engines (one process, fp32 CPU): a damaged newest
checkpoint costs exactly one checkpoint and the resumed run still ends bitwise where an
uninterrupted one does; a pickle payload planted in checkpoint storage never runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from augment.pipeline import ViewAugmenter
from pretrain.config import load_config
from pretrain.train import checkpoint, resume
from pretrain.train.distributed import single_process_group
from pretrain.train.engine import build_engine
from pretrain.train.loop import build_model
from pretrain.train.manifest import Manifest, hash_folder
from pretrain.train.seeding import generator_for
from pretrain.train.step import train_step
from pretrain.train.store import checkpoint_dir_name, local_store

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
STEPS = 3


@pytest.fixture(scope="module", autouse=True)
def process_group():
    with single_process_group():
        yield


def _cfg(zero_stage: int):
    return load_config(None, ["encoder.model=test_resnet", "data.image_size=32",
                              "objective.vicreg.expander_dims=[32,32]", "optim.lr=0.01",
                              "optim.grad_clip=0.5", f"deepspeed.zero_stage={zero_stage}"])


def _batches(cfg):
    _, info = build_model(cfg)
    augmenter = ViewAugmenter(cfg.augment, info.mean, info.std, 32)
    images = torch.randint(0, 256, (8, 1, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    return [augmenter(images, generator_for(0, "test", i)) for i in range(STEPS)]


def _fresh_engine(cfg):
    objective, _ = build_model(cfg)  # seeded: every fresh engine starts from the same weights
    return build_engine(objective, cfg, total_steps=10, world_size=1, device=CPU)


def _step(engine, batches, step: int) -> None:
    torch.manual_seed(step)  # as the loop does: any global draw is a function of the step
    train_step(engine, batches[step])


def _save(store, engine, step: int) -> str:
    return resume.save(store, engine, checkpoint.TrainState(step=step), rank=0, world_size=1,
                       device=CPU, keep=10)


def _newest(store):
    return resume.newest_loadable(store, rank=0, world_size=1, device=CPU)


def _optimizer_tensors(engine) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []

    def walk(value):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(engine.optimizer.state_dict())
    return found


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_damaged_newest_checkpoint_is_skipped_and_resume_stays_bitwise(zero_stage, tmp_path,
                                                                       caplog):
    cfg = _cfg(zero_stage)
    batches = _batches(cfg)
    store = local_store(tmp_path / "run")
    straight = _fresh_engine(cfg)
    for step in range(STEPS):
        _step(straight, batches, step)
        _save(store, straight, step + 1)
    want = {k: v.clone() for k, v in straight.module.state_dict().items()}
    want_optim = [t.clone() for t in _optimizer_tensors(straight)]
    want_lr = straight.get_lr()
    # The failure: the newest checkpoint's files truncated.
    newest = tmp_path / "run" / checkpoint_dir_name(STEPS) / "engine" / "mp_rank_00_model_states.pt"
    size = newest.stat().st_size
    newest.write_bytes(newest.read_bytes()[:1000])

    resumed = _fresh_engine(cfg)
    with caplog.at_level(logging.WARNING, logger="pretrain.train"), _newest(store) as found:
        assert found is not None and found.name == checkpoint_dir_name(STEPS - 1)
        state = checkpoint.load(resumed, found.path)
    assert state.step == STEPS - 1
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert skipped == [f"resume: skipping {checkpoint_dir_name(STEPS)}: engine/"
                       f"mp_rank_00_model_states.pt has 1000 bytes, the manifest says {size}"]
    _step(resumed, batches, state.step)
    got = resumed.module.state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    got_optim = _optimizer_tensors(resumed)
    assert len(got_optim) == len(want_optim) > 0
    assert all(torch.equal(a, b) for a, b in zip(got_optim, want_optim))
    assert resumed.get_lr() == want_lr
    # The next checkpoint of the resumed run replaces the damaged folder and verifies.
    _save(store, resumed, STEPS)
    with _newest(store) as found:
        assert found.name == checkpoint_dir_name(STEPS)


class Payload:
    """What an attacker plants: unpickling it runs code (here: writes a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('payload ran')",)


@pytest.mark.parametrize("zero_stage, planted", [
    (0, "engine/mp_rank_00_model_states.pt"),
    (2, "engine/zero_pp_rank_0_mp_rank_00_optim_states.pt"),
])
def test_planted_pickle_payload_never_runs(zero_stage, planted, tmp_path, caplog):
    cfg = _cfg(zero_stage)
    batches = _batches(cfg)
    store = local_store(tmp_path / "run")
    engine = _fresh_engine(cfg)
    for step in range(2):
        _step(engine, batches, step)
        _save(store, engine, step + 1)
    marker = tmp_path / "marker"
    folder = tmp_path / "run" / checkpoint_dir_name(2)
    target = folder / planted
    original = checkpoint.safe_load(target, map_location="cpu")
    original["payload"] = Payload(marker)
    torch.save(original, target)
    # Whoever can write the storage can rewrite the manifest too: it verifies.
    store.publish(checkpoint_dir_name(2), Manifest(2, hash_folder(folder)))
    assert store.complete(checkpoint_dir_name(2))

    fresh = _fresh_engine(cfg)
    with caplog.at_level(logging.WARNING, logger="pretrain.train"), _newest(store) as found:
        assert found.name == checkpoint_dir_name(1)
        assert checkpoint.load(fresh, found.path).step == 1
    assert not marker.exists()
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 1 and "\n" not in skipped[0]
    assert skipped[0].startswith(f"resume: skipping {checkpoint_dir_name(2)}: {planted}: "
                                 "refused to unpickle it (")
    assert skipped[0].endswith("(Unsupported global: GLOBAL exec)")

    # The engine's own loader refuses it too (not only the pre-check before it).
    with pytest.raises(checkpoint.UnsafeCheckpointError, match="refused to unpickle"):
        checkpoint.load(_fresh_engine(cfg), folder)
    assert not marker.exists()
    # The payload is real: an unrestricted torch.load runs it.
    torch.load(target, map_location="cpu", weights_only=False)
    assert marker.read_text() == "payload ran"

    # The resumed run checkpoints step 1 again with checkpoint.keep=1: pruning must not count the
    # skipped (complete by its manifest) checkpoint 2 as the one to keep and delete the new one.
    resume.save(store, fresh, checkpoint.TrainState(step=1), rank=0, world_size=1, device=CPU,
                keep=1)
    assert store.names() == [checkpoint_dir_name(1), checkpoint_dir_name(2)]


def test_universal_checkpoint_loading_is_refused():
    """DeepSpeed 0.19.8 loads universal checkpoints' ``zero/*/*.pt`` with
    ``torch.load(weights_only=False)``, bypassing the safe checkpoint engine: a config that
    turns it on through ``deepspeed.extra`` must not resume at all."""
    cfg = load_config(None, ["encoder.model=test_resnet", "data.image_size=32",
                             "objective.vicreg.expander_dims=[32,32]"])
    # Config validation refuses it already (tests/test_config.py); bypass validation (model_copy
    # does not validate) to test the worker's own check.
    cfg = cfg.model_copy(update={"deepspeed": cfg.deepspeed.model_copy(
        update={"extra": {"checkpoint": {"load_universal": True}}})})
    engine = _fresh_engine(cfg)
    assert engine.load_universal_checkpoint()
    with pytest.raises(ValueError, match="checkpoint.load_universal is not supported"):
        checkpoint.use_safe_loading(engine)


KILLED_WORKER = """
import os, signal, sys
from pretrain.config import load_config
from pretrain.train import loop
from pretrain.train.distributed import single_process_group
from pretrain.train.store import local_store
import torch

real_step, done = loop.run_step, []
def run_step(*args, **kwargs):  # SIGKILL this process right after step KILL_AT
    if len(done) == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
    done.append(1)
    return real_step(*args, **kwargs)
loop.run_step = run_step
cfg = load_config(None, sys.argv[4:])
with single_process_group():
    loop.fit(cfg, loop.WorkerContext(0, 1, torch.device("cpu")), local_store(sys.argv[2]),
             tracking_uri=None, run_id=None)
"""


def test_worker_killed_after_a_checkpoint_resumes_from_it(tmp_path, caplog):
    """Issue 11 item 6: kill -9 at step 17 with checkpoints every 5 must resume at 15 (not 10,
    as when the newest checkpoint had not been registered with Ray yet)."""
    import subprocess
    import sys

    from pretrain.data.synth3d import Synth3DConfig, generate_synth3d
    from pretrain.train.loop import WorkerContext, fit

    data = tmp_path / "data"
    generate_synth3d(Synth3DConfig(classes=2, instances_per_class=4, views=2, size=32,
                                   shard_size=8), data)
    overrides = [f"data.path={data}", "data.image_size=32", "data.batch_size=4",
                 "data.num_workers=0", "data.shuffle_buffer=0", "encoder.model=test_resnet",
                 "objective.vicreg.expander_dims=[32,32]", "train.epochs=10",
                 "checkpoint.every_steps=5", "checkpoint.keep=2", "tracking.log_every_steps=5",
                 "probes.enabled=false"]
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items()  # the child starts its own process group
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")}
    child = subprocess.run([sys.executable, "-c", KILLED_WORKER, "-", str(run_dir), "17",
                            *overrides], capture_output=True, text=True, timeout=600, env=env)
    assert child.returncode == -9, child.stderr[-2000:]
    store = local_store(run_dir)
    assert store.names() == [checkpoint_dir_name(10), checkpoint_dir_name(15)]

    cfg = load_config(None, [*overrides, "train.max_steps=18"])
    with caplog.at_level(logging.INFO, logger="pretrain.train"):
        final = fit(cfg, WorkerContext(0, 1, CPU), store, tracking_uri=None, run_id=None)
    assert final == 18
    resumed = [r.getMessage() for r in caplog.records if "resumed at step" in r.getMessage()]
    assert resumed == [f"rank 0 resumed at step 15 from {checkpoint_dir_name(15)}"]
