"""The dataset report and the pictures a person looks at: counts, formats, sizes, buckets, problems, duplicates.

``dataset_report`` summarises a ``DatasetCheck`` (buckets from ``helpers.dataset.buckets``, the ones training
uses); the sheets and charts are PIL images for notebooks and the CLI's ``--sheets``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from helpers.changes import write_text_atomic
from helpers.dataset.buckets import make_buckets, select_bucket
from helpers.dataset.check import DatasetCheck
from helpers.dataset.files import is_skipped_folder, list_images, parse_repeat_folder

REPORT_NAME = ".tunebook_report.json"  # the dataset report JSON, hidden inside the dataset folder
ADVICE_DIRNAME = "dataset-advice"


def update_report_file(folder: Path, section: str, data: dict[str, object]) -> Path:
    """Put ``data`` under ``section`` in ``folder``'s report JSON (other sections kept; a damaged file replaced)."""
    path = Path(folder) / REPORT_NAME
    try:
        current = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = {}
    current = current if isinstance(current, dict) else {}
    current[section] = data
    return write_text_atomic(path, json.dumps(current, indent=1, ensure_ascii=False))


def advice_dir(cache_dir: Path, folder: Path) -> Path:
    """Where the charts and sheets of a dataset's advice go: ``<workspace cache>/dataset-advice/<dataset>/``."""
    return Path(cache_dir) / ADVICE_DIRNAME / Path(folder).name


def find_repeat_folders(folder: Path) -> list[dict[str, object]]:
    """Kohya ``N_name`` subfolders directly under ``folder`` with their repeats and image counts."""
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not is_skipped_folder(p.name)):
        parsed = parse_repeat_folder(sub.name)
        out.append({"folder": sub.name, "repeats": parsed[0] if parsed else None,
                    "class_tokens": parsed[1] if parsed else None, "images": len(list_images(sub))})
    return out


def dataset_report(check: DatasetCheck, *, resolution: int = 1024, min_bucket: int = 256, max_bucket: int = 2048,
                   bucket_step: int = 64, no_upscale: bool = False) -> dict[str, object]:
    """Counts, formats, sizes, problems, images below ``resolution``, aspect buckets, captions, repeat folders.

    Buckets come from ``helpers.dataset.buckets``, the functions training uses, so the report shows the
    buckets training will use; ``trained_images`` / ``samples_per_epoch`` are what the trainer will read.
    """
    root = check.folder
    rel = lambda p: str(Path(p).relative_to(root))  # noqa: E731
    usable = [f for f in check.images if f.status in ("ok", "fixable") and f.width and f.height]
    per_bucket, below = _bucket_counts(usable, resolution, min_bucket, max_bucket, bucket_step, no_upscale)
    folders = find_repeat_folders(root)
    loose = list_images(root, recursive=False)
    repeat_folders = [f for f in folders if f["repeats"] is not None]
    multiline = [rel(f.path) for f in check.images if f.caption_problem == "multiline"]
    trained = [f for f in check.images if f.trained]
    return {
        "folder": str(root),
        "files": len(check.files),
        "images": len(check.images),
        "usable_images": len(usable),
        "trained_images": len(trained),
        "counts": _count(f.status for f in check.images),
        "file_kinds": _count(f.kind for f in check.files),
        "formats": _count(f.format for f in check.images if f.format),
        "problems": _count(code for f in check.files for code in f.problems),
        "resolution": resolution,
        "below_resolution": [rel(p) for p in below],
        "buckets": dict(sorted(per_bucket.items(), key=lambda kv: -kv[1])),
        "missing_captions": [rel(f.path) for f in check.images if f.status != "rejected" and not f.has_caption],
        "multiline_captions": multiline,
        "orphan_captions": [rel(p) for p in check.orphan_captions],
        "exact_duplicate_groups": len(check.exact_duplicates),
        "near_duplicate_groups": len(check.near_duplicates),
        "layout": "repeat folders" if repeat_folders and not loose else ("flat" if not repeat_folders else "mixed"),
        "repeat_folders": folders,
        "samples_per_epoch": sum(f.repeats for f in trained),
        "warnings": _layout_warnings(root, folders, loose, multiline, len(check.orphan_captions)),
    }


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _bucket_counts(usable, resolution: int, min_bucket: int, max_bucket: int, step: int,
                   no_upscale: bool) -> tuple[dict[str, int], list[Path]]:
    """({bucket: images}, images below the training resolution) as training will place them."""
    buckets = None if no_upscale else make_buckets(resolution, min_bucket, max_bucket, step)
    per_bucket: dict[str, int] = {}
    below = []
    for f in usable:
        (bw, bh), (rw, rh) = select_bucket(f.width, f.height, buckets, resolution=resolution, step=step)
        per_bucket[f"{bw}x{bh}"] = per_bucket.get(f"{bw}x{bh}", 0) + 1
        # below resolution = training would upscale it to fill its bucket (the guide upscales those by hand);
        # without upscaling it trains smaller than the model's resolution instead
        if rw > f.width or rh > f.height or (buckets is None and bw * bh < 0.9 * resolution * resolution):
            below.append(f.path)
    return per_bucket, below


