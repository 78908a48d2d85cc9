"""What notebook 01's dataset cells call: the check form's config, run / show / clean with plain messages, and the
advice steps (composition, upscaling) from ``helpers.dataset.advice``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from helpers.config import option
from helpers.dataset.advice import (  # noqa: F401  (notebook 01 reaches the advice steps through this module)
    default_composition_config,
    default_upscale_config,
    run_composition,
    run_upscale,
    show_composition,
)
from helpers.dataset.check import DEFAULT_MIN_SIDE, DatasetCheck, check_dataset
from helpers.dataset.composition import CompositionConfig, preset_lines  # noqa: F401
from helpers.dataset.files import DEFAULT_MAX_PIXELS, list_dataset_files
from helpers.dataset.fix import fix_images, parse_colour, reject_files
from helpers.dataset.report import (
    buckets_chart,
    dataset_report,
    duplicates_sheet,
    format_report,
    problems_sheet,
    resolution_histogram,
)
from helpers.dataset.upscale import UpscaleConfig  # noqa: F401


@dataclass
class CheckConfig:
    """What notebook 01's check form edits."""

    format_version: ClassVar[int] = 1
    resolution: int = option(1024, help="training resolution (SDXL 1024, SD 1.5 512): the report counts images "
                                        "below it and shows their buckets", unit="px", min=256, max=4096, step=64)
    min_side: int = option(DEFAULT_MIN_SIDE, help="reject images whose shorter side is smaller", unit="px", min=1,
                           max=4096)
    max_megapixels: float = option(DEFAULT_MAX_PIXELS / 1e6, help="reject larger images (decompression-bomb "
                                   "limit)", unit="MP", min=1.0, max=1000.0, group="advanced")
    near_threshold: int = option(6, help="largest perceptual-hash distance (of 64) called a near duplicate",
                                 min=0, max=32, group="advanced")
    fix: bool = option(False, help="apply the fixes (EXIF rotation, RGB, transparency, re-encode); originals are "
                                   "backed up first", label="apply fixes")
    reject: bool = option(False, help="move rejected files (with captions) to _rejected/ (never deleted)",
                          label="move rejects to _rejected/")
    background: str = option("white", help="colour transparency is flattened on (name, #rrggbb or r,g,b)")


def run_check(folder: str | os.PathLike, cfg: CheckConfig) -> tuple[DatasetCheck, dict[str, object]] | tuple[None, None]:
    """Notebook 01's check step: check ``folder`` and print the report; (None, None) with a message when there
    is no such dataset yet."""
    folder = Path(folder)
    if not folder.is_dir() or not list_dataset_files(folder):
        print(f"nothing to check: {folder} is missing or empty (download a dataset above first)")
        return None, None
    check = check_dataset(folder, min_side=cfg.min_side, max_pixels=int(cfg.max_megapixels * 1e6),
                          near_threshold=cfg.near_threshold)
    report = dataset_report(check, resolution=cfg.resolution)
    print(format_report(report, check))
    return check, report


def show_check(check: DatasetCheck | None, report: dict[str, object] | None) -> None:
    """Display the pictures of a check: problems and duplicates contact sheets, size histogram, bucket chart."""
    from IPython.display import display

    if check is None:
        print("no check to show")
        return
    shown = False
    for title, img in (("problems (fixable and rejected)", problems_sheet(check)),
                       ("duplicates (same bytes / look alike)", duplicates_sheet(check)),
                       ("image sizes", resolution_histogram(check, int(report["resolution"]))),
                       ("buckets", buckets_chart(report))):
        if img is not None:
            print(title)
            display(img)
            shown = True
    if not shown:
        print("no images to show")


def clean_dataset(check: DatasetCheck | None, cfg: CheckConfig) -> dict[str, object]:
    """Notebook 01's clean step: apply fixes and move rejects as ``cfg`` says; prints what changed and how to undo."""
    if check is None:
        print("nothing to clean")
        return {}
    out: dict[str, object] = {}
    if cfg.fix:
        res = fix_images(check.files, check.folder, background=parse_colour(cfg.background))
        out["fixed"], out["fix_failed"], out["fix_backup"] = len(res.fixed), res.failed, res.backup_dir
    if cfg.reject:
        res = reject_files(check.files, check.folder)
        out["rejected"], out["reject_undo"] = len(res.rejected), res.backup_dir
    if not out:
        n_fix, n_rej = len(check.with_status("fixable")), len(check.with_status("rejected"))
        print(f"nothing changed: {n_fix} fixable, {n_rej} rejected. Tick 'apply fixes' / 'move rejects' above "
              "and run the check and this cell again")
        return out
    for key, value in out.items():
        print(f"{key}: {value}")
    undo = [str(v) for k, v in out.items() if k in ("fix_backup", "reject_undo") and v]
    if undo:
        print("undo with: " + "; ".join(f"python -m helpers.captioning undo {u}" for u in undo))
    return out

