"""Training data: kohya buckets, the epoch plan, the scan's reports, the latent cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.dataset.buckets import make_buckets, select_bucket
from helpers.training import captions as C
from helpers.training import data as D


def write_image(path, size, seed=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, fmt)
    return path


@pytest.mark.parametrize("args, count", [((1024, 256, 1024, 64), 25), ((1024, 256, 2048, 64), 41),
                                         ((1024, 512, 2048, 64), 33), ((512, 256, 1024, 64), 17)])
def test_bucket_lists_match_kohya_counts(args, count):
    buckets = make_buckets(*args)
    assert len(buckets) == count
    area = args[0] ** 2
    assert all(w * h <= area and w % args[3] == 0 and h % args[3] == 0 for w, h in buckets)
    assert (1024, 1024) in buckets if args[0] == 1024 else (512, 512) in buckets


def test_select_bucket_covers_bucket_with_least_aspect_error():
    buckets = make_buckets(1024, 256, 2048, 64)
    bucket, resized = select_bucket(1920, 1080, buckets, resolution=1024, step=64)
    assert bucket == (1344, 768)  # aspect 1.75 vs 1.78: the closest in the list
    assert resized == (1365, 768)  # scaled by height, covers the bucket, then cropped
    assert select_bucket(1024, 1024, buckets, resolution=1024, step=64) == ((1024, 1024), (1024, 1024))
    small = select_bucket(500, 500, buckets, resolution=1024, step=64)
    assert small == ((1024, 1024), (1024, 1024))  # upscaled without no_upscale


def test_no_upscale_keeps_small_images_and_shrinks_large_ones():
    bucket, resized = select_bucket(500, 300, None, resolution=1024, step=64)
    assert resized == (500, 300) and bucket == (448, 256)  # never upscaled, floored to the step
    bucket, resized = select_bucket(3000, 2000, None, resolution=1024, step=64)
    assert resized[0] * resized[1] <= 1024 * 1024 * 1.05 and bucket == (1216, 832)
    assert bucket[0] <= resized[0] and bucket[1] <= resized[1]


def test_epoch_plan_one_bucket_batches_repeats_and_determinism():
    buckets = [(64, 64), (64, 64), (32, 96), (64, 64), (32, 96)]
    repeats = [2, 1, 3, 1, 1]
    plan = D.plan_epoch(buckets, repeats, 2, seed=7, epoch=0)
    seen = [s.item for batch in plan for s in batch]
    assert sorted(seen) == sorted(i for i, r in enumerate(repeats) for _ in range(r))
    assert all(len({buckets[s.item] for s in batch}) == 1 for batch in plan)
    assert [s.position for batch in plan for s in batch] == list(range(len(seen)))
    assert plan == D.plan_epoch(buckets, repeats, 2, seed=7, epoch=0)
    assert plan != D.plan_epoch(buckets, repeats, 2, seed=7, epoch=1)
    # two processes: disjoint halves, same number of batches
    r0 = D.plan_epoch(buckets, repeats, 1, seed=7, epoch=0, world_size=2, rank=0)
    r1 = D.plan_epoch(buckets, repeats, 1, seed=7, epoch=0, world_size=2, rank=1)
    assert len(r0) == len(r1) == 4
    assert not {s.position for b in r0 for s in b} & {s.position for b in r1 for s in b}


def test_scan_repeats_captions_and_reports(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "3_cat" / "a.png", (64, 48))
    (root / "3_cat" / "a.txt").write_text("a cat, sitting\n", encoding="utf-8")
    write_image(root / "3_cat" / "b.jpg", (48, 64), 1)  # no caption: the folder's class token is used
    write_image(root / "c.png", (64, 64), 2)
    (root / "c.txt").write_text("   ", encoding="utf-8")  # empty caption: used, reported
    write_image(root / "d.png", (64, 64), 3)
    (root / "d.txt").write_bytes("caf\xe9".encode("latin-1"))  # not UTF-8
    (root / "e.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # corrupt
    write_image(root / "_rejected" / "x.png", (64, 64), 4)  # never training data
    items, report = D.scan_dataset(root, default_repeats=2)
    by_name = {i.path.name: i for i in items}
    assert set(by_name) == {"a.png", "b.jpg", "c.png"}
    assert by_name["a.png"].repeats == 3 and by_name["a.png"].caption == "a cat, sitting"
    assert by_name["b.jpg"].caption == "cat" and by_name["c.png"].repeats == 2
    assert report.samples_per_epoch == 3 + 3 + 2
    assert report.missing_captions == ["3_cat/b.jpg"] and report.empty_captions == ["c.png"]
    reasons = dict(report.skipped)
    assert "not UTF-8" in reasons["d.png"] and "not a readable image" in reasons["e.png"]
    with pytest.raises(D.DataError, match="d.png.*not UTF-8"):
        D.scan_dataset(root, on_bad_data="stop")
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DataError, match="no usable images"):
        D.scan_dataset(tmp_path / "empty")
    with pytest.raises(D.DataError, match="not found"):
        D.scan_dataset(tmp_path / "missing")


def test_dataset_items_pixels_conditioning_and_random_choices(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "wide.png", (200, 64))
    (root / "wide.txt").write_text("x, y, z", encoding="utf-8")
    items, _ = D.scan_dataset(root)
    placement = D.assign_buckets(items, resolution=64, enable_buckets=True, min_side=32, max_side=128, step=32,
                                 no_upscale=False)
    assert placement == [((96, 32), (100, 32))]  # aspect 3.1 -> the 3:1 bucket, scaled by height
    captions = C.CaptionPipeline([C.CaptionSource(i.caption) for i in items], C.CaptionConfig(shuffle_caption=True))
    ds = D.TrainingImages(items, placement, seed=1, random_crop=True, flip=True, captions=captions)
    samples = [ds[D.Sample(0, p, 0)] for p in range(12)]
    bucket = placement[0][0]
    assert all(s["pixels"].shape == (3, bucket[1], bucket[0]) for s in samples)
    assert all(-1.0 <= s["pixels"].min() and s["pixels"].max() <= 1.0 for s in samples)
    assert all(s["original_size"] == (64, 200) and s["target_size"] == (bucket[1], bucket[0]) for s in samples)
    assert len({s["crop_top_left"] for s in samples}) > 1  # random crops differ between positions
    again = ds[D.Sample(0, 5, 0)]
    assert torch.equal(again["pixels"], samples[5]["pixels"]) and again["caption"] == samples[5]["caption"]
    batch = D.collate_samples(samples[:2])
    assert batch["pixels"].shape[0] == 2 and batch["original_sizes"].tolist() == [[64, 200], [64, 200]]


def test_latent_cache_keyed_by_content_and_reused(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "a.png", (64, 64), 0)
    write_image(root / "b.png", (64, 64), 1)
    calls = []

    def encode(pixels, seed):
        calls.append(seed)
        g = torch.Generator().manual_seed(seed)
        lat = pixels[:, :1, ::8, ::8]
        return lat + torch.randn(lat.shape, generator=g)

    cfg = D.DataConfig(dataset=str(root), resolution=64, min_bucket_side=32, max_bucket_side=128, bucket_step=32,
                       cache_latents="disk", flip=True, num_workers=0)
    data = D.build_training_data(cfg, root, batch_size=1, seed=0, cache_folder=tmp_path / "cache", encode=encode,
                                 show_progress=False)
    assert len(calls) == 4  # 2 images x (plain, flipped)
    first = [data.dataset[s]["latents"] for b in data.batches(0) for s in b]
    D.build_training_data(cfg, root, batch_size=1, seed=0, cache_folder=tmp_path / "cache", encode=encode,
                          show_progress=False)
    assert len(calls) == 4  # nothing re-encoded: same content, same keys
    write_image(root / "a.png", (64, 64), 9)  # changed image -> new key -> encoded again
    again = D.build_training_data(cfg, root, batch_size=1, seed=0, cache_folder=tmp_path / "cache", encode=encode,
                                  show_progress=False)
    assert len(calls) == 6
    cfg.resolution, cfg.bucket_step = 96, 32  # another resolution -> other buckets -> other keys
    D.build_training_data(cfg, root, batch_size=1, seed=0, cache_folder=tmp_path / "cache", encode=encode,
                          show_progress=False)
    assert len(calls) == 10
    assert first[0].shape == (1, 8, 8) and len(again.batches(0)) == 2
