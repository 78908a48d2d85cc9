"""Augmentation: no-flip tags, seeded colour jitter, persistent loader workers (each fails if ignored)."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from helpers.training import data as D
from helpers.training.augment import ColorJitter, apply_color_jitter, draw_color_jitter
from helpers.training.captions import CaptionConfig


def make_images(root, captions: dict[str, str]):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, caption in captions.items():
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(caption, encoding="utf-8")
    return root


def build(root, **data) -> D.TrainingData:
    cfg = D.DataConfig(dataset=str(root), resolution=64, min_bucket_side=32, max_bucket_side=128, bucket_step=32,
                       **{"num_workers": 0, **data})
    return D.build_training_data(cfg, root, batch_size=1, seed=5, show_progress=False,
                                 captions=CaptionConfig(shuffle_caption=True))


def test_no_flip_tags_keep_those_images_unflipped(tmp_path):
    root = make_images(tmp_path / "ds", {"sign": "1girl, text on shirt ||| smile", "plain": "1girl, smile"})
    data = build(root, flip=True, no_flip_tags=["text on*", "speech bubble"])
    names = [i.path.stem for i in data.dataset.items]
    flips = {name: [data.dataset.choices(D.Sample(0, p, i))[2] for p in range(200)] for i, name in enumerate(names)}
    assert not any(flips["sign"]) and 70 < sum(flips["plain"]) < 130
    unflipped = D.load_pixels(data.dataset.items[names.index("sign")].path, (64, 64), (64, 64), 0, 0, False)
    assert all(torch.equal(data.dataset[D.Sample(0, p, names.index("sign"))]["pixels"], unflipped) for p in range(8))
    # without the tag list the same image is flipped half the time
    free = build(root, flip=True)
    assert sum(free.dataset.choices(D.Sample(0, p, names.index("sign")))[2] for p in range(200)) > 70
    # the latent cache encodes no mirrored copy of a no-flip image
    encoded = []
    cfg = D.DataConfig(dataset=str(root), resolution=64, min_bucket_side=32, max_bucket_side=128, bucket_step=32,
                       num_workers=0, flip=True, no_flip_tags=["text on*"], cache_latents="memory")
    D.build_training_data(cfg, root, batch_size=1, seed=5, show_progress=False,
                          encode=lambda px, seed: encoded.append(px) or torch.zeros(1, 4, 8, 8))
    assert len(encoded) == 3  # plain: both ways; sign: unflipped only


def test_color_jitter_is_seeded_by_the_sample_and_stays_in_range(tmp_path):
    root = make_images(tmp_path / "ds", {"a": "x"})
    plain, jittered = build(root), build(root, color_jitter=0.2, hue_jitter=0.05)
    base = plain.dataset[D.Sample(0, 0, 0)]["pixels"]
    samples = [jittered.dataset[D.Sample(0, p, 0)]["pixels"] for p in range(6)]
    assert all(not torch.allclose(s, base, atol=0.02) for s in samples)  # every sample changed
    assert len({round(float(s.mean()), 4) for s in samples}) == 6  # ... each differently
    assert torch.equal(jittered.dataset[D.Sample(0, 3, 0)]["pixels"], samples[3])  # same sample, same jitter
    assert all(-1.0 <= s.min() and s.max() <= 1.0 for s in samples)
    rng = random.Random(1)
    draws = [draw_color_jitter(rng, 0.2, 0.05) for _ in range(500)]
    assert all(0.8 <= j.brightness <= 1.2 and 0.8 <= j.saturation <= 1.2 and abs(j.hue_shift) <= 13 for j in draws)
    assert draw_color_jitter(rng, 0.0, 0.0) is None


def test_hue_shift_rotates_colours_and_brightness_scales():
    red = Image.new("RGB", (4, 4), (200, 30, 30))
    shifted = np.asarray(apply_color_jitter(red, ColorJitter(hue_shift=85)))[0, 0]  # a third of the circle
    assert shifted[1] > 150 and shifted[0] < 60  # red -> green
    darker = np.asarray(apply_color_jitter(red, ColorJitter(brightness=0.5)))[0, 0]
    assert abs(int(darker[0]) - 100) <= 1


def test_persistent_workers_keep_their_processes_and_load_the_same_batches(tmp_path):
    root = make_images(tmp_path / "ds", {f"i{k}": f"t{k}, a, b" for k in range(4)})
    persistent = build(root, num_workers=1, persistent_workers=True)
    fresh = build(root, num_workers=1)
    pids, loaded = [], []
    for epoch in range(2):
        loader = persistent.loader(persistent.batches(epoch))
        loaded.append([b["captions"] for b in loader])
        pids.append([w.pid for w in loader._iterator._workers])
        expected = [b["captions"] for b in fresh.loader(fresh.batches(epoch))]
        assert loaded[-1] == expected  # same samples, same captions, whichever process loads them
    assert pids[0] == pids[1] and loaded[0] != loaded[1]
    assert persistent.loader(persistent.batches(1)[2:]) is loader  # a resumed epoch reuses it too
    assert len([b for b in loader]) == len(persistent.batches(1)) - 2
    assert fresh.loader(fresh.batches(0)) is not fresh.loader(fresh.batches(0))
