"""The synthetic demo dataset: coloured shapes whose filenames are their captions (with real-world numbering),
and the demo's dataset-advice step (composition with a tiny encoder, upscaling with a tiny upscaler).

Used by ``python -m helpers demo`` (its "dataset in" step in ``helpers.download.demo``), the notebook harness
and tests.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

_DEMO_COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 210), "green": (40, 160, 70), "yellow": (235, 200, 40),
                 "white": (245, 245, 245), "black": (15, 15, 15)}


_DEMO_SHAPES = ("circle", "square", "triangle")


# (width, height): square, landscape, portrait and one below a 512 training side
_DEMO_SIZES = [(512, 512), (640, 448), (448, 640), (576, 384), (384, 576), (320, 320)]


# numbering a downloader or file manager leaves behind; captions-from-filenames must strip all of them
_DEMO_SUFFIXES = ["_01", "_02", " (2)", "-3", " copy", ""]


def draw_demo_image(shape: str, colour: str, background: str, size: tuple[int, int], seed: int) -> Image.Image:
    """One synthetic training image: a ``colour`` ``shape`` on a ``background`` with a little jitter."""
    rng = random.Random(seed)
    w, h = size
    img = Image.new("RGB", size, _DEMO_COLOURS[background])
    draw = ImageDraw.Draw(img)
    r = int(min(w, h) * rng.uniform(0.25, 0.4))
    cx, cy = int(w * rng.uniform(0.35, 0.65)), int(h * rng.uniform(0.35, 0.65))
    fill = _DEMO_COLOURS[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def make_demo_dataset(folder: str | os.PathLike, n: int = 12, seed: int = 0) -> Path:
    """Write ``n`` synthetic images whose *filenames are their captions* (``a red circle on blue_01.png``).

    Sizes and aspect ratios vary (some below 512 px), formats are PNG/JPEG/WebP, and the names carry the
    numbering suffixes real downloads have (``_01``, `` (2)``, ``-3``, `` copy``). Existing files are never
    overwritten: a name already taken raises ``FileExistsError``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    colours = list(_DEMO_COLOURS)
    formats = [(".png", "PNG", {}), (".jpg", "JPEG", {"quality": 92}), (".webp", "WEBP", {"quality": 90})]
    seen: dict[str, int] = {}
    for i in range(n):
        shape = _DEMO_SHAPES[i % len(_DEMO_SHAPES)]
        colour = colours[i % 4]
        background = rng.choice([c for c in colours if c != colour])
        caption = f"a {colour} {shape} on {background}"
        seen[caption] = seen.get(caption, 0) + 1
        suffix = _DEMO_SUFFIXES[i % len(_DEMO_SUFFIXES)] if seen[caption] == 1 else f"_{seen[caption]:02d}"
        ext, fmt, kwargs = formats[i % len(formats)]
        path = folder / f"{caption}{suffix}{ext}"
        if path.exists():
            raise FileExistsError(f"{path}: already exists; make the demo dataset in an empty folder")
        img = draw_demo_image(shape, colour, background, _DEMO_SIZES[i % len(_DEMO_SIZES)], seed * 1000 + i)
        tmp = path.with_name(f".{path.name}.tmp")
        img.save(tmp, fmt, **kwargs)
        os.replace(tmp, path)
    return folder



TINY_ENCODER, TINY_UPSCALER = "tiny-clip", "tiny-upscaler/tiny-srvgg-x4.pth"


def advice_step(ws) -> dict[str, str]:
    """Composition of ``ws.dataset("demo")`` with a tiny CLIP, then the upscale step on a copy of it (so later
    steps see the dataset as made) with a tiny SRVGGNetCompact; returns where the charts and sheets went."""
    from helpers.dataset.advice import compose, upscale_dataset
    from helpers.dataset.composition import CompositionConfig
    from helpers.dataset.upscale import UpscaleConfig
    from helpers.models.encoders import build_tiny_clip, is_encoder_folder
    from helpers.models.upscalers import save_tiny_upscaler

    folder = ws.dataset("demo")
    if not folder.is_dir() or not any(folder.iterdir()):
        make_demo_dataset(folder)
    if not is_encoder_folder(ws.models / TINY_ENCODER):
        build_tiny_clip(ws.models / TINY_ENCODER)
    if not (ws.models / TINY_UPSCALER).is_file():
        save_tiny_upscaler(ws.models / TINY_UPSCALER, "srvgg")
    result, written = compose(ws, folder, CompositionConfig(encoder=TINY_ENCODER, device="cpu"), progress=False)
    copy = ws.cache / "dataset-advice" / "demo-upscale-copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".*"))
    text, up_written = upscale_dataset(ws, copy, UpscaleConfig(model=TINY_UPSCALER, resolution=384, measure="area",
                                                               device="cpu", apply=True), progress=False)
    counts = result.counts
    return {"composition": f"{len(result.paths)} images, {sum(1 for v in counts.values() if v)} of {len(counts)} "
                           "categories present", **written,
            "upscale (on a copy)": text.splitlines()[-2] if len(text.splitlines()) > 1 else text,
            **{f"upscale {k}": v for k, v in up_written.items()}}
