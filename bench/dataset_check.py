"""Benchmark the dataset stage on a realistic folder: N photo-sized JPEG/PNG images (generated), then
check_dataset (full decode + pHash), duplicate grouping, the report, and a local zip "download" + safe unpack.
Prints JSON: seconds and images per second per phase.

    OMP_NUM_THREADS=1 .venv/bin/python bench/dataset_check.py [--images 150] [--size 1536] [--workers 2]

150 images is the guide's upper count per concept; 1536 px is a typical upscaled/downloaded size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing


def make_images(folder: Path, count: int, size: int) -> int:
    """Noisy gradients (JPEG decode cost like a photo's), every third a PNG; returns total bytes."""
    rng = np.random.default_rng(0)
    total = 0
    for i in range(count):
        w, h = (size, int(size * 0.75)) if i % 2 else (int(size * 0.75), size)
        base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
        pixels = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"a picture of thing {i}_{i:02d}{'.png' if i % 3 == 0 else '.jpg'}"
        Image.fromarray(pixels).save(path, quality=92) if path.suffix == ".jpg" else Image.fromarray(pixels).save(path)
        total += path.stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--size", type=int, default=1536)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from helpers.dataset.check import check_dataset, find_duplicates
    from helpers.dataset.report import dataset_report
    from helpers.download.archives import extract_archive

    out: dict[str, object] = {"images": args.images, "size": args.size, "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        out["dataset_mb"] = round(make_images(src, args.images, args.size) / 1e6, 1)

        archive = Path(tmp) / "set.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
            for p in sorted(src.iterdir()):
                zf.write(p, f"set/{p.name}")
        t0 = time.perf_counter()
        extract_archive(archive, Path(tmp) / "unpacked", progress=False)
        out["unpack_s"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        check = check_dataset(Path(tmp) / "unpacked", workers=args.workers, progress=False)
        dt = time.perf_counter() - t0
        out["check_s"], out["check_images_per_s"] = round(dt, 2), round(args.images / dt, 1)

        t0 = time.perf_counter()
        find_duplicates(check.images)
        out["duplicates_s"] = round(time.perf_counter() - t0, 3)

        t0 = time.perf_counter()
        dataset_report(check, resolution=1024)
        out["report_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
