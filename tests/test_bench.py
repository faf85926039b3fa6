"""``pretrain bench`` and the one training step (``pretrain.train.step.run_step``) it shares
with the loop and the benchmark scripts: tiny encoder, synthetic 3D data, CPU, seconds."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.config import load_config
from pretrain.data.synth3d import Synth3DConfig, generate_synth3d
from pretrain.train.distributed import single_process_group
from pretrain.workflows.bench import (BenchModes, Figure, boundary_start, format_bench,
                                      run_bench)

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
# 24 samples at batch 4: an epoch is 6 steps, so every window of >= 2 timed steps can cross one.
TINY = ["data.image_size=32", "data.batch_size=4", "data.num_workers=0", "data.shuffle_buffer=0",
        "encoder.model=test_resnet"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_synth3d(Synth3DConfig(classes=2, instances_per_class=12, views=4, size=32,
                                   shard_size=8), out)
    return out


def _config(objective: str, data: Path, *extra: str):
    return load_config(REPO / "configs" / f"{objective}-synth3d.yaml",
                       [f"data.path={data}", *TINY, *extra])


def test_boundary_start_puts_an_epoch_boundary_mid_window():
    for spe in (1, 2, 5, 6, 195):
        for steps, warmup in ((30, 3), (3, 1), (1, 0), (8, 2)):
            starts = [boundary_start(spe, steps, warmup, r) for r in range(3)]
            for r, start in enumerate(starts):
                assert start >= 0
                timed = range(start + warmup, start + warmup + steps)
                assert timed[steps // 2] % spe == 0, (spe, steps, warmup, r)
                if spe > steps // 2:  # then no boundary before it in the timed steps
                    assert all(s % spe for s in timed[:steps // 2])
            assert starts == sorted(starts) and len(set(starts)) == 3  # later epochs each round


def test_bench_reports_every_figure_finite_and_positive(shards, tmp_path):
    cfg = _config("vicreg", shards, "objective.vicreg.expander_dims=[32,32]")
    result = run_bench(cfg, steps=2, warmup=1, repeats=2, profile=tmp_path / "prof",
                       profile_steps=1)
    assert result.steps_per_epoch == 6 and result.repeats == 2
    rates = [result.augment_samples_s, result.loader_samples_s_per_worker, result.plain_img_s,
             result.compute_img_s, result.end_to_end_img_s, result.ratio]
    for figure in rates:
        assert len(figure.values) == 2
        assert all(math.isfinite(v) and v > 0 for v in figure.values), figure
        assert figure.low <= figure.median <= figure.high
    # A boundary fell inside every loader window (NaN would mean none was crossed).
    for figure in (result.loader_boundary_latency_s, result.data_wait_frac):
        assert all(math.isfinite(v) and v >= 0 for v in figure.values), figure
    assert result.data_wait_frac.high < 1
    assert result.ratio.values == tuple(
        e / c for e, c in zip(result.end_to_end_img_s.values, result.compute_img_s.values))
    text = format_bench(result)
    for needle in ("augmentation alone", "loader alone", "first batch after epoch boundary",
                   "plain PyTorch", "compute-only", "end-to-end", "data-wait fraction",
                   "test_resnet / vicreg, batch 4, 32 px, cpu", "2 rounds of 1 warm-up + 2",
                   "device syncs per step: n/a on the CPU"):
        assert needle in text, needle

    # --profile: a Chrome trace any JSON reader opens, with the step's operators in it.
    profile = result.profile
    assert profile is not None and profile.trace == tmp_path / "prof" / "trace.json"
    trace = json.loads(profile.trace.read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert any(name and name.startswith("aten::") for name in names)
    assert profile.syncs_per_step is None and profile.augment_syncs_per_call is None
    assert len(profile.top_ops) == 10
    assert all(ms >= 0 and calls >= 1 for _, calls, ms in profile.top_ops)
    assert [ms for _, _, ms in profile.top_ops] == sorted(
        (ms for _, _, ms in profile.top_ops), reverse=True)


def test_bench_trains_seq_jepa_and_moves_its_ema_target(shards):
    """The bench's compute-only and end-to-end modes run the training loop's step, so the
    objective's ``on_step_end`` (seq-JEPA's EMA target update) is in their timings."""
    cfg = _config("seq_jepa", shards)
    with single_process_group("gloo"):
        bench = BenchModes.build(cfg, CPU, steps=2, warmup=1, repeats=1)
        target = bench.engine.module.target_encoder.module
        online = bench.engine.module.encoder

        def snapshot() -> list[torch.Tensor]:
            return [t.detach().clone() for t in target.buffers() if t.is_floating_point()]

        for mode in ("compute", "end_to_end"):
            before = snapshot()
            rate = getattr(bench, mode)(0)[0]
            after = snapshot()
            assert rate > 0
            moved = sum(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
            assert moved > 0, f"{mode}: the EMA target did not move"
        assert bench.engine_steps == 6  # (1 warm-up + 2 timed) x 2 modes
        # The target follows the online encoder without being it.
        assert not all(torch.equal(a, b) for a, b in zip(
            target.state_dict().values(), online.state_dict().values()))


def test_figure_median_and_spread():
    figure = Figure((3.0, 1.0, 2.0))
    assert (figure.median, figure.low, figure.high) == (2.0, 1.0, 3.0)


def _cli(*args: str) -> subprocess.CompletedProcess:
    pretrain = str(Path(sys.executable).with_name("pretrain"))
    return subprocess.run([pretrain, *args], capture_output=True, text=True, timeout=300)


def test_bench_help_explains_every_figure():
    result = _cli("bench", "--help")
    assert result.returncode == 0, result.stderr
    for needle in ("augmentation alone", "loader alone", "first batch after the epoch boundary",
                   "plain PyTorch", "compute-only", "end-to-end", "data-wait fraction",
                   "--repeats", "--profile"):
        assert needle in " ".join(result.stdout.split()), needle


@pytest.mark.parametrize("args, needle", [
    (["--steps", "0"], "--steps"),
    (["--profile", "{file}"], "--profile"),  # an existing file is no folder
])
def test_bench_bad_input_is_one_line_exit_2(args, needle, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    args = [arg.format(file=config) for arg in args]
    result = _cli("bench", str(config), *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pretrain: error:"), result.stderr
    assert needle in lines[0]
