"""Smoke runs of the benchmark scripts (marked slow): tiny data, ``test_resnet``, a budget of
about a second per run; they check that each script trains, probes and prints its table, not
the numbers. One torch thread: on a shared 2-core machine more threads mostly spin.
Plus fast checks of the claim verdicts and the quoted raw-pixel figure."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.data.writer import ShardSetWriter

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is a folder of scripts, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import care_hue, cifar10_linear, cuda_check, fidelity  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The scripts set torch's thread count (``--threads``); later tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _table(report: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and body rows of the markdown table whose first column is ``first_header``."""
    lines = [line for line in report.splitlines() if line.startswith("|")]
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start:]]
    assert set("".join(cells[1])) <= {"-"}, "second line must be the separator"
    return cells[0], cells[2:]


def _fraction(cell: str) -> float:
    assert cell.endswith("%"), cell
    return float(cell[:-1]) / 100


@pytest.mark.slow
def test_fidelity_main_prints_a_row_per_objective_and_the_claims(tmp_path):
    out = tmp_path / "fidelity.md"
    report = fidelity.main([
        "--minutes-per-objective", "0.02", "--encoder", "test_resnet", "--batch-size", "8",
        "--probe-objects", "24", "--probe", "mlp_steps=40", "--probe", "linear_max_iter=30",
        "--set", "data.synth3d.classes=4", "--set", "data.synth3d.instances_per_class=4",
        "--set", "data.synth3d.views=4", "--set", f"data.cache_dir={tmp_path / 'data'}",
        "--set", "data.num_workers=0", "--set", "data.shuffle_buffer=8", "--threads", "1",
        "--save-dir", str(tmp_path / "kept"), "--out", str(out)])
    assert out.read_text() == report + "\n"
    headers, rows = _table(report, "objective")
    assert headers == list(fidelity.HEADERS)
    names = [r[0] for r in rows]
    assert names == ["vicreg", "simclr", "essl", "care", "sie", "sie [invariant part, dims 0-47]",
                     "sie [equivariant part, dims 48-95]", "seq_jepa", "seq_jepa_no_action"]
    col = {h: i for i, h in enumerate(headers)}
    for row in rows:
        assert 0.0 <= _fraction(row[col["class top-1"]]) <= 1.0
        float(row[col["rot R² MLP"]])  # a number for every row, SIE's parts included
        if "[" in row[0]:
            assert row[col["4-rot acc"]] == "—" and row[col["steps (planned)"]] == "—"
        else:
            done, planned = map(int, re.fullmatch(r"(\d+) \((\d+)\)",
                                                  row[col["steps (planned)"]]).groups())
            assert done >= 1 and planned >= 1
            assert int(row[col["samples"]]) == 8 * done
            assert 0.0 <= _fraction(row[col["4-rot acc"]]) <= 1.0
            float(row[col["hue R² MLP"]])
    use = {r[0]: r[col["action use"]] for r in rows}
    assert {k for k, v in use.items() if v != "—"} == {"sie", "seq_jepa", "seq_jepa_no_action"}
    # Known answer: a predictor without action conditioning cannot depend on the actions.
    assert use["seq_jepa_no_action"] == "1.00"
    assert float(use["sie"]) > 0 and float(use["seq_jepa"]) > 0
    claims = [line for line in report.splitlines() if line.startswith("- ") and "**" in line]
    assert len(claims) == 10
    assert all(re.search(r"\*\*(yes|no|n/a)\*\*", c) for c in claims)
    assert "its base (simclr)" in report  # essl-synth3d.yaml's base
    assert "budget: 0.02 min" in report and "command: `" in report and "cores" in report

    # The kept weights re-probe to the same rows without training again.
    again = fidelity.main([
        "--from-saved", str(tmp_path / "kept"), "--objectives", "vicreg", "sie",
        "--encoder", "test_resnet", "--batch-size", "8", "--probe-objects", "24",
        "--probe", "mlp_steps=40", "--probe", "linear_max_iter=30",
        "--set", "data.synth3d.classes=4", "--set", "data.synth3d.instances_per_class=4",
        "--set", "data.synth3d.views=4", "--set", f"data.cache_dir={tmp_path / 'data'}",
        # The loader settings of the training run: action use reads training batches.
        "--set", "data.num_workers=0", "--set", "data.shuffle_buffer=8",
        "--threads", "1"])
    assert _table(again, "objective")[1] == [r for r in rows if r[0].startswith(("vicreg", "sie"))]
    assert f"kept in {tmp_path / 'kept'}" in again


