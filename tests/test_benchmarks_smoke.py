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

from benchmarks import care_hue, cifar10_linear, cuda_check, fidelity, seeds  # noqa: E402


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
def test_fidelity_main_prints_seed_tables_and_decides_the_claims(tmp_path):
    _tiny_cifar(tmp_path / "cifar")
    synth = ["--set", "data.synth3d.classes=4", "--set", "data.synth3d.instances_per_class=4",
             "--set", "data.synth3d.views=4", "--set", f"data.cache_dir={tmp_path / 'data'}",
             "--set", "data.num_workers=0", "--set", "data.shuffle_buffer=8"]
    common = ["--encoder", "test_resnet", "--batch-size", "8", "--probe-objects", "24",
              "--probe", "mlp_steps=40", "--probe", "linear_max_iter=30", "--threads", "1",
              "--seeds", "0", "1", *synth]
    out = tmp_path / "fidelity.md"
    report = fidelity.main([
        *common, "--steps", "2", "--objectives", "vicreg", "sie", "seq_jepa_no_action",
        "--cifar-objectives", "simclr", "essl", "--cifar-steps", "1", "--cifar-batch-size", "16",
        "--cifar-dir", str(tmp_path / "cifar"), "--cifar-probe-images", "30",
        "--cifar-set", "data.num_workers=0", "--cifar-set", "data.shuffle_buffer=16",
        "--save-dir", str(tmp_path / "kept"), "--out", str(out)])
    assert out.read_text() == report + "\n"
    headers, rows = _table(report.split("### CIFAR-10")[0], "objective")
    assert headers == ["objective", "steps", "train s",
                       *(c.header for c in fidelity.SYNTH3D_COLUMNS)]
    names = [r[0] for r in rows]
    assert names == ["vicreg", "sie", "sie [invariant part, dims 0-47]",
                     "sie [equivariant part, dims 48-95]", "seq_jepa_no_action",
                     "seq_jepa_no_action [aggregate part]"]
    col = {h: i for i, h in enumerate(headers)}
    for row in rows:
        mean, sd = row[col["class top-1"]].split(" ± ")  # two seeds: mean ± sd
        assert 0.0 <= _fraction(mean + "%") <= 1.0 and _fraction(sd) >= 0.0
        float(row[col["rot R² MLP"]].split(" ± ")[0])
        assert row[col["steps"]] == ("—" if "[" in row[0] else "2")
    use = {r[0]: r[col["action use"]] for r in rows}
    assert {k for k, v in use.items() if v != "—"} == {"sie", "seq_jepa_no_action"}
    # Known answer: a predictor without action conditioning cannot depend on the actions.
    assert use["seq_jepa_no_action"] == "1.00 ± 0.00"
    no_action = rows[names.index("seq_jepa_no_action")]
    assert float(no_action[col["no change"]].split(" ± ")[0]) >= 0.0
    cifar_headers, cifar_rows = _table(report.split("### CIFAR-10")[1], "objective")
    assert cifar_headers[3:] == [c.header for c in fidelity.CIFAR_COLUMNS]
    assert [r[0] for r in cifar_rows] == ["simclr", "essl"]
    claims = [line for line in report.splitlines() if line.startswith("- ") and "**" in line]
    assert len(claims) == 10
    assert all(re.search(r"\*\*(yes|no|no \(within seed noise\)|n/a)\*\*", c) for c in claims)
    assert "E-SSL 4-rotation accuracy ≥ its base (simclr)'s + 20 points (CIFAR-10)" in report
    assert "seq-JEPA rotation R² ≥ VICReg's + 0.15: **n/a** (not run)" in report
    assert "budget: 2 optimizer steps per synth3d run, 1 per CIFAR-10 run" in report
    assert "seeds 0 1" in report and "command: `" in report and "cores" in report

    # The kept weights re-probe to the same rows without training again.
    again = fidelity.main([*common, "--from-saved", str(tmp_path / "kept"), "--reprobe",
                           "--objectives", "vicreg", "sie", "--cifar-objectives"])
    assert _table(again, "objective")[1] == [r for r in rows if r[0].startswith(("vicreg", "sie"))]
    assert f"kept in {tmp_path / 'kept'}" in again
    # Without --reprobe the kept metrics assemble the whole report again, claims included.
    (tmp_path / "kept" / "vicreg-seed0.safetensors").unlink()  # not needed any more
    assembled = fidelity.main([*common, "--from-saved", str(tmp_path / "kept"),
                               "--objectives", "vicreg", "sie", "seq_jepa_no_action",
                               "--cifar-objectives", "simclr", "essl",
                               "--cifar-dir", str(tmp_path / "cifar")])
    assert assembled.split("### Synthetic")[1] == report.split("### Synthetic")[1]


@pytest.mark.slow
def test_cuda_check_runs_every_check_on_the_cpu(tmp_path):
    """The GPU check script's code path, on the CPU with bf16 forced: the report holds every
    check, and every check passes on any x86 CPU (AVX-512 ones included, where oneDNN's bf16
    weight gradients needed ``pretrain.train.precision``'s guard)."""
    out = tmp_path / "cuda_check.md"
    tiny = [f"--set={kv}" for kv in (
        "data.synth3d.classes=4", "data.synth3d.instances_per_class=4", "data.synth3d.views=4",
        f"data.cache_dir={tmp_path / 'data'}", "data.shuffle_buffer=8",
        "encoder.model=test_resnet")]
    code = cuda_check.main(["--device", "cpu", "--image-size", "16", "--batch-size", "8",
                            "--bench", "test_resnet:8", "--bench-steps", "1",
                            "--bench-repeats", "1", "--workers", "0", *tiny, "--out", str(out)])
    report = out.read_text()
    _, rows = _table(report, "check")
    result = {row[0]: row[3] for row in rows}
    assert len(result) == 13
    assert [name for name, verdict in result.items() if verdict != "pass"] == []
    assert code == 0
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
        "--set", "objective.care.chunk_size=4", "--threads", "1"])
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


