"""The demo's training step: the tiny SDXL fine-tuned for a few CPU steps with the ``demo_tiny`` template."""

from __future__ import annotations

import shutil

from helpers.config import build_config, save_config
from helpers.training.config import TrainConfig
from helpers.training.loop import train
from helpers.training.progress import step_losses


def run_demo(ws) -> dict[str, str]:
    """Train the tiny demo SDXL (``models/tiny-sdxl``) on ``datasets/demo`` into ``runs/demo`` (a few CPU steps)."""
    run = ws.run("demo")
    shutil.rmtree(run.root, ignore_errors=True)  # the demo run is regenerated, never resumed
    cfg = build_config(TrainConfig, template="demo_tiny")
    save_config(cfg, run.config)
    result = train(cfg, run.root, models_dir=ws.models, cache_dir=ws.cache, show_progress=False)
    losses = step_losses(run.log)
    return {"training run": str(run.root), "fine-tuned model (single file)": result["final"],
            "training log": f"{run.log} ({len(losses)} steps, loss {losses[min(losses)]:.3f} -> "
                            f"{losses[max(losses)]:.3f})"}
