"""Command line: ``python -m helpers.dataset check DIR [--json] [--fix] [--reject] [--sheets DIR] [--composition]``,
``composition DIR``, ``upscale DIR [--apply]``, ``layout DIR --repeats N --name X``, ``demo DIR``. Exit 0 when the
command ran (whatever the check found), 2 for bad input."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from helpers.dataset import advice
from helpers.dataset.check import DEFAULT_MIN_SIDE, check_dataset
from helpers.dataset.demo import make_demo_dataset
from helpers.dataset.files import DEFAULT_MAX_PIXELS
from helpers.dataset.fix import fix_images, layout_repeat_folder, parse_colour, reject_files
from helpers.dataset.report import (
    buckets_chart,
    dataset_report,
    duplicates_sheet,
    format_report,
    problems_sheet,
    resolution_histogram,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.dataset",
                                     description="check, fix and lay out a training dataset folder")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_check = sub.add_parser("check", help="check every file; exit 0 when the check ran, whatever it found")
    p_check.add_argument("folder", type=Path)
    p_check.add_argument("--workspace", help="workspace whose models/ and cache/ the composition uses")
    p_check.add_argument("--json", action="store_true", help="print every file with its status and reason as JSON")
    p_check.add_argument("--min-side", type=int, default=DEFAULT_MIN_SIDE, help="reject images with a shorter side")
    p_check.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6,
                         help="reject images larger than this (decompression-bomb limit)")
    p_check.add_argument("--resolution", type=int, default=1024, help="training resolution for the report")
    p_check.add_argument("--caption-ext", default=".txt")
    p_check.add_argument("--fix", action="store_true", help="apply fixes (originals backed up first)")
    p_check.add_argument("--reject", action="store_true", help="move rejected files to _rejected/ (never deleted)")
    p_check.add_argument("--background", default="white", help="colour transparency is flattened on")
    p_check.add_argument("--sheets", type=Path, help="write problem/duplicate contact sheets and charts here")
    p_check.add_argument("--composition", action="store_true", help="add the composition numbers (default encoder "
                         "and categories; see the composition command) to the report")
    advice.add_commands(sub)
    p_layout = sub.add_parser("layout", help="move a flat folder's images into a kohya N_name subfolder")
    p_layout.add_argument("folder", type=Path)
    p_layout.add_argument("--repeats", type=int, required=True)
    p_layout.add_argument("--name", required=True, help="class tokens / concept name")
    p_demo = sub.add_parser("demo", help="write the synthetic demo dataset into a folder")
    p_demo.add_argument("folder", type=Path)
    p_demo.add_argument("-n", type=int, default=12)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "demo":
            print(make_demo_dataset(args.folder, args.n))
            return 0
        if args.cmd == "layout":
            print(layout_repeat_folder(args.folder, args.repeats, args.name))
            return 0
        if args.cmd in ("composition", "upscale"):
            return advice.run_command(args)
        return run_check(args)
    except (FileNotFoundError, FileExistsError, ValueError, *advice.ADVICE_ERRORS) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run_check(args: argparse.Namespace) -> int:
    """``check``: the report (text or JSON), then the fixes / rejects / pictures asked for."""
    background = parse_colour(args.background)
    check = check_dataset(args.folder, min_side=args.min_side, max_pixels=int(args.max_megapixels * 1e6),
                          caption_ext=args.caption_ext, progress=not args.json)
    report = dataset_report(check, resolution=args.resolution)
    actions: dict[str, object] = {}
    if args.fix:
        res = fix_images(check.files, args.folder, background=background, progress=not args.json)
        actions["fixed"] = [[str(a), str(b)] for a, b, _ in res.fixed]
        actions["fix_failed"] = [[str(a), why] for a, why in res.failed]
        actions["fix_backup"] = str(res.backup_dir) if res.backup_dir else None
    if args.reject:
        res = reject_files(check.files, args.folder, args.caption_ext)
        actions["rejected"] = [[str(a), str(b)] for a, b in res.rejected]
        actions["reject_undo"] = str(res.backup_dir) if res.backup_dir else None
    if args.sheets:
        args.sheets.mkdir(parents=True, exist_ok=True)
        pictures = {"problems.png": problems_sheet(check), "duplicates.png": duplicates_sheet(check),
                    "resolution.png": resolution_histogram(check, args.resolution),
                    "buckets.png": buckets_chart(report)}
        for name, img in pictures.items():
            if img is not None:
                img.save(args.sheets / name)
                actions.setdefault("pictures", []).append(str(args.sheets / name))
    if args.composition:
        report["composition"] = advice.composition_numbers(args.folder, args.workspace)
    if args.json:
        print(json.dumps({"report": report, "check": check.to_dict(), "actions": actions}, indent=1,
                         ensure_ascii=False))
    else:
        print(format_report(report, check))
        for key, value in actions.items():
            print(f"{key}: {value if not isinstance(value, list) else len(value)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
