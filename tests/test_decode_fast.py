"""The decoder's fast paths: reduced-size JPEG decoding, the generator-free view draw, the
single-copy collate and the packed JPEG batch of the GPU decode (checked on the CPU, plus one
CUDA test where a GPU is present)."""

from __future__ import annotations

import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pretrain.data.decode import DecodedSample, choose_views, collate, decode_sample
from pretrain.data.errors import DataError
from pretrain.data.format import ShardBatch, view_key
from pretrain.data.image import BadSample, decode_image, draft_for
from pretrain.data.gpu_decode import (PackedJpegs, decode_packed, pack_jpegs, resolve_gpu_decode,
                                      square_batch)


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like test image: smooth colour waves (a few cycles per image) and flat discs with
    hard edges."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(4):
            fx, fy = rng.uniform(0.5, 4.0, 2)
            img[..., c] += np.sin(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi))
    img = (img - img.min()) / (img.max() - img.min()) * 255
    for _ in range(6):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, w / max(h, w)), rng.uniform(0.08, 0.25)
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return img.astype(np.uint8)


def jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def full_decode(data: bytes, size: int) -> np.ndarray:
    """The reference: every pixel decoded, then the decoder's own crop + resize."""
    return decode_image(data, size, reduced=False)


# Stated tolerance of reduced-size decoding, in grey levels of 255, for photo-like content: libjpeg's
# DCT scaling is a box-like filter where a full decode + bilinear resize is a triangle filter, so the
# two differ at hard edges (a few pixels by up to ~40 levels), not on average.
DRAFT_MEAN_TOL = 1.5
DRAFT_P99_TOL = 16


@pytest.mark.parametrize("h,w,size,scale", [(512, 683, 224, 2), (1024, 768, 224, 2),
                                            (480, 640, 112, 4), (512, 512, 128, 4),
                                            (333, 500, 96, 2)])