def _layout_warnings(root: Path, folders: list[dict], loose: list[Path], multiline: list[str],
                     orphans: int) -> list[str]:
    """What a person should know about the folder layout and caption files before training."""
    out = []
    repeat_folders = [f for f in folders if f["repeats"] is not None]
    if repeat_folders and loose:
        out.append(f"{len(loose)} images sit directly in {root.name}/ beside N_name folders: tunebook trains them "
                   "with the default repeats, kohya sd-scripts ignores them; move them into a repeat folder so "
                   "both train the same images")
    for f in folders:
        if f["repeats"] == 0 and f["images"]:
            out.append(f"folder {f['folder']!r} has 0 repeats: its {f['images']} images are not trained")
        elif repeat_folders and f["repeats"] is None and f["images"]:
            out.append(f"folder {f['folder']!r} is not named N_name: tunebook trains its {f['images']} images with "
                       "the default repeats, kohya sd-scripts skips them")
    if multiline:
        out.append(f"{len(multiline)} caption files have more than one line: training reads only the first line "
                   "(as kohya does); join the lines if all of it is the caption")
    if orphans:
        out.append(f"{orphans} caption files have no image")
    return out


def format_report(report: dict[str, object], check: DatasetCheck | None = None, limit: int = 30) -> str:
    """The report as plain text (CLI, notebooks without widgets)."""
    lines = [f"dataset {report['folder']}: {report['images']} images ({report['usable_images']} usable), "
             f"{report['files']} files",
             "images: " + (", ".join(f"{k} {v}" for k, v in sorted(report["counts"].items())) or "none")
             + "; files: " + ", ".join(f"{k} {v}" for k, v in sorted(report["file_kinds"].items())),
             "formats: " + (", ".join(f"{k} {v}" for k, v in sorted(report["formats"].items())) or "none")]
    if report["problems"]:
        lines.append("problems: " + ", ".join(f"{k} {v}" for k, v in sorted(report["problems"].items())))
    lines.append(f"below {report['resolution']}x{report['resolution']} pixels: {len(report['below_resolution'])} "
                 "(upscale them, as the guide does)")
    lines.append("buckets: " + (", ".join(f"{k} ({v})" for k, v in report["buckets"].items()) or "none"))
    lines.append(f"missing captions: {len(report['missing_captions'])}; duplicate groups: exact "
                 f"{report['exact_duplicate_groups']}, near {report['near_duplicate_groups']}; layout: "
                 f"{report['layout']}; samples per epoch: {report['samples_per_epoch']}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    if check is not None:
        bad = [f for f in check.files if f.status in ("fixable", "rejected")]
        for f in bad[:limit]:
            lines.append(f"  {f.status:<8} {f.path.relative_to(check.folder)}: {'; '.join(f.reasons)}")
        if len(bad) > limit:
            lines.append(f"  ... and {len(bad) - limit} more (see --json)")
        for group in check.exact_duplicates[:limit]:
            lines.append("  same bytes: " + " = ".join(str(p.relative_to(check.folder)) for p in group))
        for group in check.near_duplicates[:limit]:
            lines.append("  look alike: " + " ~ ".join(str(p.relative_to(check.folder)) for p in group))
    return "\n".join(lines)


def problems_sheet(check: DatasetCheck, limit: int = 48, columns: int = 6, size: int = 160) -> Image.Image | None:
    """A contact sheet of the fixable and rejected images, each captioned with its status and first reason."""
    from helpers.ui.gallery import thumbnail_grid

    bad = [f for f in check.images if f.status in ("fixable", "rejected")][:limit]
    if not bad:
        return None
    items = [(f.path if f.status == "fixable" or "bomb" not in f.problems else _placeholder(size, "too large"),
              f"{f.path.name}\n{f.status}: {f.reasons[0].split(':')[0]}") for f in bad]
    return thumbnail_grid(items, columns=columns, size=size)


def duplicates_sheet(check: DatasetCheck, limit_groups: int = 12, columns: int = 6,
                     size: int = 160) -> Image.Image | None:
    """A contact sheet of duplicate groups (exact first, then near), captioned with group number and file."""
    from helpers.ui.gallery import thumbnail_grid

    groups = [("same", g) for g in check.exact_duplicates] + [("alike", g) for g in check.near_duplicates]
    items = []
    for number, (kind, group) in enumerate(groups[:limit_groups], 1):
        items += [(p, f"#{number} {kind}\n{p.name}") for p in group]
    return thumbnail_grid(items, columns=columns, size=size) if items else None


def _placeholder(size: int, text: str) -> Image.Image:
    tile = Image.new("RGB", (size, size), (60, 60, 90))
    ImageDraw.Draw(tile).text((6, size // 2 - 6), text, fill=(255, 255, 255))
    return tile


def resolution_histogram(check: DatasetCheck, resolution: int = 1024) -> Image.Image | None:
    """Histogram of each usable image's size as the side of a square of the same area (compare: ``resolution``)."""
    from helpers.ui.charts import histogram

    sides = [math.sqrt(f.width * f.height) for f in check.images
             if f.status in ("ok", "fixable") and f.width and f.height]
    if not sides:
        return None
    return histogram(sides, bins=20, title=f"image size (training resolution {resolution})",
                     xlabel="sqrt(width x height), px")


def buckets_chart(report: dict[str, object]) -> Image.Image | None:
    """Bar chart of how many images fall into each aspect-ratio bucket."""
    from helpers.ui.charts import bar_chart

    buckets = report["buckets"]
    if not buckets:
        return None
    return bar_chart(list(buckets), list(buckets.values()), title="aspect-ratio buckets", xlabel="bucket",
                     ylabel="images")

