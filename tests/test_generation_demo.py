"""The generation step of ``python -m helpers demo``: the demo run sampled while it trained, and the step draws
a grid of prompts × epochs × LoRA strengths plus the guide's review from it."""

from __future__ import annotations

import shutil

from PIL import Image

from helpers.generation.parameters import parse_parameters, read_png_parameters


def test_demo_step_draws_epochs_by_strengths(demo_workspace, tmp_path):
    from helpers.generation.demo import run_demo
    from helpers.workspace import Workspace

    root = shutil.copytree(demo_workspace, tmp_path / "ws")  # the shared demo workspace stays as it was
    ws = Workspace.open(root)
    samples = sorted(ws.run("demo").samples.glob("*.png"))
    assert samples and samples[0].name == "step-000000_epoch-000_prompt-01.png"  # the template samples the run
    out = run_demo(ws)
    pages = sorted((ws.exports / "demo-grid").glob("grid-page*.png"))
    assert len(pages) == 2  # a page per prompt
    with Image.open(pages[0]) as page:
        assert page.width > 2 * 128 and page.height > 3 * 128  # two epochs across, three strengths down
    cells = sorted((ws.exports / "demo-grid" / "cells").glob("*.png"))
    assert len(cells) == 2 * 3 * 2
    strengths = {parse_parameters(read_png_parameters(c)).loras[0][1] for c in cells}
    assert strengths == {0.0, 0.5, 1.0}
    assert (ws.exports / "demo-review" / "generic" / "grid.png").exists()
    assert "demo-e0001.safetensors" in out["LoRA per epoch"]
