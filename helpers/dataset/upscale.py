"""Upscaling the images that are too small for the training resolution, with an ESRGAN-class model, undoably.

The guide: "make sure to have them all be in at least a 1024x1024 or equivalent aspect ratio resolution ... If
they are smaller, I recommend manually upscaling them. Kohya can do so automatically, but I find doing it
manually results in better quality." So:

- ``images_to_upscale`` lists every image training reads whose short side (or, with ``measure="area"``, the
  side of the square of the same area: the guide's "equivalent aspect ratio") is below the resolution, with
  the factor it needs;
- ``upscale_images`` runs the model (``helpers.models.upscalers``: tiled, GPU when present) as many times as the
  factor needs, then resizes with Lanczos to exactly ``factor`` x the original (short side = the resolution).
  The result is written as PNG by default (no second round of JPEG artifacts on the upscaler's output). The
  original is kept in a ``helpers.changes.ChangeLog`` backup (``undo_changes`` restores it byte for byte);
  when the name changes (``.jpg`` -> ``.png``, or a taken name), captions and companion files
  (``helpers.dataset.files.sidecar_files``) are renamed with it;
- ``before_after_sheet``: the original, the trainer's plain bicubic enlargement and the model's, side by side
  on a 1:1 crop, so the difference is visible.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from PIL import Image

from helpers.changes import ChangeLog, common_root, unique_path
from helpers.config import option
from helpers.dataset.embeddings import open_training_image
from helpers.dataset.files import dataset_entries, is_image_name, read_image_size, sidecar_files
from helpers.dataset.fix import SAVE_FORMATS
from helpers.models.upscalers import DEFAULT_UPSCALER, Upscaler, upscale_image

MAX_PASSES = 3  # a 4x model three times is 64x: anything smaller than that is not a training image


@dataclass
class UpscaleConfig:
    """What notebook 01's upscale form edits (and ``python -m helpers.dataset upscale``'s flags)."""

    format_version: ClassVar[int] = 1
    model: str = option(DEFAULT_UPSCALER, help="upscaler: a short name (realesrgan-x4plus, 4x-ultrasharp: "
                        "non-commercial licence), owner/repo/file.pth on the Hub, or a .pth / .safetensors path")
    resolution: int = option(1024, help="training resolution: images below it are upscaled to it", unit="px",
                             min=64, max=8192, step=64)
    measure: Literal["short_side", "area"] = option(
        "short_side", help="short_side: the shorter side must reach the resolution; area: the square of the same "
        "area must (the guide's 'or equivalent aspect ratio'; what aspect buckets use)")
    output_format: Literal["png", "same"] = option("png", help="png: lossless (recommended); same: keep each "
                                                   "file's format (JPEG/WebP at quality 95)")
    tile: int = option(0, help="input tile side in pixels (0: 512 on a GPU with 8 GB free, else 256; halved "
                       "automatically when the GPU runs out of memory)", unit="px", min=0, max=4096,
                       group="advanced")
    device: Literal["auto", "cuda", "cpu"] = option("auto", help="auto: the GPU when there is one", group="advanced")
    apply: bool = option(False, help="write the upscaled images (originals backed up, undoable); unticked: only "
                         "list them and preview the first few", label="upscale now")


@dataclass
class UpscaleItem:
    path: Path
    width: int
    height: int
    factor: float

    @property
    def target(self) -> tuple[int, int]:
        return math.ceil(self.width * self.factor - 1e-6), math.ceil(self.height * self.factor - 1e-6)


def needed_factor(width: int, height: int, resolution: int, measure: str = "short_side") -> float:
    """How much an image must grow for its short side (or equal-area square side) to reach ``resolution``."""
    side = min(width, height) if measure == "short_side" else math.sqrt(width * height)
    return resolution / side


def images_to_upscale(folder: str | os.PathLike, resolution: int, measure: str = "short_side") -> list[UpscaleItem]:
    """Every image training reads under ``folder`` that is below ``resolution``, with its factor (largest first)."""
    if measure not in ("short_side", "area"):
        raise ValueError(f"measure must be 'short_side' or 'area', got {measure!r}")
    out = []
    for entry in dataset_entries(folder)[0]:
        try:
            w, h = read_image_size(entry.path)
        except Exception:  # unreadable: the dataset check reports it; nothing to upscale
            continue
        factor = needed_factor(w, h, resolution, measure)
        if factor > 1.0:
            out.append(UpscaleItem(entry.path, w, h, factor))
    return sorted(out, key=lambda i: -i.factor)


def enlarge(up: Upscaler, image: Image.Image, target: tuple[int, int], tile: int = 0) -> Image.Image:
    """The model applied until the image reaches ``target`` (at most ``MAX_PASSES`` times), then Lanczos to
    exactly ``target``."""
    passes = 0
    while (image.width < target[0] or image.height < target[1]) and passes < MAX_PASSES:
        image = upscale_image(up, image, tile)
        passes += 1
    return image if image.size == target else image.resize(target, Image.LANCZOS)


def encode_image(image: Image.Image, suffix: str) -> bytes:
    fmt, kwargs = SAVE_FORMATS.get(suffix.lower(), ("PNG", {}))
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


@dataclass
class UpscaleResult:
    upscaled: list[tuple[Path, Path, tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)
    backup_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    sheet: Image.Image | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        return {"upscaled": len(self.upscaled), "failed": len(self.failed), "seconds": round(self.seconds, 1),
                "backup_dir": str(self.backup_dir) if self.backup_dir else None, "notes": self.notes}


def _new_path(path: Path, output_format: str) -> Path:
    if output_format == "same" or path.suffix.lower() == ".png":
        return path
    wanted = path.with_suffix(".png")
    return wanted if not wanted.exists() else unique_path(wanted)


def _companion_name(companion: Path, old: Path, new: Path) -> Path:
    """``old``'s companion renamed for ``new``: ``x.jpg.json`` -> ``x.png.json``, ``x.txt`` -> ``y.txt``."""
    if companion.name.startswith(old.name):
        return companion.with_name(new.name + companion.name[len(old.name):])
    return companion.with_name(new.stem + companion.name[len(old.stem):])


