"""The guide's evaluation in one call: training captions replayed 1:1, generic prompts in batches of 4.

Owns ``guide_review`` and ``GENERIC_PROMPTS``. From the fine-tune-then-extract guide (``seeds/``, "Evaluating
your model"): prompt some training captions 1 to 1 (images that copy the training image's pose, style or
layout mean overtraining), and prompt generic things (people, animals, objects, landscapes, buildings) in
batches of 4 to see how much the model still does beyond the dataset. Each becomes an XY grid (``grid.py``)
whose columns are the model variants: LoRA strengths (0 = the base model) or checkpoints. The caption grid's
first column is the training image itself, and each caption is drawn at its training image's aspect ratio.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from helpers.generation.grid import Axis, make_axis, render_grid
from helpers.generation.loras import LoraSpec
from helpers.generation.pipeline import ImageSettings
from helpers.generation.prompts import PromptSpec

GENERIC_PROMPTS = (
    "a photo of a woman smiling in a park",
    "portrait of an old man with a beard, studio lighting",
    "a cat sitting on a windowsill",
    "a dog running on a beach",
    "a red bicycle leaning against a brick wall",
    "a cup of coffee on a wooden table",
    "a mountain lake at sunrise",
    "a gothic cathedral in a city square",
)


def aspect_size(width: int, height: int, side: int, multiple: int = 64) -> tuple[int, int]:
    """A size with the image's aspect ratio and about ``side``² pixels, both sides multiples of ``multiple``."""
    ratio = width / height
    w = max(multiple, round(side * ratio ** 0.5 / multiple) * multiple)
    h = max(multiple, round(side / ratio ** 0.5 / multiple) * multiple)
    return w, h


def training_captions(dataset: str | Path, limit: int, side: int, multiple: int) -> list[tuple[Path, PromptSpec]]:
    """Up to ``limit`` (image, its training caption as a prompt) pairs spread over the dataset, each at its image's
    aspect ratio. The caption is the one training reads (``helpers.dataset.files.dataset_entries``)."""
    from PIL import Image

    from helpers.dataset.files import dataset_entries

    entries = [e for e in dataset_entries(dataset)[0] if e.caption]
    if not entries:
        raise FileNotFoundError(f"{dataset}: no images with captions to replay; caption the dataset first")
    n = len(entries)
    picked = entries if n <= limit else [entries[i * (n - 1) // max(1, limit - 1)] for i in range(limit)]
    out = []
    for entry in picked:
        with Image.open(entry.path) as img:
            w, h = aspect_size(*img.size, side, multiple)
        # the "|||" keep-order markers of training captions never reach a text encoder
        caption = re.sub(r"\s*,?\s*\|\|\|\s*,?\s*", ", ", entry.caption).strip(" ,")
        out.append((entry.path, PromptSpec(prompt=caption, width=w, height=h)))
    return out


def variant_axis(checkpoints: list[str], loras: list[LoraSpec], strengths: list[float]) -> tuple[Axis, list]:
    """The columns: checkpoints when given, else LoRA strengths (0 = base), else the model alone."""
    if checkpoints:
        return make_axis("checkpoint", list(checkpoints)), list(loras)
    if loras:
        return make_axis("strength", list(strengths)), list(loras)
    return make_axis("checkpoint", ["base"]), []


def guide_review(model: str | Path, folder: str | Path, *, dataset: str | Path | None = None,
                 loras: list[LoraSpec] = (), checkpoints: list[str] = (), strengths: list[float] = (0.0, 1.0),
                 base: ImageSettings | None = None, caption_limit: int = 8,
                 generic_prompts: tuple[str, ...] = GENERIC_PROMPTS, open_model=None, overwrite: bool = False,
                 progress: bool = True, cell_size: int | None = None) -> dict[str, list[Path]]:
    """Write ``folder/captions/`` (training captions 1:1 beside their images) and ``folder/generic/`` (generic
    prompts, 4 images each) as labelled grids; returns the grid pages of each."""
    from PIL import Image

    from helpers.generation.pipeline import random_seed

    base = base or ImageSettings()
    base = replace(base, seed=base.seed if base.seed >= 0 else random_seed(), batch_size=1)
    folder = Path(folder)
    columns, fixed = variant_axis(list(checkpoints), list(loras), list(strengths))
    out: dict[str, list[Path]] = {}
    if dataset is not None:
        from helpers.generation.sources import model_size_rules

        native, multiple = model_size_rules(model)
        pairs = training_captions(dataset, caption_limit, base.width or native, multiple)
        rows = make_axis("prompt", [spec for _, spec in pairs])
        reference = [Image.open(p).convert("RGB") for p, _ in pairs]
        result = render_grid(model, [columns, rows], folder / "captions", base=base, loras=fixed,
                             open_model=open_model, overwrite=overwrite, progress=progress, reference=reference,
                             cell_size=cell_size)
        out["captions"] = result.pages
    rows = make_axis("prompt", list(generic_prompts))
    result = render_grid(model, [columns, rows], folder / "generic", base=replace(base, batch_size=4), loras=fixed,
                         open_model=open_model, overwrite=overwrite, progress=progress, cell_size=cell_size)
    out["generic"] = result.pages
    return out
