"""Command line: ``python -m helpers.download SOURCE --to DIR`` (a dataset) or ``--model NAME`` (a base model into
the workspace). Exit 0 done, 2 bad input or a failed download (the message says what to do)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from helpers.download.datasets import download_dataset
from helpers.download.model_store import download_model
from helpers.download.sources import DownloadError
from helpers.workspace import Workspace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.download", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="Hub id (owner/name), URL, gallery page, or local folder/archive/file")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", type=Path, help="dataset folder to download into")
    where.add_argument("--model", metavar="NAME", help="store as a base model in the workspace's models/NAME/")
    parser.add_argument("--repo-type", choices=["dataset", "model"], help="Hub repo type (default: dataset for "
                        "--to, model for --model)")
    parser.add_argument("--revision", help="Hub branch, tag or commit")
    parser.add_argument("--include", action="append", help="glob of Hub files to fetch (repeatable)")
    parser.add_argument("--exclude", action="append", help="glob of Hub files to skip (repeatable)")
    parser.add_argument("--sha256", help="expected sha256 of the downloaded file")
    parser.add_argument("--cookies", help="cookies.txt for gallery-dl")
    parser.add_argument("--username", help="gallery-dl username (password from GALLERY_DL_PASSWORD)")
    parser.add_argument("--limit", type=int, help="gallery-dl: at most this many files")
    parser.add_argument("--allow-pickle", action="store_true", help="accept .ckpt/.pt/.bin base models")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        if args.model:
            ws = Workspace.open()
            record = download_model(args.source, ws.models, args.model, revision=args.revision, sha256=args.sha256,
                                    allow_pickle=args.allow_pickle, include=args.include, exclude=args.exclude,
                                    cache_dir=ws.hf_cache, progress=not args.quiet)
            print(json.dumps(record, indent=1))
            return 0
        res = download_dataset(args.source, args.to, repo_type=args.repo_type, revision=args.revision,
                               include=args.include, exclude=args.exclude, sha256=args.sha256, cookies=args.cookies,
                               username=args.username, password=os.environ.get("GALLERY_DL_PASSWORD"),
                               limit=args.limit, progress=not args.quiet)
        print(f"{res.kind} -> {res.folder}: {res.new_files} new files, {res.reused_files} already there")
        for note in res.notes:
            print("note:", note)
        print(f"next: python -m helpers.dataset check {res.folder}")
        return 0
    except (DownloadError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2



if __name__ == "__main__":
    raise SystemExit(main())
