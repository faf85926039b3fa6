"""``pretrain data import --format jpeg``: ImageNet-style JPEG shards at a chosen short side."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image

from pretrain.cli.errors import run_cli
from tests.test_data_import_inspect import read_tars as read_shards
from pretrain.data.image import decode_image
from pretrain.data.format import INDEX_NAME
from pretrain.data.importer import Encoding, import_image_folder


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour waves: resampling filters agree on it to a grey level or two."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, 3))
    for c in range(3):
        fx, fy = rng.uniform(0.5, 3.0, 2)
        img[..., c] = 127.5 + 127.5 * np.sin(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 6.3))
    return img.round().astype(np.uint8)


def save(path: Path, img: Image.Image, fmt: str, **kwargs) -> bytes:
    img.save(path, format=fmt, **kwargs)
    return path.read_bytes()


def read_tars(out_dir: Path) -> list[dict[str, bytes]]:
    """The written samples in key order (the import test's reader)."""
    samples = read_shards(out_dir)
    return [samples[k] for k in sorted(samples)]


def quantization(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as img:
        return img.quantization


@pytest.fixture()
def mixed_folder(tmp_path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "images"
    root.mkdir()
    files = {
        "a_big.png": save(root / "a_big.png", Image.fromarray(scene(300, 400, 0)), "PNG"),
        "b_big.jpg": save(root / "b_big.jpg", Image.fromarray(scene(800, 600, 1)), "JPEG",
                          quality=95),
        "c_small.jpg": save(root / "c_small.jpg", Image.fromarray(scene(80, 100, 2)), "JPEG",
                            quality=75),
        "d_progressive.jpg": save(root / "d_progressive.jpg", Image.fromarray(scene(64, 64, 3)),
                                  "JPEG", progressive=True),
        "e_cmyk.jpg": save(root / "e_cmyk.jpg", Image.new("CMYK", (40, 40), (0, 255, 0, 0)),
                           "JPEG"),
        "f_rgba.png": save(root / "f_rgba.png", Image.new("RGBA", (30, 20), (200, 10, 10, 128)),
                           "PNG"),
        "g_gray.jpg": save(root / "g_gray.jpg", Image.new("L", (50, 50), 77), "JPEG"),
    }
    return root, files


def test_jpeg_format_writes_fitted_baseline_rgb_jpegs(mixed_folder, tmp_path) -> None:
    root, files = mixed_folder
    report = import_image_folder(root, tmp_path / "out", encoding=Encoding.for_format("jpeg"))
    assert (report.samples, report.unreadable, report.reencoded) == (7, 0, 5)
    samples = read_tars(tmp_path / "out")
    assert all(set(s) == {"jpg"} for s in samples)
    opened = [Image.open(io.BytesIO(s["jpg"])) for s in samples]
    assert all(img.format == "JPEG" and img.mode in ("RGB", "L") for img in opened)
    assert not any(img.info.get("progressive") or img.info.get("progression") for img in opened)
    # Shorter side 256, aspect ratio kept; small images never enlarged.
    assert [img.size for img in opened] == [(341, 256), (256, 341), (100, 80), (64, 64), (40, 40),
                                            (30, 20), (50, 50)]
    # Baseline RGB / grey JPEGs that fit are kept byte for byte, whatever their quality.
    assert samples[2]["jpg"] == files["c_small.jpg"] and samples[6]["jpg"] == files["g_gray.jpg"]
    # Re-encoded ones carry quality 90's quantisation tables.
    q90 = io.BytesIO()
    Image.fromarray(scene(8, 8, 0)).save(q90, format="JPEG", quality=90)
    assert quantization(samples[0]["jpg"]) == quantization(q90.getvalue())
    # The pixels are the source's, resized: compared with a direct Lanczos resize of the source.
    reference = np.asarray(Image.fromarray(scene(300, 400, 0)).resize((341, 256),
                                                                      Image.Resampling.LANCZOS))
    assert np.abs(np.asarray(opened[0]).astype(int) - reference).mean() < 2.0
    cmyk = np.asarray(opened[4].convert("RGB")).astype(int)
    assert np.abs(cmyk - np.asarray(Image.new("CMYK", (1, 1), (0, 255, 0, 0)).convert("RGB"))).max() <= 6
    assert np.abs(np.asarray(opened[5]).astype(int) - [200, 10, 10]).max() <= 6  # alpha dropped
    index = json.loads((tmp_path / "out" / INDEX_NAME).read_text())
    assert index["encoding"] == {"image_format": "jpeg", "short_side": 256, "quality": 90}
    # And the reader decodes the set at 224 px.
    assert decode_image(samples[1]["jpg"], 224).shape == (224, 224, 3)


def test_short_side_quality_and_png(mixed_folder, tmp_path) -> None:
    root, files = mixed_folder
    import_image_folder(root, tmp_path / "q", encoding=Encoding.for_format("jpeg", 64, 50))
    sizes = [Image.open(io.BytesIO(s["jpg"])).size for s in read_tars(tmp_path / "q")]
    assert sizes == [(85, 64), (64, 85), (80, 64), (64, 64), (40, 40), (30, 20), (50, 50)]
    q50 = io.BytesIO()
    Image.fromarray(scene(8, 8, 0)).save(q50, format="JPEG", quality=50)
    assert quantization(read_tars(tmp_path / "q")[0]["jpg"]) == quantization(q50.getvalue())
    import_image_folder(root, tmp_path / "same", encoding=Encoding.for_format("jpeg", 0))
    sizes = [Image.open(io.BytesIO(s["jpg"])).size for s in read_tars(tmp_path / "same")]
    assert sizes[:2] == [(400, 300), (600, 800)]  # 0: sizes kept
    import_image_folder(root, tmp_path / "png", encoding=Encoding.for_format("png", 32))
    stored = read_tars(tmp_path / "png")
    assert all(set(s) == {"png"} for s in stored)
    assert Image.open(io.BytesIO(stored[0]["png"])).size == (43, 32)
    # "keep" is today's behaviour: nothing re-encoded but the non-JPEG/PNG formats.
    import_image_folder(root, tmp_path / "keep")
    kept = read_tars(tmp_path / "keep")
    assert [next(iter(s.values())) for s in kept] == list(files.values())
    assert "encoding" not in json.loads((tmp_path / "keep" / INDEX_NAME).read_text())


def test_bad_encodings_are_refused() -> None:
    for kwargs, message in [(dict(image_format="gif"), "image_format"),
                            (dict(short_side=4), "short_side"), (dict(quality=0), "quality"),
                            (dict(quality=100), "quality")]:
        with pytest.raises(ValueError, match=message):
            Encoding(**kwargs)
    with pytest.raises(ValueError, match="not both"):
        import_image_folder(".", "unused", image_size=32, encoding=Encoding(short_side=64))


@pytest.mark.parametrize("args,message", [
    (["--format", "gif"], "Invalid value for --format: 'gif' is not one of keep, jpeg, png"),
    (["--short-side", "4"], "Invalid value for --short-side: must be >= 8 px, or 0 to keep sizes"),
    (["--quality", "96"], "Invalid value for --quality: must be in 1..95"),
    (["--quality", "x"], "Invalid value for '--quality'"),
])
def test_cli_bad_values_give_one_line_and_exit_2(tmp_path, capsys, args, message) -> None:
    from pretrain.cli.main import app

    (tmp_path / "in").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(typer.main.get_command(app), ["data", "import", str(tmp_path / "in"), "--out",
                                              str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith(f"pretrain: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_cli_imports_jpeg(mixed_folder, tmp_path, capsys) -> None:
    from pretrain.cli.main import app

    root, _ = mixed_folder
    with pytest.raises(SystemExit) as exit_info:
        run_cli(typer.main.get_command(app), ["data", "import", str(root), "--out",
                                              str(tmp_path / "out"), "--format", "jpeg",
                                              "--short-side", "128"])
    assert exit_info.value.code == 0
    assert "wrote 7 images (unlabeled) in 1 shard(s)" in capsys.readouterr().out
    index = json.loads((tmp_path / "out" / INDEX_NAME).read_text())
    assert index["encoding"] == {"image_format": "jpeg", "short_side": 128, "quality": 90}