def _replace(log: ChangeLog, item: UpscaleItem, image: Image.Image, output_format: str) -> Path:
    """Write the upscaled image (original backed up), and move the companions when the name changes."""
    new = _new_path(item.path, output_format)
    companions = sidecar_files(item.path)
    # another image with the same stem shares the stem-named companions: copy those, never take them away
    shared = any(p != item.path and p.stem == item.path.stem for p in item.path.parent.iterdir() if is_image_name(p.name))
    log.write(new, encode_image(image, new.suffix))
    if new != item.path:
        log.remove(item.path)
        for companion in companions:
            moved = _companion_name(companion, item.path, new)
            if moved == companion:
                continue
            if shared and not companion.name.startswith(item.path.name):
                log.write(moved, companion.read_bytes())
            else:
                log.rename(companion, moved)
    return new


def upscale_images(items: list[UpscaleItem], up: Upscaler, *, root: str | os.PathLike | None = None,
                   output_format: str = "png", tile: int = 0, sheet_limit: int = 8,
                   progress: bool = True) -> UpscaleResult:
    """Upscale ``items`` in place as one undoable change set (its backup folder under ``root``, default their
    common folder); a file that fails is reported, the rest go on."""
    result = UpscaleResult()
    if not items:
        return result
    started = time.perf_counter()
    pairs = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), unit="img", desc=f"upscaling with {up.description.split(' (')[0]}")
    with ChangeLog(root or common_root([i.path for i in items]), "upscale") as log:
        result.backup_dir = log.backup_dir
        for item in items:
            try:
                original = open_training_image(item.path)
                image = enlarge(up, original, item.target, tile)
                new = _replace(log, item, image, output_format)
                result.upscaled.append((item.path, new, (item.width, item.height), image.size))
                if len(pairs) < sheet_limit:
                    pairs.append((item.path.name, original, image))
            except Exception as exc:  # one bad file must not stop the others; the log keeps what was done
                result.failed[item.path] = f"{type(exc).__name__}: {exc}"
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    result.notes = list(dict.fromkeys(up.notes))
    result.sheet = before_after_sheet(pairs)
    result.seconds = time.perf_counter() - started
    return result


def preview_upscale(items: list[UpscaleItem], up: Upscaler, limit: int = 4, tile: int = 0) -> Image.Image | None:
    """The before/after sheet of the first ``limit`` items, computed in memory: nothing is written."""
    pairs = []
    for item in items[:limit]:
        original = open_training_image(item.path)
        pairs.append((item.path.name, original, enlarge(up, original, item.target, tile)))
    return before_after_sheet(pairs)


def before_after_sheet(pairs: list[tuple[str, Image.Image, Image.Image]], crop: int = 192) -> Image.Image | None:
    """Per image: the original, then the same centre crop at 1:1 of the bicubic enlargement (what a trainer
    does) and of the model's."""
    from helpers.ui.gallery import thumbnail_grid

    items = []
    for name, before, after in pairs:
        bicubic = before.resize(after.size, Image.BICUBIC)
        box = ((after.width - crop) // 2, (after.height - crop) // 2, (after.width + crop) // 2,
               (after.height + crop) // 2)
        items += [(before, f"{name}\n{before.width}x{before.height}"), (bicubic.crop(box), "bicubic (trainer)\n1:1 crop"),
                  (after.crop(box), f"model {after.width}x{after.height}\n1:1 crop")]
    return thumbnail_grid(items, columns=3, size=crop, title="before / after upscaling") if items else None


def format_plan(items: list[UpscaleItem], resolution: int, limit: int = 30) -> str:
    if not items:
        return f"no image below {resolution} px: nothing to upscale"
    lines = [f"{len(items)} images below {resolution} px (factor needed):"]
    lines += [f"  x{i.factor:4.2f}  {i.width}x{i.height} -> {i.target[0]}x{i.target[1]}  {i.path.name}"
              for i in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)