@pytest.mark.slow
def test_cuda_check_runs_every_check_on_the_cpu(tmp_path):
    """The GPU check script's code path, on the CPU with bf16 forced: the report holds every
    check; the agreements that are exact on any device must pass."""
    out = tmp_path / "cuda_check.md"
    tiny = [f"--set={kv}" for kv in (
        "data.synth3d.classes=4", "data.synth3d.instances_per_class=4", "data.synth3d.views=4",
        f"data.cache_dir={tmp_path / 'data'}", "data.shuffle_buffer=8",
        "encoder.model=test_resnet")]
    code = cuda_check.main(["--device", "cpu", "--image-size", "16", "--batch-size", "8",
                            "--bench", "test_resnet:8", "--bench-steps", "1", "--workers", "0",
                            *tiny, "--out", str(out)])
    report = out.read_text()
    _, rows = _table(report, "check")
    result = {row[0]: row[3] for row in rows}
    assert len(result) == 13 and set(result.values()) <= {"pass", "FAIL"}
    assert result["kornia cpu vs CPU, same params"] == "pass"
    assert result["ZeRO 2 vs ZeRO 1 weights"] == "pass"
    assert result["resume on cpu, ZeRO 2, seq_jepa (EMA)"] == "pass"
    assert code == (0 if all(v == "pass" for v in result.values()) else 1)
    assert "test_resnet / vicreg, batch 8, 16 px, cpu" in report


def _tiny_cifar(folder: Path, classes: int = 3) -> None:
    """CIFAR-10-shaped shards (32 px JPEG + class) whose classes differ in mean colour."""
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 216, size=(classes, 3))
    for prefix, n in (("train", 48), ("test", 24)):
        with ShardSetWriter(folder / prefix, shard_size=32, prefix=prefix) as writer:
            for i in range(n):
                label = i % classes
                pixels = np.clip(colours[label] + rng.normal(0, 30, (32, 32, 3)), 0, 255)
                buf = io.BytesIO()
                Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG")
                writer.write(f"{prefix}{i:05d}",
                             {"jpg": buf.getvalue(), "cls": str(label).encode()})
    for shard in (folder / "train").glob("*.tar"):
        shard.rename(folder / shard.name)
    for shard in (folder / "test").glob("*.tar"):
        shard.rename(folder / shard.name)


@pytest.mark.slow
def test_cifar10_linear_main_prints_the_three_representations(tmp_path):
    _tiny_cifar(tmp_path)
    report = cifar10_linear.main([
        "--minutes", "0.02", "--encoder", "test_resnet", "--batch-size", "16",
        "--data-dir", str(tmp_path), "--weight-decays", "1e-3", "--probe-max-iter", "30",
        "--set", "data.num_workers=0", "--set", "data.shuffle_buffer=16",
        "--set", "objective.vicreg.expander_dims=[64,64]", "--threads", "1"])
    headers, rows = _table(report, "representation")
    assert headers == list(cifar10_linear.HEADERS)
    assert [r[0] for r in rows] == ["VICReg pretrained (0.02 min)",
                                    "same architecture, random init",
                                    "raw pixels (flattened, standardised)"]
    assert [r[1] for r in rows] == ["96", "96", "3072"]
    for row in rows:
        assert 0.0 <= _fraction(row[2]) <= 1.0
        assert float(row[3]) == 1e-3
    # Colour separates the classes exactly, so pixels must be perfect on the test split.
    assert _fraction(rows[2][2]) == 1.0
    steps, planned = map(int, re.search(r"(\d+) steps \((\d+) planned", report).groups())
    assert steps >= 1 and planned >= 1
    assert f"{16 * steps} images" in report
    assert "48 train / 24 test images" in report


