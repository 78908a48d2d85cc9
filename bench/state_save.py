"""How long a training state takes to write, and the state cadence that follows from it. Prints JSON.

Writes a state of ``--gb`` GB (random fp32 "weights" + two uint8 "moments", the AdamW8bit layout) with the
trainer's own ``save_training_state`` (fsync included, so the figure is the disk's, not the page cache's), twice,
into ``--folder`` (default: a temp folder on the disk it is run from; run it on the workspace disk), and scales
the time to the real states of the GPU templates: SDXL full fine-tune, U-Net + both text encoders trained (3.39 B
parameters), AdamW8bit: 13.5 GB weights + 6.9 GB moments = 20.5 GB (A6000 template); + 13.5 GB fp32 EMA = 34 GB
(A100 template) — the sizes come from the pre-flight's ``state_gb`` with each template's settings.

The cadence: Young's first-order optimum interval between checkpoints, T = sqrt(2 · C · M) for save time C and
mean time between interruptions M (J. W. Young, "A first order approximation to the optimum checkpoint interval",
CACM 17(9), 1974), printed for a few M, with the overhead C / T and the work a pause costs on average (T / 2).

    python bench/state_save.py --gb 2
    python bench/state_save.py --gb 4 --folder /workspace/tunebook/cache
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TEMPLATES = ("sdxl_finetune_a6000", "sdxl_finetune_a100")
INTERRUPTION_HOURS = (2, 6, 24)  # mean time between spot pauses: busy market, typical, rare


def young_interval_s(save_s: float, mtbf_s: float) -> float:
    """T = sqrt(2 C M) (Young 1974)."""
    return math.sqrt(2 * save_s * mtbf_s)


def measure(folder: Path, gb: float) -> dict:
    from helpers.training import checkpoints as ckpt

    params = int(gb * 1e9 / 6)  # 4 bytes of weights + 2 × 1 byte of 8-bit moments per parameter
    weights = {"w": torch.randn(params)}
    optimizer = {"state": {0: {"state1": torch.randint(0, 255, (params,), dtype=torch.uint8),
                               "state2": torch.randint(0, 255, (params,), dtype=torch.uint8)}}}
    trainer = {"step": 1, "config": {}, "scheduler": {}, "scaler": None, "rng": ckpt.capture_rng_states()}
    times = []
    for step in (1, 2):  # the second also retires the first, as a run's steady state does
        t0 = time.perf_counter()
        path = ckpt.save_training_state(folder, step, weights=weights, optimizer_state=optimizer, trainer=trainer)
        times.append(time.perf_counter() - t0)
    size = ckpt.folder_bytes(path)
    return {"state_gb": round(size / 1e9, 3), "save_s": [round(t, 2) for t in times],
            "gb_per_s": round(size / 1e9 / min(times), 3)}


def template_state(name: str) -> tuple[float, float]:
    """A GPU template's state size with the real SDXL (the pre-flight's formula) and its state cadence."""
    from helpers.config import build_config
    from helpers.training import preflight
    from helpers.training.config import TrainConfig

    cfg = build_config(TrainConfig, name)
    te1, te2 = preflight.trained_text_encoders(cfg, "sdxl")
    p = preflight.PARAMS["sdxl"]
    trained = p["unet"] + (p["te1"] if te1 else 0) + (p["te2"] if te2 else 0)
    gb = preflight.state_gb(trained, cfg.optimizer.optimizer, cfg.precision.full_half_precision, cfg.ema.enabled)
    return round(gb, 1), cfg.saving.state_every_n_minutes


def cadence(gb_per_s: float) -> dict:
    out = {}
    for name in TEMPLATES:
        gb, minutes = template_state(name)
        save_s = gb / gb_per_s
        rows = {}
        for hours in INTERRUPTION_HOURS:
            interval = young_interval_s(save_s, hours * 3600)
            rows[f"mtbf_{hours}h"] = {"interval_min": round(interval / 60, 1),
                                      "overhead_pct": round(100 * save_s / interval, 2)}
        rows["at_15_min"] = {"overhead_pct": round(100 * save_s / 900, 2), "mean_loss_min": 7.5}
        if minutes:
            rows["at_template_cadence"] = {"every_min": minutes, "overhead_pct": round(100 * save_s / minutes / 60, 2),
                                           "mean_loss_min": minutes / 2}
        out[name] = {"state_gb": gb, "save_s": round(save_s, 1), **rows}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0, help="size of the state written (GB)")
    parser.add_argument("--folder", help="where to write it (default: a temp folder here)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = Path(args.folder) if args.folder else Path.cwd()
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-state-", dir=base))
    try:
        result = measure(scratch / "state", args.gb)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["disk"] = str(base)
    result["templates"] = cadence(result["gb_per_s"])
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