def test_drafted_jpeg_decode_matches_full_decode(h, w, size, scale) -> None:
    data = jpeg(scene(h, w, seed=h + w))
    with Image.open(io.BytesIO(data)) as img:
        assert draft_for(img, size)
        img.load()
        assert min(img.size) == -(-min(h, w) // scale) >= size  # reduced, still covering size
    fast, reference = decode_image(data, size).astype(int), full_decode(data, size).astype(int)
    diff = np.abs(fast - reference)
    assert fast.shape == (size, size, 3)
    assert diff.mean() <= DRAFT_MEAN_TOL
    assert np.percentile(diff, 99) <= DRAFT_P99_TOL


def test_no_draft_below_twice_the_size_nor_for_png() -> None:
    data = jpeg(scene(300, 400))
    with Image.open(io.BytesIO(data)) as img:
        assert not draft_for(img, 224)  # 300 < 2 * 224: decoded in full
    assert np.array_equal(decode_image(data, 224), full_decode(data, 224))
    with Image.open(io.BytesIO(png(scene(512, 512)))) as img:
        assert not draft_for(img, 128)


def test_choose_views_is_deterministic_distinct_and_uniform() -> None:
    draws = [tuple(choose_views(4, 2, (7, 0, 1, s, o))) for s in range(3) for o in range(2000)]
    assert draws == [tuple(choose_views(4, 2, (7, 0, 1, s, o))) for s in range(3) for o in range(2000)]
    assert all(len(set(d)) == 2 and all(0 <= v < 4 for v in d) for d in draws)
    counts = Counter(draws)
    assert len(counts) == 12  # every ordered pair occurs
    expected = len(draws) / 12
    assert all(abs(n - expected) < 0.15 * expected for n in counts.values()), counts
    # Each position is uniform over the views (a biased shuffle shows up here first).
    for position in range(2):
        per_view = Counter(d[position] for d in draws)
        assert all(abs(n - len(draws) / 4) < 0.08 * len(draws) / 4 for n in per_view.values())
    # The seed's parts all matter, negative ones included, and nearby seeds are not correlated.
    assert len({tuple(choose_views(8, 3, (seed, -1, 2))) for seed in range(-20, 20)}) > 25
    assert choose_views(8, 8, (1,)) == list(range(8)) and choose_views(2, 5, (1,)) == [0, 1, 0, 1, 0]


def sample(seed: int, views: int = 2, size: int = 6) -> DecodedSample:
    rng = np.random.default_rng(seed)
    return DecodedSample(images=rng.integers(0, 256, (views, size, size + 1, 3), dtype=np.uint8),
                         label=seed, key=f"k{seed}")


class _Batches(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        images, labels, _ = collate([sample(4 * i + j) for j in range(4)])
        return images, images.is_shared(), labels


def test_collate_is_channel_first_and_shared_in_a_loader_worker() -> None:
    samples = [sample(i) for i in range(3)]
    images, labels, latents = collate(samples)
    reference = torch.from_numpy(np.stack([s.images for s in samples])).permute(0, 1, 4, 2, 3)
    assert images.shape == (3, 2, 3, 6, 7) and images.is_contiguous()
    assert torch.equal(images, reference) and labels.tolist() == [0, 1, 2] and latents == {}
    loader = DataLoader(_Batches(), batch_size=None, num_workers=1)
    for i, (images, shared_in_worker, labels) in enumerate(loader):
        assert shared_in_worker  # allocated in shared memory: no extra copy on the way out
        expected = collate([sample(4 * i + j) for j in range(4)])[0]
        assert torch.equal(images, expected)
    with pytest.raises(DataError, match="different sizes"):
        collate([sample(0), sample(1, size=5)])


def test_pack_jpegs_keeps_every_file_and_its_place() -> None:
    files = [[jpeg(scene(8 + s, 9, seed=10 * s + v)) for v in range(3)] for s in range(2)]
    packed = pack_jpegs(files, image_size=8)
    assert (packed.batch_size, packed.views, packed.image_size) == (2, 3, 8)
    assert packed.data.dtype == torch.uint8 and packed.offsets.tolist()[0] == 0
    assert [bytes(f.numpy()) for f in packed.files()] == [f for views in files for f in views]
    assert packed.data.numel() == sum(len(f) for views in files for f in views)
    with pytest.raises(DataError, match="different numbers of views"):
        pack_jpegs([files[0], files[1][:2]])


@pytest.mark.parametrize("h,w", [(32, 32), (40, 40), (48, 64), (50, 37)])
def test_decode_packed_on_cpu_matches_the_pil_decoder(h, w) -> None:
    # Below twice the size, so the PIL path decodes in full: both paths resize the same pixels.
    files = [[jpeg(scene(h, w, seed=s))] for s in range(3)]
    out = decode_packed(pack_jpegs(files), "cpu", image_size=32)
    assert out.shape == (3, 1, 3, 32, 32) and out.dtype == torch.uint8
    reference = np.stack([decode_image(f[0], 32) for f in files]).transpose(0, 3, 1, 2)
    diff = (out[:, 0].int() - torch.from_numpy(reference).int()).abs().float()
    # Same crop, same filter: what is left is the two libjpeg builds' rounding (IDCT, chroma
    # upsampling) and float vs fixed-point resampling, a level or two here and there.
    assert diff.mean() <= 0.5 and torch.quantile(diff, 0.99) <= 3


def test_square_batch_groups_sizes_and_keeps_exact_ones() -> None:
    exact = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    wide = torch.randint(0, 256, (3, 16, 24), dtype=torch.uint8)
    out = square_batch([exact, wide, exact], 16)
    assert torch.equal(out[0], exact) and torch.equal(out[2], exact)
    assert torch.equal(out[1], wide[:, :, 4:20])  # shorter side already 16: center crop only
    with pytest.raises(DataError, match="different sizes"):
        square_batch([exact, wide], None)


def test_keep_encoded_samples_pack_and_decode_as_a_batch() -> None:
    views = [jpeg(scene(48, 48, seed=v)) for v in range(3)]
    raw = {"__key__": "a", "__url__": "u", "cls": b"4", "latents.json": b'{"object_hue": [0.1, 0.2, 0.3]}',
           **{view_key(v, "jpg"): data for v, data in enumerate(views)}}
    kept = decode_sample(raw, image_size=32, views=2, seed=(3, 1))
    encoded = decode_sample(raw, image_size=32, views=2, seed=(3, 1), keep_encoded=True)
    chosen = choose_views(3, 2, (3, 1))
    assert encoded.encoded == tuple(views[v] for v in chosen) and encoded.images.size == 0
    assert encoded.label == 4 and np.allclose(encoded.latents["object_hue"], kept.latents["object_hue"])
    packed, labels, latents = collate([encoded, encoded])
    assert isinstance(packed, PackedJpegs) and labels.tolist() == [4, 4]
    batch = ShardBatch(images=packed, labels=labels, latents=latents).to("cpu")
    assert batch.images.shape == (2, 2, 3, 32, 32)
    diff = (batch.images[0].permute(0, 2, 3, 1).int() - torch.from_numpy(kept.images).int()).abs()
    assert diff.float().mean() <= 0.2 and int(diff.max()) <= 3
    with pytest.raises(DataError, match="needs JPEG shards"):
        decode_sample({"png": png(scene(8, 8))}, image_size=8, views=1, seed=(0,), keep_encoded=True)
    with pytest.raises(BadSample, match="JPEG header"):
        decode_sample({"jpg": b"\xff\xd8\xff" + b"\x00" * 20}, image_size=8, views=1, seed=(0,),
                      keep_encoded=True)


def test_an_undecodable_file_is_replaced_by_the_previous_good_one(caplog) -> None:
    good = [jpeg(scene(16, 16, seed=s)) for s in range(2)]
    broken = good[0][:200] + b"\x00" * 300  # header intact, pixels not
    with caplog.at_level(logging.WARNING, logger="pretrain.data"):
        out = decode_packed(pack_jpegs([[good[0]], [broken], [good[1]]]), "cpu", image_size=16)
    assert torch.equal(out[1], out[0]) and not torch.equal(out[2], out[0])
    assert sum("could not be decoded" in r.message for r in caplog.records) == 1
    with pytest.raises(DataError, match="none of the 1"):
        decode_packed(pack_jpegs([[broken]]), "cpu", image_size=16)


def test_gpu_decode_on_a_cpu_device_falls_back_with_one_line(caplog, monkeypatch) -> None:
    from pretrain.data import gpu_decode

    monkeypatch.setattr(gpu_decode, "_fallback_logged", set())
    with caplog.at_level(logging.WARNING, logger="pretrain.data"):
        assert resolve_gpu_decode(True, torch.device("cpu")) is False
        assert resolve_gpu_decode(True, "cpu") is False  # a second loader: no second line
        assert resolve_gpu_decode(False, "cpu") is False
    assert [r.message for r in caplog.records if "gpu_decode" in r.message] == [
        "data.gpu_decode is set but the device is cpu: JPEGs are decoded on the CPU in the loader "
        "workers"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_decode_packed_on_cuda_matches_the_cpu_path() -> None:
    assert resolve_gpu_decode(True, "cuda")
    files = [[jpeg(scene(256, 256 + 40 * s, seed=10 * s + v)) for v in range(2)] for s in range(4)]
    packed = pack_jpegs(files, image_size=224).pin_memory()
    on_gpu = packed.to("cuda")
    assert on_gpu.device.type == "cuda" and on_gpu.shape == (4, 2, 3, 224, 224)
    on_cpu = decode_packed(packed, "cpu", image_size=224)
    diff = (on_gpu.cpu().int() - on_cpu.int()).abs().float()
    assert diff.mean() <= 1.0 and torch.quantile(diff.flatten()[:1_000_000], 0.99) <= 8


def test_a_loader_with_keep_encoded_serves_packed_batches_that_decode_like_the_cpu_path(
        tmp_path) -> None:
    from pretrain.data.index import open_source
    from pretrain.data.reader import make_loader
    from pretrain.data.synth3d import Synth3DConfig, generate_synth3d

    cfg = Synth3DConfig(classes=3, instances_per_class=2, views=3, size=40, shard_size=3,
                        image_format="jpeg")
    generate_synth3d(cfg, tmp_path, progress=lambda done, total: None)
    shards = open_source(str(tmp_path))
    kwargs = dict(world_size=1, rank=0, batch_size=3, num_workers=1, image_size=32, views=2,
                  seed=4, epoch=0, shuffle_buffer=0, pin_memory=False)
    cpu_loader, _ = make_loader(shards.urls, shards.counts, **kwargs)
    packed_loader, _ = make_loader(shards.urls, shards.counts, keep_encoded=True, **kwargs)
    cpu_batches, packed_batches = list(cpu_loader), list(packed_loader)
    assert len(cpu_batches) == len(packed_batches) == 2
    for cpu, packed in zip(cpu_batches, packed_batches):
        assert isinstance(packed.images, PackedJpegs)  # crossed the worker boundary packed
        assert torch.equal(packed.labels, cpu.labels)
        assert torch.equal(packed.latents["quaternion"], cpu.latents["quaternion"])
        decoded = packed.to("cpu").images
        assert decoded.shape == cpu.images.shape == (3, 2, 3, 32, 32)
        diff = (decoded.int() - cpu.images.int()).abs().float()
        assert diff.mean() <= 0.5 and int(diff.max()) <= 8


def test_decode_speed_benchmark_prints_its_table() -> None:
    import sys

    repo = str(Path(__file__).resolve().parents[1])
    if repo not in sys.path:  # benchmarks/ is a folder of scripts, not an installed package
        sys.path.insert(0, repo)
    from benchmarks import decode_speed

    threads = torch.get_num_threads()
    try:
        table = decode_speed.main(["--images", "2", "--repeats", "1", "--min-seconds", "0.001",
                                   "--stored", "16", "32", "--to", "16"])
    finally:
        torch.set_num_threads(threads)
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| 16 px")
            or line.startswith("| 32 px")]
    paths = [(r[0].strip(), r[1].strip(), r[3].strip()) for r in rows]
    assert paths == [("16 px", "png", "PIL"), ("16 px", "jpeg", "PIL full"),
                     ("16 px", "jpeg", "torchvision batch (gpu_decode path, on CPU)"),
                     ("32 px", "png", "PIL"), ("32 px", "jpeg", "PIL full"),
                     ("32 px", "jpeg", "PIL reduced"),
                     ("32 px", "jpeg", "torchvision batch (gpu_decode path, on CPU)")]
    assert all(float(r[4].replace(",", "")) > 0 and float(r[5].replace(",", "")) > 0 for r in rows)


def test_gpu_decode_config_needs_jpeg_synthetic_data() -> None:
    from pretrain.config import load_config
    from pretrain.config.load import ConfigError

    with pytest.raises(ConfigError, match=r"^data.gpu_decode: needs JPEG images.*"
                                          r"data.synth3d.image_format=jpeg"):
        load_config(None, ["data.gpu_decode=true"])
    assert load_config(None, ["data.gpu_decode=true", "data.synth3d.image_format=jpeg"]
                       ).data.gpu_decode
    assert load_config(None, ["data.gpu_decode=true", "data.path=/shards"]).data.gpu_decode
    assert not load_config(None, []).data.gpu_decode
