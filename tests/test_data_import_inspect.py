"""Image-folder import and shard inspection, checked against the tar files read directly."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretrain.data.errors import DataError
from pretrain.data.format import INDEX_NAME, view_key
from pretrain.data.importer import import_image_folder
from pretrain.data.inspect import format_report, inspect_shards
from pretrain.data.writer import ShardSetWriter


def encoded(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def read_tars(out_dir: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} over every shard, read with the standard library only."""
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted(out_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture()
def class_folder(tmp_path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "images"
    (root / "cats" / "sub").mkdir(parents=True)
    (root / "dogs").mkdir()
    files = {
        "cats/a.png": encoded(noise(4, 6, 0), "PNG"),
        "cats/b.jpg": encoded(noise(5, 5, 1), "JPEG"),
        "cats/c.bmp": encoded(noise(4, 4, 2), "BMP"),
        "cats/notes.txt": b"not an image",
        "cats/.DS_Store": b"\x00\x01",
        "cats/sub/d.png": encoded(noise(3, 3, 3), "PNG"),
        "dogs/e.gif": encoded(np.full((4, 4, 3), [9, 90, 200], np.uint8), "GIF"),
        "dogs/f.jpg": encoded(noise(64, 64, 4), "JPEG")[:600],
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root, files


def test_import_class_folders(class_folder, tmp_path) -> None:
    root, files = class_folder
    out = tmp_path / "shards"
    report = import_image_folder(root, out, shard_size=2)
    assert (report.samples, report.shards, report.unreadable, report.reencoded) == (5, 3, 2, 2)
    assert report.classes == ["cats", "dogs"]
    assert sorted(Path(p).name for p, _ in report.unreadable_files) == ["f.jpg", "notes.txt"]
    index = json.loads((out / INDEX_NAME).read_text())
    assert index["kind"] == "imported" and index["classes"] == ["cats", "dogs"]
    assert [s["samples"] for s in index["shards"]] == [2, 2, 1]
    samples = read_tars(out)
    ordered = [samples[k] for k in sorted(samples)]
    sources = ["cats/a.png", "cats/b.jpg", "cats/c.bmp", "cats/sub/d.png", "dogs/e.gif"]
    assert [s["cls"] for s in ordered] == [b"0", b"0", b"0", b"0", b"1"]
    assert ordered[0]["png"] == files["cats/a.png"]  # PNG and JPEG are kept byte for byte
    assert ordered[1]["jpg"] == files["cats/b.jpg"]
    assert ordered[3]["png"] == files["cats/sub/d.png"]
    for i in (2, 4):  # BMP and GIF are re-encoded losslessly to PNG
        assert set(ordered[i]) == {"png", "cls"} and ordered[i]["png"][:4] == b"\x89PNG"
        assert np.array_equal(pixels(ordered[i]["png"]), pixels(files[sources[i]]))


def test_import_is_deterministic(class_folder, tmp_path) -> None:
    root, _ = class_folder
    import_image_folder(root, tmp_path / "one", shard_size=3)
    import_image_folder(root, tmp_path / "two", shard_size=3)
    assert read_tars(tmp_path / "one") == read_tars(tmp_path / "two")


def test_import_flat_folder_with_resize(tmp_path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    (root / "x.jpg").write_bytes(encoded(np.full((6, 8, 3), 120, np.uint8), "JPEG", quality=100))
    (root / "y.png").write_bytes(encoded(noise(4, 4, 5), "PNG"))
    report = import_image_folder(root, tmp_path / "out", image_size=4)
    assert (report.samples, report.classes, report.reencoded) == (2, [], 1)
    index = json.loads((tmp_path / "out" / INDEX_NAME).read_text())
    assert "classes" not in index and index["kind"] == "imported"
    x, y = (s for _, s in sorted(read_tars(tmp_path / "out").items()))
    assert set(x) == {"jpg"} and set(y) == {"png"}
    assert pixels(x["jpg"]).shape == (4, 4, 3) and np.abs(pixels(x["jpg"]).astype(int) - 120).max() <= 3
    assert y["png"] == (root / "y.png").read_bytes()


def test_import_errors_name_the_folder(tmp_path) -> None:
    with pytest.raises(DataError, match=str(tmp_path / "missing")):
        import_image_folder(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=str(tmp_path / "empty")):
        import_image_folder(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match=str(tmp_path / "junk")):
        import_image_folder(tmp_path / "junk", tmp_path / "out2")
    assert not (tmp_path / "out2" / INDEX_NAME).exists()
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.png").write_bytes(encoded(noise(2, 2, 0), "PNG"))
    import_image_folder(tmp_path / "ok", tmp_path / "out3")
    with pytest.raises(DataError, match=str(tmp_path / "out3")):
        import_image_folder(tmp_path / "ok", tmp_path / "out3")
    assert not (tmp_path / "out2").exists()  # a failed import leaves nothing under its name
    assert not list(tmp_path.glob(".*importing*"))


def test_import_skips_and_counts_a_file_with_an_io_error(tmp_path) -> None:
    # Issue 11 item 12: an I/O error ended the import with a traceback and left 2 shards and no
    # index.json. /proc/self/mem is a regular file whose first read fails with EIO, even as root.
    root = tmp_path / "images" / "cat"
    root.mkdir(parents=True)
    for i in range(4):
        (root / f"{i}.png").write_bytes(encoded(noise(2, 2, i), "PNG"))
    (root / "2b.png").symlink_to("/proc/self/mem")
    lines: list[str] = []
    done: list[tuple[int, int]] = []
    report = import_image_folder(tmp_path / "images", tmp_path / "out", shard_size=2,
                                 progress=lambda d, t: done.append((d, t)), stage=lines.append)
    assert (report.samples, report.unreadable, report.shards) == (4, 1, 2)
    assert report.unreadable_files == [(str(root / "2b.png"),
                                        "cannot read the file (Input/output error)")]
    assert json.loads((tmp_path / "out" / INDEX_NAME).read_text())  # complete, with its index
    assert done == [(i, 5) for i in range(1, 6)]
    assert lines == [f"found 5 files (1 classes) in {tmp_path / 'images'}",
                     f"wrote 2 shard(s) and {INDEX_NAME} to {tmp_path / 'out'}"]


def test_interrupted_import_leaves_nothing_and_can_be_run_again(tmp_path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    for i in range(5):
        (root / f"{i}.png").write_bytes(encoded(noise(2, 2, i), "PNG"))

    def interrupt(done: int, total: int) -> None:
        if done == 3:  # after the first shard was completed
            raise KeyboardInterrupt

    out = tmp_path / "out"
    out.mkdir()  # an existing empty folder is a valid target
    with pytest.raises(KeyboardInterrupt):
        import_image_folder(root, out, shard_size=2, progress=interrupt)
    assert out.is_dir() and not any(out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "out"]
    report = import_image_folder(root, out, shard_size=2)
    assert (report.samples, report.shards) == (5, 3)
    assert sorted(p.name for p in out.iterdir()) == [
        INDEX_NAME, "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]


def test_inspect_imported_set(class_folder, tmp_path) -> None:
    root, _ = class_folder
    import_image_folder(root, tmp_path / "shards", shard_size=2)
    report = inspect_shards(tmp_path / "shards")
    assert (report.shards, report.samples, report.listed_samples, report.truncated) == (3, 5, 5, False)
    assert report.keys == {"cls": 5, "jpg": 1, "png": 4}
    assert report.classes == {0: 4, 1: 1}
    assert report.class_names == ["cats", "dogs"]
    assert report.views_per_sample == {1: 5}
    assert report.image_sizes == {(4, 4): 2, (6, 4): 1, (5, 5): 1, (3, 3): 1}
    assert report.unreadable == 0 and report.broken_shards == []
    text = format_report(report)
    assert "5 read" in text and "0 (cats): 4" in text and "1 (dogs): 1" in text and "6x4: 1" in text


def test_inspect_finds_bad_samples_views_and_broken_shards(tmp_path) -> None:
    good = encoded(noise(8, 8, 0), "PNG")
    with ShardSetWriter(tmp_path, shard_size=3) as writer:
        for i in range(5):
            if i == 1:
                files = {"png": b"garbage", "cls": b"1"}
            elif i == 3:
                files = {"cls": b"2"}
            else:
                files = {view_key(v): good for v in range(3)} | {"cls": b"0"}
            writer.write(f"k{i}", files)
    (tmp_path / "shard-000002.tar").write_bytes(b"this is no tar file" * 40)
    report = inspect_shards(str(tmp_path))
    assert (report.shards, report.samples, report.unreadable) == (3, 5, 2)
    assert [(shard, key) for shard, key, _ in report.unreadable_examples] == [
        ("shard-000000.tar", "k1"), ("shard-000001.tar", "k3")]
    assert "no image" in report.unreadable_examples[1][2]
    assert report.views_per_sample == {0: 1, 1: 1, 3: 3}
    assert report.image_sizes == {(8, 8): 9}
    assert [Path(url).name for url, _ in report.broken_shards] == ["shard-000002.tar"]
    assert report.listed_samples is None  # the broken shard cannot be counted
    text = format_report(report)
    assert "k1" in text and "broken shard" in text and "2 (40.00%)" in text
    limited = inspect_shards(str(tmp_path / "shard-000000.tar"), max_samples=2)
    assert (limited.samples, limited.truncated, limited.listed_samples) == (2, True, 3)
    assert "stopped at max_samples" in format_report(limited)


def test_inspect_missing_path(tmp_path) -> None:
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        inspect_shards(tmp_path / "nope")
