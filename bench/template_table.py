"""The README's template table: per shipped template, model, target GPU, VRAM estimate and hours for 1,000
dataset images (at the template's epochs and repeats), from the pre-flight estimate.

    python bench/template_table.py            # markdown table
    python bench/template_table.py --json     # the same figures as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.config import build_config  # noqa: E402
from helpers.templates import list_templates, template_description  # noqa: E402
from helpers.training.config import TrainConfig  # noqa: E402
from helpers.training.preflight import adapter_plan, estimate_run  # noqa: E402

GPUS = [("RTX 4090", "4090", 24.0), ("RTX A6000", "A6000", 48.0), ("A100 80GB", "A100", 80.0)]
DATASET_IMAGES = 1000


def row(name: str) -> dict:
    cfg = build_config(TrainConfig, name)
    arch = cfg.model.arch if cfg.model.arch != "auto" else "sdxl"
    o, d, p = cfg.optimizer, cfg.data, cfg.precision
    lr = {"te1": o.learning_rate_te1, "te2": o.learning_rate_te2}
    te1 = o.train_text_encoder and (lr["te1"] if lr["te1"] is not None else o.learning_rate) > 0
    te2 = arch == "sdxl" and o.train_text_encoder and (lr["te2"] if lr["te2"] is not None else o.learning_rate) > 0
    seen = DATASET_IMAGES * d.repeats * cfg.epochs
    out = {"template": name, "model": arch, "epochs": cfg.epochs, "repeats": d.repeats, "images_seen": seen}
    for label, gpu, vram in GPUS:
        est = estimate_run(arch=arch, resolution=d.resolution, batch_size=cfg.batch_size, total_images=seen,
                           optimizer=o.optimizer, train_te1=te1, train_te2=te2, mixed_precision=p.mixed_precision,
                           full_half=p.full_half_precision, gradient_checkpointing=p.gradient_checkpointing,
                           vae_fp32=p.vae_precision == "fp32", cached_latents=d.cache_latents != "off",
                           gpu_name=gpu, vram_gb=vram * 0.93, ema_on_gpu=cfg.ema.enabled and cfg.ema.device != "cpu",
                           adapter=adapter_plan(cfg, arch))
        out["vram_gb"] = round(est.vram_gb, 1)
        out.setdefault("hours", {})[label] = round(est.hours, 1) if est.fits else None
    out["gpu"] = next((label for label, *_ in GPUS if out["hours"][label] is not None), "over 80 GB")
    out["about"] = template_description(name)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [row(n) for n in list_templates() if n != "demo_tiny"]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| template | model | smallest GPU it fits | VRAM (est.) | hours for 1,000 images (A6000 / A100) |")
    print("|---|---|---|---|---|")
    for r in rows:
        hours = " / ".join("-" if r["hours"][g] is None else f"{r['hours'][g]:.1f}" for g in ("RTX A6000", "A100 80GB"))
        print(f"| `{r['template']}` | {r['model']} | {r['gpu']} | {r['vram_gb']:.0f} GB | {hours} "
              f"({r['epochs']} epochs x {r['repeats']} repeats) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
