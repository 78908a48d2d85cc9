"""Benchmark model I/O on a real-size SDXL (random weights, built offline): save_single_file, header-only
open_checkpoint, and load_component for every part. Prints JSON: seconds and peak resident memory per phase.

    OMP_NUM_THREADS=1 .venv/bin/python bench/models_io.py [--arch sdxl|sd15] [--precision fp16] [--dir /tmp]

Needs about 2x the fp16 model size in RAM (SDXL: ~7 GB model + the file in page cache) and as much free disk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing


class PeakRSS:
    """Peak resident set size of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        self.peak, self._stop = self.rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()


def build_random(arch: str, dtype: torch.dtype):
    """Real-size components from the shipped configs: meta construction, then memory filled with zeros."""
    from helpers.models.loader import _empty_model, _shipped_config

    parts = ["unet", "vae", "te1"] + (["te2"] if arch == "sdxl" else [])
    out = {}
    for c in parts:
        with torch.device("meta"):
            model = _empty_model(c, _shipped_config(arch, c))
        model = model.to_empty(device="cpu").to(dtype)
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        out[c] = model
    return out


def measure_load(path: Path, dtype: torch.dtype) -> dict[str, object]:
    """Header-only open, then every component built and filled (what load_model does minus tokenizers)."""
    from helpers.models import load_component, open_checkpoint

    out: dict[str, object] = {}
    with PeakRSS() as m:
        ck = open_checkpoint(path)
        counts = {c: len(ck.keys(c)) for c in ck.components()}
    out["open_checkpoint_keys"] = {"s": round(m.seconds, 3), "tensors": counts}
    base = PeakRSS.rss()
    with PeakRSS() as m:
        models = {c: load_component(ck, c, dtype=dtype) for c in ck.components()}
    out["load_components"] = {"s": round(m.seconds, 1), "peak_rss_gib": round(m.peak / 2**30, 2),
                              "rss_before_gib": round(base / 2**30, 2),
                              "params": sum(p.numel() for mod in models.values() for p in mod.parameters())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["sdxl", "sd15"], default="sdxl")
    parser.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default="fp16")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--load", default=None, help=argparse.SUPPRESS)  # internal: the load phase only
    args = parser.parse_args()
    torch.set_num_threads(1)
    from helpers.models import save_single_file
    from helpers.models.export import PRECISIONS

    dtype = PRECISIONS[args.precision]
    if args.load:
        print(json.dumps(measure_load(Path(args.load), dtype)))
        return
    path = Path(args.dir) / f"bench-{args.arch}-{os.getpid()}.safetensors"
    result: dict[str, object] = {"arch": args.arch, "precision": args.precision}
    try:
        with PeakRSS() as m:
            parts = build_random(args.arch, dtype)
        result["build"] = {"s": round(m.seconds, 1), "rss_gib": round(m.peak / 2**30, 2)}
        with PeakRSS() as m:
            save_single_file(parts["unet"], parts["vae"], [parts[c] for c in ("te1", "te2") if c in parts], path,
                             arch=args.arch, precision=args.precision)
        result["save_single_file"] = {"s": round(m.seconds, 1), "peak_rss_gib": round(m.peak / 2**30, 2),
                                      "file_gib": round(path.stat().st_size / 2**30, 2),
                                      "mb_per_s": round(path.stat().st_size / 1e6 / m.seconds)}
        del parts
        # load in a fresh process: the allocator of this one still holds the freed model's pages
        load = subprocess.run([sys.executable, __file__, "--load", str(path), "--precision", args.precision],
                              capture_output=True, text=True, check=True)
        result.update(json.loads(load.stdout))
    finally:
        path.unlink(missing_ok=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
