"""Benchmark the upscale path (``helpers.models.upscalers.upscale_image``: tiling, device transfer, assembly).
Prints JSON: input megapixels per second for the tiny SRVGGNetCompact and tiny RRDBNet on the CPU, and, when
CUDA is present, for a real-size 4x RRDBNet (23 blocks, 64 features: RealESRGAN_x4plus / 4x-UltraSharp's
shape) with random weights, in fp16 with the automatic tile.

    OMP_NUM_THREADS=1 .venv/bin/python bench/upscale.py [--size 256] [--repeats 2]
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing


def rate(up, image: Image.Image, repeats: int, tile: int = 0) -> dict[str, float]:
    from helpers.models.upscalers import upscale_image

    upscale_image(up, image.crop((0, 0, 32, 32)), tile)  # warm-up (cuDNN autotune, allocator)
    if up.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        upscale_image(up, image, tile)
    if up.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / repeats
    return {"input_megapixels_per_s": round(image.width * image.height / 1e6 / seconds, 4),
            "seconds_per_image": round(seconds, 3), "input": f"{image.width}x{image.height}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="side of the square test image")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from helpers.models.upscalers import RRDBNet, Upscaler, load_upscaler, save_tiny_upscaler

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8))
    out: dict[str, object] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("srvgg", "rrdb-new"):
            up = load_upscaler(str(save_tiny_upscaler(Path(tmp) / f"{arch}.pth", arch)), tmp, "cpu")
            out[f"cpu tiny {arch} x4"] = rate(up, image, args.repeats)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        module = RRDBNet().eval().to(device, torch.float16)  # the real shape; weights random
        up = Upscaler(module, 4, "RRDBNet x4 (nf 64, nb 23, gc 32)", device, torch.float16)
        big = Image.fromarray(rng.integers(0, 255, (768, 768, 3), dtype=np.uint8))
        out["cuda real-size RRDBNet x4 fp16"] = {**rate(up, big, args.repeats), "gpu": torch.cuda.get_device_name(),
                                                 "notes": up.notes,
                                                 "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    else:
        out["cuda real-size RRDBNet x4 fp16"] = "no CUDA device here"
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