def _runs(name: str, **metrics: tuple[float, ...]) -> "fidelity.Runs":
    """A row measured on seeds 0, 1, 2: ``metric=(v0, v1, v2)``."""
    runs = fidelity.Runs(name)
    for seed in range(3):
        runs.add(seed, {k: v[seed] for k, v in metrics.items()})
    return runs


def test_paper_checks_decide_over_seeds_off_hand_made_rows():
    rows = [_runs("vicreg", top1=(0.80, 0.81, 0.79), rot_mlp=(0.20, 0.19, 0.21)),
            # +0.16 R² with sd 0.02: clears 0.15 by less than twice the spread.
            _runs("sie", top1=(0.74, 0.75, 0.73), rot_mlp=(0.36, 0.37, 0.35)),
            _runs("sie [invariant part, dims 0-255]", top1=(0.70, 0.71, 0.69),
                  rot_mlp=(0.10, 0.11, 0.09)),
            _runs("sie [equivariant part, dims 256-511]", top1=(0.60, 0.70, 0.71),
                  rot_mlp=(0.40, 0.41, 0.39)),
            _runs("seq_jepa", top1=(0.76, 0.77, 0.75), rot_mlp=(0.50, 0.52, 0.48)),
            _runs("seq_jepa_no_action", rot_mlp=(0.22, 0.20, 0.21))]
    cifar = [_runs("simclr", top1=(0.70, 0.70, 0.70), rot4=(0.30, 0.31, 0.29),
                   hue_mlp=(0.40, 0.41, 0.39)),
             _runs("essl", top1=(0.69, 0.69, 0.69), rot4=(0.60, 0.61, 0.59)),
             _runs("care", hue_mlp=(0.35, 0.45, 0.40))]
    checks = fidelity.paper_checks({r.name: r for r in rows}, "simclr",
                                   {r.name: r for r in cifar})
    verdicts = [re.search(r"\*\*(.+?)\*\*", c).group(1) for c in checks]
    # SIE R², SIE top-1 (6 points below), seq R², seq top-1, no-action ablation, SIE parts
    # class (0.70 vs 0.67 ± 0.06: noise), SIE parts rotation, E-SSL 4-rot (+30 points), E-SSL
    # top-1 (-1 point), CARE hue (equal means).
    assert verdicts == ["no (within seed noise)", "no", "yes", "yes", "yes",
                        "no (within seed noise)", "yes", "yes", "yes", "no (within seed noise)"]
    assert "(CIFAR-10)" in checks[7] and "margin +0.100 ± 0.000, 3 seeds" in checks[7]
    without = fidelity.paper_checks({r.name: r for r in rows if r.name != "vicreg"}, "simclr",
                                    {r.name: r for r in cifar})
    assert sum("**n/a** (not run)" in c for c in without) == 5  # the claims relative to VICReg
    slower = {r.name: r for r in rows} | {"seq_jepa": _runs("seq_jepa", top1=(0.8,) * 3,
                                                             rot_mlp=(0.1, 0.12, 0.11))}
    no_gain = fidelity.paper_checks(slower, "simclr", {r.name: r for r in cifar})[4]
    assert "**n/a**" in no_gain and "precondition" in no_gain  # no advantage to lose
    one_seed = fidelity.Runs("vicreg")
    one_seed.add(0, {"top1": 0.8, "rot_mlp": 0.2})
    single = fidelity.paper_checks({"vicreg": one_seed, "sie": one_seed}, "simclr", {})
    assert "**n/a (one seed)**" in single[0]


def test_seed_cells_and_verdicts():
    assert seeds.cell([0.5, 0.7, 0.6], percent=True) == "60.0 ± 10.0%"
    assert seeds.cell([0.5], percent=True) == "50.0%"
    assert seeds.cell([0.25]) == "0.250" and seeds.cell([None, None]) == "—"
    assert seeds.verdict([0.3, 0.31, 0.29]) == "yes"
    assert seeds.verdict([-0.3, -0.31, -0.29]) == "no"
    assert seeds.verdict([0.1, -0.1, 0.05]) == "no (within seed noise)"
    assert seeds.verdict([0.2]) == "n/a (one seed)"
    assert seeds.verdict([0.0, 0.0, 0.0]) == "no"  # a tie is not a gain
    assert seeds.paired([{0: 1.0, 1: 2.0}, {1: 3.0, 2: 4.0}]) == [(2.0, 3.0)]
    assert seeds.paired([{0: 1.0}, None]) is None


def test_pixels_quote_reports_the_published_figure():
    from argparse import Namespace

    from pretrain.probes.probeset import ProbeSet

    data = ProbeSet(images=torch.zeros(4, 3, 32, 32, dtype=torch.uint8),
                    labels=torch.tensor([0, 1, 0, 1]),
                    train=torch.tensor([True, True, False, False]))
    row = cifar10_linear.probe_pixels(data, Namespace(pixels="quote"))
    assert row.top1 == cifar10_linear.PUBLISHED_PIXELS and row.dims == 3072
    assert "published" in row.cells()[0] and row.cells()[3] == "—"
