"""Checkpoint folders on a local filesystem: the manifest written last decides what is a
checkpoint; resume and export take the newest that verifies and say why they skipped the others;
pruning never needs a folder deleted by hand. (S3: tests/test_cluster_storage.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain.train.manifest import (MANIFEST_NAME, FileEntry, Manifest, ManifestError,
                                     check_relative, hash_folder, merge)
from pretrain.train.store import CheckpointRejected, checkpoint_dir_name, local_store


def write_checkpoint(store, step: int, files: dict[str, bytes], tmp: Path, *,
                     publish: bool = True) -> str:
    """Upload ``files`` as checkpoint ``step`` the way ranks do (local folder -> store), then
    publish its manifest unless told not to (a crash before the last write)."""
    local = tmp / f"local-{step}"
    for rel, data in files.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
    name = checkpoint_dir_name(step)
    store.upload(local, name)
    if publish:
        store.publish(name, Manifest(step, hash_folder(local)))
    return name


FILES = {"engine/mp_rank_00_model_states.pt": b"model" * 100, "train_state.json": b'{"step": 1}',
         "encoder/model.safetensors": b"weights" * 50, "encoder/config.json": b"{}"}


def newest_with_reasons(store, prefixes=None) -> tuple[str | None, list[str]]:
    reasons: list[str] = []
    with store.newest(prefixes, on_skip=lambda r: reasons.append(str(r))) as found:
        return (found.name if found else None), reasons


def test_manifest_round_trip_and_paths_that_leave_the_folder_are_refused():
    manifest = Manifest(7, {"a/b.pt": FileEntry("0" * 64, 3), "c.json": FileEntry("f" * 64, 0)})
    assert Manifest.parse(manifest.to_json()) == manifest
    for bad in ("../x", "/etc/passwd", "a/../b", "a//b", "./a", "a\\b", "", MANIFEST_NAME):
        with pytest.raises(ManifestError, match="relative path"):
            check_relative(bad)
        raw = json.loads(manifest.to_json())
        raw["files"][bad] = {"sha256": "0" * 64, "bytes": 1}
        with pytest.raises(ManifestError):
            Manifest.parse(json.dumps(raw).encode())
    for broken in (b"", b"[]", b'{"format": 1, "step": 1, "files": {}}',
                   b'{"format": 2, "step": 1, "files": {"a": {"sha256": "0", "bytes": 1}}}',
                   b'{"format": 1, "step": 1, "files": {"a": {"sha256": "zz", "bytes": 1}}}'):
        with pytest.raises(ManifestError):
            Manifest.parse(broken)


def test_ranks_writing_one_path_differently_is_an_error():
    same = {"x": FileEntry("1" * 64, 1)}
    assert merge([same, same, {"y": FileEntry("2" * 64, 2)}]) == {**same, "y": FileEntry("2" * 64, 2)}
    with pytest.raises(ValueError, match="different x"):
        merge([same, {"x": FileEntry("3" * 64, 1)}])


def test_newest_verified_checkpoint_wins_and_every_damaged_one_is_named(tmp_path):
    store = local_store(tmp_path / "run")
    for step in (10, 20, 30, 40, 50):
        write_checkpoint(store, step, FILES, tmp_path)
    write_checkpoint(store, 60, FILES, tmp_path, publish=False)  # crash before the manifest
    run = tmp_path / "run"
    states = "engine/mp_rank_00_model_states.pt"
    # 50: truncated (what the issue saw); 40: same size, other bytes; 30: a planted extra file;
    # 20: a listed file deleted.
    (run / checkpoint_dir_name(50) / states).write_bytes(b"model" * 10)
    damaged = bytearray((run / checkpoint_dir_name(40) / states).read_bytes())
    damaged[0] ^= 1
    (run / checkpoint_dir_name(40) / states).write_bytes(bytes(damaged))
    (run / checkpoint_dir_name(30) / "engine" / "zero_pp_rank_9_mp_rank_00_optim_states.pt") \
        .write_bytes(b"planted")
    (run / checkpoint_dir_name(20) / "train_state.json").unlink()

    name, reasons = newest_with_reasons(store)
    assert name == checkpoint_dir_name(10)
    assert len(reasons) == 5
    assert reasons[0] == f"{checkpoint_dir_name(60)}: no manifest (incomplete checkpoint)"
    assert reasons[1] == f"{checkpoint_dir_name(50)}: {states} has 50 bytes, the manifest says 500"
    assert reasons[2] == f"{checkpoint_dir_name(40)}: {states}: SHA-256 does not match the manifest"
    assert "zero_pp_rank_9_mp_rank_00_optim_states.pt is not in the manifest" in reasons[3]
    assert reasons[4] == f"{checkpoint_dir_name(20)}: train_state.json is missing"
    assert all("\n" not in r for r in reasons)
    # Export reads only the encoder: checkpoint 40's damage is not in it, but a size mismatch or
    # an unlisted file anywhere still rejects a folder (no hashing needed for those).
    assert newest_with_reasons(store, ("encoder/",))[0] == checkpoint_dir_name(40)


def test_nothing_verifies_gives_none(tmp_path):
    store = local_store(tmp_path / "run")
    assert newest_with_reasons(store) == (None, [])  # no run folder at all
    write_checkpoint(store, 5, FILES, tmp_path, publish=False)
    assert newest_with_reasons(store)[0] is None


def test_manifest_is_published_whole_and_checked_against_the_folder_name(tmp_path):
    store = local_store(tmp_path / "run")
    name = write_checkpoint(store, 3, FILES, tmp_path)
    folder = tmp_path / "run" / name
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["engine", "encoder", "train_state.json", MANIFEST_NAME])  # no temporary file left
    assert store.complete(name)
    # A manifest copied from another step does not make a folder that step's checkpoint.
    other = write_checkpoint(store, 4, FILES, tmp_path)
    (tmp_path / "run" / other / MANIFEST_NAME).write_bytes((folder / MANIFEST_NAME).read_bytes())
    with pytest.raises(CheckpointRejected, match="manifest says step 3"):
        store.manifest(other)


def test_prune_keeps_the_newest_complete_and_clears_older_leftovers(tmp_path):
    store = local_store(tmp_path / "run")
    for step in (1, 2, 3):
        write_checkpoint(store, step, FILES, tmp_path)
    write_checkpoint(store, 4, FILES, tmp_path, publish=False)  # leftover of a crash, older
    for step in (5, 6):
        write_checkpoint(store, step, FILES, tmp_path)
    write_checkpoint(store, 99, FILES, tmp_path, publish=False)  # newer than any: left alone
    deleted = store.prune(keep=2)
    assert deleted == [checkpoint_dir_name(s) for s in (1, 2, 3, 4)]
    assert store.names() == [checkpoint_dir_name(s) for s in (5, 6, 99)]
    # A damaged newest checkpoint does not count as kept: the good one before it stays.
    (tmp_path / "run" / checkpoint_dir_name(6) / "train_state.json").write_bytes(b"{")
    write_checkpoint(store, 7, FILES, tmp_path)
    assert store.prune(keep=2) == [checkpoint_dir_name(6)]
    assert store.names() == [checkpoint_dir_name(s) for s in (5, 7, 99)]


def test_prune_never_deletes_the_checkpoint_just_written_below_skipped_ones(tmp_path):
    """A run that resumed below newer folders it had to skip (a payload refused to unpickle,
    same-size damage: complete by manifest and sizes) writes checkpoint 1 again; counting the
    skipped folders as the ``keep`` newest deleted the new checkpoint at once."""
    store = local_store(tmp_path / "run")
    for step in (2, 3):  # complete, but resume skipped them and started from step 0
        write_checkpoint(store, step, FILES, tmp_path)
    written = write_checkpoint(store, 1, FILES, tmp_path)
    assert store.prune(keep=2, written=written) == []
    assert store.names() == [checkpoint_dir_name(s) for s in (1, 2, 3)]
    write_checkpoint(store, 0, FILES, tmp_path, publish=False)  # an older crash leftover
    assert store.prune(keep=1, written=written) == [checkpoint_dir_name(0)]
    assert store.names() == [checkpoint_dir_name(s) for s in (1, 2, 3)]


@pytest.mark.parametrize("pickled", [b"\x80\x02a.", b"\x80\x02}q\x00(X", b"\x80\x02h\x05.",
                                     b"\x80\x02}(K\x01u.", b"b."])
def test_a_malformed_pickle_is_refused_like_a_payload(pickled, tmp_path):
    """Pickles the allow-list lets through but that are malformed (an APPEND on an empty stack,
    a truncated opcode, a missing memo entry...) raised IndexError, KeyError or struct.error out
    of resume: with a manifest that matches them, every re-run crashed on the same folder."""
    import io
    import zipfile

    import torch

    from pretrain.train.checkpoint import UnsafeCheckpointError, check_loadable

    good = io.BytesIO()
    torch.save({"weights": torch.ones(2)}, good)
    engine = tmp_path / "ckpt" / "engine"
    engine.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(good.getvalue())) as source, \
            zipfile.ZipFile(engine / "mp_rank_00_model_states.pt", "w") as planted:
        for info in source.infolist():
            data = source.read(info.filename)
            planted.writestr(info, pickled if info.filename.endswith("data.pkl") else data)
    with pytest.raises(UnsafeCheckpointError,
                       match="^engine/mp_rank_00_model_states.pt: not a readable torch file"):
        check_loadable(tmp_path / "ckpt")
