"""Fixing and moving dataset files: the fixes a check proposes, rejects moved aside, kohya folders laid out.

Every change goes through ``helpers.changes.ChangeLog``: originals are backed up first and one
``undo_changes(backup_dir)`` reverses any of these edits; nothing is ever deleted.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from helpers.changes import ChangeLog, unique_path
from helpers.dataset.check import FORMAT_EXTENSIONS, FileCheck, flatten_to_rgb
from helpers.dataset.files import REJECTED_DIRNAME, list_images, sidecar_files


@dataclass
class CleanResult:
    """What ``fix_images`` / ``reject_files`` changed; undo with ``helpers.captions.undo_changes(backup_dir)``."""

    fixed: list[tuple[Path, Path, list[str]]] = field(default_factory=list)  # (old path, new path, problems)
    rejected: list[tuple[Path, Path]] = field(default_factory=list)  # (old path, path in _rejected/)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    backup_dir: Path | None = None


SAVE_FORMATS = {".jpg": ("JPEG", {"quality": 95, "subsampling": 0}), ".jpeg": ("JPEG", {"quality": 95, "subsampling": 0}),
                 ".png": ("PNG", {"optimize": False}), ".webp": ("WEBP", {"quality": 95, "method": 4}),
                 ".bmp": ("BMP", {}), ".avif": ("AVIF", {"quality": 90})}


def convert_to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """The first frame of ``img`` upright (EXIF applied) as 8-bit RGB, transparency flattened on ``background``."""
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    if img.mode == "CMYK" and img.info.get("icc_profile"):
        try:  # a CMYK file with a profile converts faithfully through it
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
            img = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:
            img = img.convert("RGB")
    upright = ImageOps.exif_transpose(img)
    return flatten_to_rgb(upright, background)


def fix_images(checks: list[FileCheck], root: str | os.PathLike, *, background: tuple[int, int, int] = (255, 255, 255),
               progress: bool = True) -> CleanResult:
    """Apply the fixes of every ``fixable`` file; originals go to a backup folder first (undoable).

    A file whose only problem is its extension is renamed (bytes kept). Others are re-encoded as 8-bit RGB in
    the format their extension names (first frame, EXIF orientation applied, transparency on ``background``);
    EXIF is not carried over (it would re-rotate the pixels, and it can hold GPS data). Formats training
    does not read are written as PNG beside the original's name.
    """
    from tqdm.auto import tqdm

    result = CleanResult()
    todo = [c for c in checks if c.status == "fixable"]
    if not todo:
        return result
    with ChangeLog(root, "fixes") as log:
        result.backup_dir = log.backup_dir
        for check in tqdm(todo, desc="fixing images", unit="img", disable=not progress):
            try:
                target = _fix_one(check, log, background)
                result.fixed.append((check.path, target, list(check.problems)))
            except Exception as exc:  # one bad file must not stop the rest; it stays as it was
                result.failed.append((check.path, f"{type(exc).__name__}: {exc}"))
    return result


def _fix_one(check: FileCheck, log: ChangeLog, background: tuple[int, int, int]) -> Path:
    """Fix one file (rename, or re-encode in place / as PNG); returns where the fixed image is."""
    path = check.path.resolve()
    if check.problems == ["wrong_extension"]:
        target = path.with_suffix(FORMAT_EXTENSIONS[check.format][0])
        if not target.exists():
            log.rename(path, target)
            return target
    ext = path.suffix.lower()
    target = path if ext in SAVE_FORMATS else unique_path(path.with_suffix(".png"))
    fmt, kwargs = SAVE_FORMATS[target.suffix.lower()]
    with Image.open(path) as img:
        rgb = convert_to_rgb(img, background)
        icc = img.info.get("icc_profile") if img.mode not in ("CMYK",) else None
    buf = io.BytesIO()
    rgb.save(buf, fmt, **kwargs, **({"icc_profile": icc} if icc else {}))
    log.write(target, buf.getvalue())
    if target != path:
        log.remove(path)
    return target


def reject_files(checks: list[FileCheck], root: str | os.PathLike, caption_ext: str = ".txt") -> CleanResult:
    """Move every ``rejected`` file (with its caption and metadata) to ``<root>/_rejected/``, never deleting.

    The reasons are appended to ``_rejected/reasons.jsonl``; ``undo_changes(result.backup_dir)`` moves them back.
    """
    root = Path(root).resolve()
    result = CleanResult()
    todo = [c for c in checks if c.status == "rejected"]
    if not todo:
        return result
    rejected_dir = root / REJECTED_DIRNAME
    log_lines = []
    with ChangeLog(root, "rejects") as log:
        result.backup_dir = log.backup_dir
        for check in todo:
            path = check.path.resolve()
            try:
                target = unique_path(rejected_dir / path.relative_to(root))
            except ValueError:
                result.failed.append((check.path, f"not inside {root}"))
                continue
            sidecars = sidecar_files(path, caption_ext) if check.kind == "image" else []
            log.rename(path, target)
            for side in sidecars:
                log.rename(side, unique_path(target.with_name(target.stem + side.name[len(path.stem):])))
            result.rejected.append((check.path, target))
            log_lines.append(json.dumps({"file": os.path.relpath(path, root), "moved_to": os.path.relpath(target, root),
                                         "problems": check.problems, "reasons": check.reasons,
                                         "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                        ensure_ascii=False))
    if log_lines:
        with open(rejected_dir / "reasons.jsonl", "a", encoding="utf-8") as fh:
            fh.write("\n".join(log_lines) + "\n")
    return result


def layout_repeat_folder(folder: str | os.PathLike, repeats: int, name: str, caption_ext: str = ".txt") -> Path:
    """Move the images directly in ``folder`` (with captions and metadata) into ``folder/<repeats>_<name>/``.

    Kohya reads only ``N_name`` subfolders of its train folder; this lays a flat upload out that way. Undo
    with ``helpers.changes.undo_changes`` on the backup folder named in the manifest it writes.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if not name or any(c in name for c in '/\\:*?"<>|') or name.strip(". ") != name:
        raise ValueError(f"folder name {name!r}: use letters, digits, spaces or '_' (no path characters)")
    folder = Path(folder).resolve()
    target = folder / f"{repeats}_{name}"
    images = list_images(folder, recursive=False)
    if not images:
        raise FileNotFoundError(f"{folder}: no images directly in this folder to lay out")
    target.mkdir(exist_ok=True)
    with ChangeLog(folder, "layout") as log:
        for image in images:
            for src in [image, *sidecar_files(image, caption_ext)]:
                if (target / src.name).exists():
                    raise FileExistsError(f"{target / src.name}: already exists; nothing there was overwritten "
                                          f"(undo the moves so far with the backup {log.backup_dir})")
                log.rename(src, target / src.name)
    return target


def parse_colour(text: str) -> tuple[int, int, int]:
    """An RGB colour from a name (``white``), ``#rrggbb`` or ``r,g,b``."""
    from PIL import ImageColor

    text = text.strip()
    try:
        if "," in text:
            parts = tuple(int(v) for v in text.split(","))
            if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
                raise ValueError
            return parts  # type: ignore[return-value]
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise ValueError(f"background colour {text!r}: use a name (white), #rrggbb or r,g,b") from None

