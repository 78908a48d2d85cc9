"""``python -m helpers.captioning``: tag, caption, booru-caption, curate and render a dataset's captions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from helpers.captioning import booru, captioners, curation, sidecar, triggers, wd_tagger
from helpers.captioning.sidecar import RenderConfig
from helpers.dataset.caption_files import format_preview
from helpers.dataset.files import list_images
from helpers.workspace import Workspace


def add_render_args(p: argparse.ArgumentParser, default: str = "caption, tags") -> None:
    p.add_argument("--render", default=default, choices=["none", "tags", "caption", "caption, tags", "tags, caption"],
                   help=f"re-render the .txt files afterwards in this format (default: {default!r}; none: only the "
                        ".captions.json records change)")
    p.add_argument("--caption-source", default="latest", help="which caption to render (default: latest)")
    p.add_argument("--keep-separator", action="store_true", help="write ' ||| ' after the kept leading tags")
    p.add_argument("--overwrite-edited", action="store_true", help="also replace .txt files edited by hand")


def render_from(args) -> RenderConfig | None:
    if args.render == "none":
        return None
    return RenderConfig(format=args.render, caption_source=args.caption_source, keep_separator=args.keep_separator,
                        overwrite_edited=args.overwrite_edited)


def workspace_dirs(args) -> tuple[Path, Path]:
    ws = Workspace.open(args.workspace) if args.workspace else Workspace.open()
    return ws.models, ws.hf_cache


def print_report(summary: dict, problems: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**summary, "problem_files": {str(k): v for k, v in problems.items()}}, indent=1))
        return
    for key, value in summary.items():
        print(f"{key}: {value}")
    for path, why in list(problems.items())[:50]:
        print(f"  problem: {path}: {why}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m helpers.captioning", description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", help="workspace folder (models are fetched into it); default: "
                        "TUNEBOOK_WORKSPACE or the platform default")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = wd_tagger.TaggerConfig()

    p = sub.add_parser("tag", help="tag images with a WD tagger (ONNX)")
    p.add_argument("folder", type=Path)
    p.add_argument("--model", default=d.model, help=f"tagger name, repo id or folder (default {d.model})")
    p.add_argument("--general-threshold", type=float, default=d.general_threshold)
    p.add_argument("--character-threshold", type=float, default=d.character_threshold)
    p.add_argument("--mcut", action="store_true", help="MCut thresholds for general and character tags")
    p.add_argument("--rating-tag", choices=["none", "first", "last"], default=d.rating_tag)
    p.add_argument("--rating-words", choices=["danbooru", "kohaku"], default=d.rating_words)
    p.add_argument("--undesired", nargs="*", default=[], help="tags never written")
    p.add_argument("--always-first", nargs="*", default=[], help="tags moved to the front when present")
    p.add_argument("--underscores", choices=["both", "length", "kaomoji", "keep"], default=d.underscores)
    p.add_argument("--escape", action="store_true", help="escape brackets for A1111 prompts")
    p.add_argument("--mode", choices=["overwrite", "append", "prepend"], default=d.mode)
    p.add_argument("--force", action="store_true", help="also tag images that already have tags")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default=d.device)
    add_render_args(p)

    c = captioners.CaptionerConfig()
    p = sub.add_parser("caption", help="natural-language captions (Florence-2, BLIP, chat VLMs)")
    p.add_argument("folder", type=Path)
    p.add_argument("--model", default=c.model)
    p.add_argument("--prompt", default=c.prompt, help="prompt for chat VLMs")
    p.add_argument("--florence-task", default=c.florence_task,
                   choices=["<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"])
    p.add_argument("--remove-mood", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=c.max_new_tokens)
    p.add_argument("--batch-size", type=int, default=c.batch_size)
    p.add_argument("--force", action="store_true", help="caption again images this captioner already did")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default=c.device)
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default=c.dtype)
    add_render_args(p)

    b = booru.BooruConfig()
    p = sub.add_parser("booru", help="Kohaku XL-style captions from gallery-dl Danbooru metadata (*.json)")
    p.add_argument("folder", type=Path)
    p.add_argument("--quality", choices=["fav_count", "aesthetic", "none"], default=b.quality)
    p.add_argument("--percentiles", choices=["danbooru2023", "dataset"], default=b.percentiles)
    p.add_argument("--no-year", action="store_true")
    p.add_argument("--no-rating", action="store_true")
    p.add_argument("--no-meta", action="store_true")
    add_render_args(p, default="tags")

    p = sub.add_parser("curate", help="trigger word, remove/replace/dedupe/sort tags across the dataset")
    p.add_argument("folder", type=Path)
    p.add_argument("--trigger", default="")
    p.add_argument("--position", choices=["front", "before_class", "replace_class"], default="front")
    p.add_argument("--class-word", default="")
    p.add_argument("--trigger-in", choices=["both", "tags", "captions"], default="both")
    p.add_argument("--remove", nargs="*", default=[])
    p.add_argument("--replace", nargs="*", default=[], help="'old -> new' entries")
    p.add_argument("--no-dedupe", action="store_true")
    p.add_argument("--sort", choices=["none", "alphabetical", "frequency"], default="none")
    p.add_argument("--dry-run", action="store_true", help="show the .txt changes, write nothing")
    add_render_args(p)

    p = sub.add_parser("triggers", help="check trigger words with the base model's own tokenizers and embeddings")
    p.add_argument("folder", type=Path)
    p.add_argument("--trigger", action="append", default=[], required=True, help="a trigger word (repeatable)")
    p.add_argument("--known", action="append", default=[], help="the known token paired with each --trigger, in order")
    p.add_argument("--model", required=True, help="base model: a workspace model name, a path or a Hub repo id")
    p.add_argument("--max-tokens", type=int, default=75, choices=[75, 150, 225])

    p = sub.add_parser("render", help="(re)write every .txt from the caption records")
    p.add_argument("folder", type=Path)
    p.add_argument("--dry-run", action="store_true")
    add_render_args(p)

    p = sub.add_parser("tags", help="print the tag frequency table")
    p.add_argument("folder", type=Path)
    p.add_argument("--top", type=int, default=50)
    p.add_argument("--chart", type=Path, help="also save a bar chart PNG here")

    p = sub.add_parser("undo", help="undo an edit from its backup folders (as printed after each command)")
    p.add_argument("backup_dirs", nargs="+", type=Path)
    p.add_argument("--force", action="store_true", help="undo files edited since (current text kept in the backup)")

    p = sub.add_parser("vram", help="estimated VRAM of a captioner before loading it")
    p.add_argument("model")
    p.add_argument("--batch-size", type=int, default=8)

    p = sub.add_parser("build-tiny-tagger", help="write the tiny offline test tagger into a folder")
    p.add_argument("folder", type=Path)
    return parser


def run(args) -> int:
    if args.cmd in ("tag", "caption", "booru", "curate", "render", "tags", "triggers") and not args.folder.is_dir():
        raise FileNotFoundError(f"{args.folder}: no such dataset folder")
    if args.cmd == "tag":
        cfg = wd_tagger.TaggerConfig(model=args.model, general_threshold=args.general_threshold,
                                     character_threshold=args.character_threshold, general_mcut=args.mcut,
                                     character_mcut=args.mcut, rating_tag=args.rating_tag, rating_words=args.rating_words,
                                     undesired_tags=args.undesired, always_first_tags=args.always_first,
                                     underscores=args.underscores, escape_brackets=args.escape, mode=args.mode,
                                     skip_tagged=not args.force, batch_size=args.batch_size, device=args.device)
        models, _ = workspace_dirs(args)
        report = wd_tagger.tag_dataset(args.folder, cfg, models, render_from(args))
        print_report(report.summary(), report.problems, args.json)
    elif args.cmd == "caption":
        cfg = captioners.CaptionerConfig(model=args.model, prompt=args.prompt, florence_task=args.florence_task,
                                         remove_mood=args.remove_mood, max_new_tokens=args.max_new_tokens,
                                         batch_size=args.batch_size, skip_captioned=not args.force,
                                         device=args.device, dtype=args.dtype)
        print(captioners.describe_vram(cfg.model, cfg.batch_size, cfg.dtype, cfg.device), file=sys.stderr)
        _, cache = workspace_dirs(args)
        report = captioners.caption_dataset(args.folder, cfg, cache, render_from(args))
        print_report(report.summary(), report.problems, args.json)
    elif args.cmd == "booru":
        cfg = booru.BooruConfig(quality=args.quality, percentiles=args.percentiles, year_tags=not args.no_year,
                                rating_tags=not args.no_rating, meta_tags=not args.no_meta)
        report = booru.caption_dataset_from_metadata(args.folder, cfg, render_from(args))
        print_report(report.summary(), report.problems, args.json)
    elif args.cmd in ("curate", "render"):
        records, problems = sidecar.load_records(list_images(args.folder))
        if args.cmd == "curate":
            cfg = curation.CurationConfig(trigger=args.trigger, trigger_position=args.position,
                                          class_word=args.class_word, trigger_in=args.trigger_in,
                                          remove=args.remove, replace=args.replace, dedupe=not args.no_dedupe,
                                          sort=args.sort)
            records = curation.curate_records(records, cfg)
        render = render_from(args)
        if args.dry_run:
            print(format_preview(sidecar.preview_edit(records, render or RenderConfig())))
        else:
            edit = sidecar.apply_edit(records, render)
            print_report({"images": len(records), **edit.summary()}, {**problems, **edit.problems}, args.json)
    elif args.cmd == "tags":
        records, problems = sidecar.load_records(list_images(args.folder))
        freqs = curation.tag_frequencies(records)
        for tag, n in freqs[:args.top]:
            print(f"{n:6d}  {tag}")
        if args.chart:
            curation.frequency_chart(freqs, top=min(args.top, 40)).save(args.chart)
            print(f"chart: {args.chart}")
    elif args.cmd == "triggers":
        ws = Workspace.open(args.workspace) if args.workspace else Workspace.open()
        cfg = triggers.TriggerCheckConfig(triggers=args.trigger, known=args.known, model=args.model,
                                          max_tokens=args.max_tokens)
        reports, _ = triggers.run_trigger_check(args.folder, cfg, ws.models)
        print(json.dumps([r.to_dict() for r in reports], indent=1) if args.json
              else triggers.format_trigger_reports(reports))
    elif args.cmd == "undo":
        for result in sidecar.undo_edit(args.backup_dirs, force=args.force):
            print(f"restored {len(result.restored)}, removed {len(result.removed)}, conflicts {len(result.conflicts)}")
            for conflict in result.conflicts:
                print(f"  {conflict}", file=sys.stderr)
    elif args.cmd == "vram":
        print(captioners.describe_vram(args.model, args.batch_size))
    elif args.cmd == "build-tiny-tagger":
        from helpers.captioning.tiny_tagger import build_tiny_tagger

        print(build_tiny_tagger(args.folder))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, ValueError, wd_tagger.TaggerError, captioners.CaptionerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
