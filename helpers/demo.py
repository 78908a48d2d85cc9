"""``python -m helpers demo``: the whole pipeline end to end on a tiny offline model and a synthetic dataset.

Each stage's ``demo`` module offers its step(s) (``run_demo(ws) -> {what: where}``); this module runs them in pipeline order on a demo
workspace (by default a sibling of the real one, so the user's projects are never touched) and prints where
every output went. It is also what the notebook tests run first, so every notebook has something to read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from helpers.captioning import demo as captioning_demo
from helpers.dataset import demo as dataset_demo
from helpers.download import demo as download_demo
from helpers.evaluation import demo as evaluation_demo
from helpers.generation import demo as generation_demo
from helpers.lora import demo as lora_demo
from helpers.models import demo as models_demo
from helpers.training import demo as training_demo
from helpers.workspace import Workspace, default_root

# (label, step) in pipeline order; each step takes the Workspace and returns {what: where}.
STAGES: list[tuple[str, Callable]] = [
    ("base model", models_demo.prepare_base_model),
    ("models", models_demo.run_demo),
    ("dataset in", download_demo.run_demo),
    ("dataset advice", dataset_demo.advice_step),
    ("captions from filenames", captioning_demo.captions_from_filenames_step),
    ("captioning", captioning_demo.run_demo),
    ("trigger words", captioning_demo.trigger_check_step),
    ("training", training_demo.run_demo),
    ("lora", lora_demo.run_demo),
    ("generation", generation_demo.run_demo),
    ("evaluation", evaluation_demo.run_demo),  # ends with the path of the demo run's report
]


def default_demo_root() -> Path:
    root = default_root()
    return root.with_name(root.name + "-demo")


def run_demo(root: str | Path | None = None, stages: list[str] | None = None, echo=print) -> dict[str, str]:
    """Run the demo stages (all, or those named) on the demo workspace; returns every output's location."""
    ws = Workspace.open(root or default_demo_root())
    echo(f"demo workspace: {ws.root}")
    outputs: dict[str, str] = {}
    t_all = time.perf_counter()
    for label, step in STAGES:
        if stages and label not in stages:
            continue
        t0 = time.perf_counter()
        result = step(ws)
        echo(f"[{label}] done in {time.perf_counter() - t0:.1f} s")
        for what, where in result.items():
            echo(f"    {what}: {where}")
        outputs.update(result)
    echo(f"demo finished in {time.perf_counter() - t_all:.1f} s")
    return outputs