@pytest.mark.slow
def test_care_hue_main_compares_care_with_simclr(tmp_path):
    _tiny_cifar(tmp_path)
    report = care_hue.main([
        "--minutes-per-objective", "0.02", "--encoder", "test_resnet", "--batch-size", "16",
        "--data-dir", str(tmp_path), "--probe-images", "30",
        "--set", "data.num_workers=0", "--set", "data.shuffle_buffer=16",
        "--set", "augment.chunk_size=4", "--threads", "1"])
    headers, rows = _table(report, "objective")
    assert headers == list(care_hue.HEADERS)
    assert [r[0] for r in rows] == ["simclr", "care"]
    for row in rows:
        done = int(row[1].split()[0])
        assert done >= 1 and int(row[2]) == 16 * done
        assert 0.0 <= _fraction(row[3]) <= 1.0
        float(row[5]), float(row[6])
    care, simclr = float(rows[1][6]), float(rows[0][6])
    assert f"**{'yes' if care > simclr else 'no'}** ({care:.3f} vs {simclr:.3f})" in report
    assert "20 train / 10 test CIFAR-10 images" in report


def _row(name: str, **metrics: float) -> "fidelity.Row":
    values = dict(top1=None, rot_ridge=None, rot_mlp=None, rot_mlp_sie=None) | metrics
    return fidelity.Row(name=name, steps="1 (1)", samples="8", **values)


def test_paper_checks_read_the_claims_off_hand_made_rows():
    rows = [_row("vicreg", top1=0.80, rot_mlp=0.20), _row("simclr", top1=0.70, rot4=0.30,
                                                          hue_mlp=0.40),
            _row("essl", top1=0.69, rot4=0.49), _row("care", hue_mlp=0.35),
            _row("sie", top1=0.74, rot_mlp=0.36),  # +0.16 R², 6 points below VICReg
            _row("sie [invariant part, dims 0-255]", top1=0.70, rot_mlp=0.10),
            _row("sie [equivariant part, dims 256-511]", top1=0.60, rot_mlp=0.40),
            _row("seq_jepa", top1=0.76, rot_mlp=0.34), _row("seq_jepa_no_action", rot_mlp=0.28)]
    verdicts = [re.search(r"\*\*(\S+)\*\*", c).group(1)
                for c in fidelity.paper_checks({r.name: r for r in rows}, "simclr")]
    # SIE R², SIE top-1, seq R², seq top-1, no-action (0.08 of a 0.14 advantage kept), SIE
    # parts class, SIE parts rotation, E-SSL 4-rot (+19 points), E-SSL top-1 (-1), CARE hue.
    assert verdicts == ["yes", "no", "no", "yes", "no", "yes", "yes", "no", "yes", "no"]
    without = fidelity.paper_checks({r.name: r for r in rows if r.name != "vicreg"}, "simclr")
    assert sum("**n/a** (not run)" in c for c in without) == 5  # the claims relative to VICReg
    slower = {r.name: r for r in rows} | {"seq_jepa": _row("seq_jepa", top1=0.8, rot_mlp=0.1)}
    assert "**n/a**" in fidelity.paper_checks(slower, "simclr")[4]  # no advantage to lose


def test_pixels_quote_reports_the_published_figure():
    from argparse import Namespace

    from pretrain.probes.probeset import ProbeSet

    data = ProbeSet(images=torch.zeros(4, 3, 32, 32, dtype=torch.uint8),
                    labels=torch.tensor([0, 1, 0, 1]),
                    train=torch.tensor([True, True, False, False]))
    row = cifar10_linear.probe_pixels(data, Namespace(pixels="quote"))
    assert row.top1 == cifar10_linear.PUBLISHED_PIXELS and row.dims == 3072
    assert "published" in row.cells()[0] and row.cells()[3] == "—"
