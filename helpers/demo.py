"""``python -m helpers demo``: the whole pipeline end to end on a tiny offline model and a synthetic dataset.

Each stage module offers ``run_demo(ws) -> {what: where}``; this module runs them in pipeline order on a demo
workspace (by default a sibling of the real one, so the user's projects are never touched) and prints where
every output went. It is also what the notebook tests run first, so every notebook has something to read.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from helpers.workspace import Workspace, default_root

# (label, module, function) in pipeline order; each function takes the Workspace and returns {what: where}.
STAGES: list[tuple[str, str, str]] = [
    ("base model", "helpers.demo", "prepare_base_model"),
    ("models", "helpers.models.__main__", "run_demo"),
    ("dataset in", "helpers.dataset", "run_demo"),
    ("captioning", "helpers.captioning", "run_demo"),
    ("training", "helpers.training", "run_demo"),
    ("lora", "helpers.lora.demo", "run_demo"),
]


def default_demo_root() -> Path:
    root = default_root()
    return root.with_name(root.name + "-demo")


def prepare_base_model(ws: Workspace) -> dict[str, str]:
    """The tiny SDXL base model as a diffusers folder and as a single file (original layout)."""
    from helpers.models import load_model, save_single_file
    from helpers.models.tiny import save_tiny_model

    folder = ws.model("tiny-sdxl")
    if not (folder / "model_index.json").exists():
        save_tiny_model(folder, "sdxl")
    single = ws.models / "tiny-sdxl.safetensors"
    if not single.exists():
        bundle = load_model(str(folder))
        save_single_file(bundle.unet, bundle.vae, bundle.text_encoders, single, arch=bundle.arch,
                         precision="fp32", prediction=bundle.prediction)
    return {"tiny SDXL base (diffusers folder)": str(folder), "tiny SDXL base (single file)": str(single)}


def run_demo(root: str | Path | None = None, stages: list[str] | None = None, echo=print) -> dict[str, str]:
    """Run the demo stages (all, or those named) on the demo workspace; returns every output's location."""
    ws = Workspace.open(root or default_demo_root())
    echo(f"demo workspace: {ws.root}")
    outputs: dict[str, str] = {}
    t_all = time.perf_counter()
    for label, module, func in STAGES:
        if stages and label not in stages:
            continue
        t0 = time.perf_counter()
        result = getattr(importlib.import_module(module), func)(ws)
        echo(f"[{label}] done in {time.perf_counter() - t0:.1f} s")
        for what, where in result.items():
            echo(f"    {what}: {where}")
        outputs.update(result)
    echo(f"demo finished in {time.perf_counter() - t_all:.1f} s")
    return outputs
