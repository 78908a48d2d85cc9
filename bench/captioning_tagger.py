"""Benchmark the WD-tagger pipeline without the real model: decode + preprocessing at the real 448 input size,
then the whole ``tag_dataset`` loop (threaded decoding, onnxruntime, sidecars, .txt render) with a tiny
448-input tagger, so the figures are the overhead tunebook adds around the network. Prints JSON.

    OMP_NUM_THREADS=1 .venv/bin/python bench/captioning_tagger.py [--images 96] [--size 1536] [--workers 0]

On a GPU box the network itself adds its own time: EVA02-L is ~0.3 TFLOP per image.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing


def make_images(folder: Path, count: int, size: int) -> None:
    """Noisy gradients at photo-like sizes (JPEG decode cost like a photo's); every fourth a PNG with alpha."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = size, int(size * (0.66 + 0.34 * (i % 3) / 2))
        grad = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
        pixels = np.clip(grad + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        if i % 4 == 3:
            alpha = np.full((h, w, 1), 200, np.uint8)
            Image.fromarray(np.concatenate([pixels, alpha], axis=2), "RGBA").save(folder / f"img{i:04d}.png")
        else:
            Image.fromarray(pixels).save(folder / f"img{i:04d}.jpg", quality=92)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=1536, help="long side of the generated images")
    parser.add_argument("--workers", type=int, default=0, help="decode threads (0: one per core, up to 8)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from helpers.captioning.images import default_workers, open_rgb
    from helpers.captioning.sidecar import RenderConfig
    from helpers.captioning.tiny_tagger import build_tiny_tagger
    from helpers.captioning.wd_tagger import TaggerConfig, load_tagger, prepare_image, tag_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_images(root / "ds", args.images, args.size)
        made = time.perf_counter() - t0
        paths = sorted((root / "ds").iterdir())
        t0 = time.perf_counter()
        for p in paths:
            prepare_image(open_rgb(p), 448)
        serial = time.perf_counter() - t0
        tagger = load_tagger(build_tiny_tagger(root / "tagger", size=448), device="cpu")
        cfg = TaggerConfig(model=str(tagger.folder), batch_size=args.batch_size, workers=args.workers)
        t0 = time.perf_counter()
        report = tag_dataset(root / "ds", cfg, root, render=RenderConfig(), progress=False, tagger=tagger)
        whole = time.perf_counter() - t0
    print(json.dumps({
        "images": args.images, "long_side": args.size, "input_size": 448, "batch_size": args.batch_size,
        "decode_threads": args.workers or default_workers(),
        "seconds_make_images": round(made, 2),
        "decode_preprocess_serial_images_per_s": round(args.images / serial, 1),
        "tag_dataset_seconds": round(whole, 2),
        "tag_dataset_images_per_s": round(args.images / whole, 1),
        "tagging_loop_images_per_s": round(report.images_per_second, 1),
        "tagged": report.tagged, "problems": len(report.problems),
    }, indent=1))


if __name__ == "__main__":
    main()
