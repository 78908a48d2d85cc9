"""Loader throughput of the training data path: decode -> bucket resize -> crop -> tensor. Prints JSON.

Measures ``helpers.training.data`` as the trainer uses it, on synthetic photo-like JPEGs (default 48 images of
1.2-2.4 MP, SDXL buckets at 1024²): images/s in one process (= per worker), through a DataLoader with N
workers, and reading cached latents from the disk cache. An A100 consumes ~5 images/s in a full SDXL
fine-tune at 1024², so per-worker images/s × workers should stay well above that.

    python bench/data_loader.py [--images 48] [--workers 2] [--resolution 1024] [--random-crop]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = [(1536, 1024), (1024, 1536), (1344, 1344), (1920, 1080), (1080, 1920), (1600, 1200)]


def write_images(folder: Path, count: int, seed: int = 0) -> Path:
    """Photo-like JPEGs (smooth colour fields + grain, quality 92) of varied sizes and aspect ratios."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        low = Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        arr = np.asarray(low).astype(np.int16) + rng.integers(-12, 12, (h, w, 3), dtype=np.int16)
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"img{i:03d}.jpg", quality=92)
        (folder / f"img{i:03d}.txt").write_text(f"photo, sample {i}", encoding="utf-8")
    return folder


def time_items(dataset, samples) -> float:
    t0 = time.perf_counter()
    for sample in samples:
        dataset[sample]
    return len(samples) / (time.perf_counter() - t0)


def time_loader(data, epoch: int) -> float:
    batches = data.batches(epoch)
    n = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    for _ in data.loader(batches):
        pass
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--random-crop", action="store_true")
    parser.add_argument("--folder", help="use these images instead of synthetic ones")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from helpers.training.data import DataConfig, build_training_data

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        root = Path(args.folder) if args.folder else write_images(Path(tmp) / "images", args.images)
        cfg = DataConfig(dataset=str(root), resolution=args.resolution, random_crop=args.random_crop,
                         num_workers=0)
        t0 = time.perf_counter()
        data = build_training_data(cfg, root, batch_size=1, seed=0)
        scan_s = time.perf_counter() - t0
        samples = [s for b in data.batches(0) for s in b]
        per_worker = time_items(data.dataset, samples)
        data.num_workers = args.workers
        with_workers = time_loader(data, 1)

        def fake_encode(pixels, seed):  # the loader is measured, not the VAE
            return torch.randn(1, 4, pixels.shape[2] // 8, pixels.shape[3] // 8,
                               generator=torch.Generator().manual_seed(seed))

        cached_cfg = DataConfig(dataset=str(root), resolution=args.resolution, cache_latents="disk", num_workers=0)
        t0 = time.perf_counter()
        cached = build_training_data(cached_cfg, root, batch_size=1, seed=0, cache_folder=Path(tmp) / "latents",
                                     encode=fake_encode, show_progress=False)
        fill_s = time.perf_counter() - t0
        cached_per_worker = time_items(cached.dataset, [s for b in cached.batches(0) for s in b])
        cached.num_workers = args.workers
        cached_workers = time_loader(cached, 1)
    print(json.dumps({
        "images": len(data.dataset), "resolution": args.resolution, "random_crop": args.random_crop,
        "buckets": data.report.buckets, "scan_s": round(scan_s, 2),
        "uncached_images_per_s_one_worker": round(per_worker, 2),
        f"uncached_images_per_s_{args.workers}_workers": round(with_workers, 2),
        "cache_fill_s_without_vae": round(fill_s, 2),
        "cached_images_per_s_one_worker": round(cached_per_worker, 1),
        f"cached_images_per_s_{args.workers}_workers": round(cached_workers, 1),
        "a100_sdxl_full_ft_consumes_images_per_s": 5.0,
        "cpu": f"{torch.get_num_threads()} torch thread(s) per worker"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
