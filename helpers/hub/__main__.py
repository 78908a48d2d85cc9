"""Command line: results off the machine.

    python -m helpers.hub upload RUN --repo NAME [--include final,loras,config,log,samples] [--public]
    python -m helpers.hub upload FILE_OR_FOLDER ... --repo NAME      # any files of the workspace
    python -m helpers.hub pack RUN [--include ...] [--out FILE.zip]  # one archive to download, size + sha256
    python -m helpers.hub remind                                      # what is not off this machine yet

``upload`` is private unless ``--public``, and resumable: run the same command again after a failure. The token is
the one 00_setup stored (or ``HF_TOKEN``); it is never printed. ``--stop-instance-when-done`` stops this rented
machine (vastai / runpodctl) after a successful upload — off by default. Exit status 0 done, 2 could not (the
message says why and what to do).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def files_of(paths: list[str]) -> dict[str, Path]:
    """{path in the repo: file} for files and folders given on the command line (a folder keeps its name)."""
    files: dict[str, Path] = {}
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            files |= {f"{path.name}/{p.relative_to(path).as_posix()}": p for p in sorted(path.rglob("*")) if p.is_file()}
        else:
            files[path.name] = path
    return files


def main(argv: list[str] | None = None) -> int:
    from helpers import results
    from helpers.hub.upload import HubUploadError, upload_files
    from helpers.workspace import Workspace

    parser = argparse.ArgumentParser(prog="python -m helpers.hub", description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", help="workspace root (default: TUNEBOOK_WORKSPACE or the platform default)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("upload", help="upload a run's results (or files) to a Hub repo, private by default")
    up.add_argument("what", nargs="+", help="a run name, or files/folders")
    up.add_argument("--repo", required=True, help="owner/name, or name (under your user)")
    up.add_argument("--include", default=",".join(results.DEFAULT_KINDS),
                    help=f"for a run: which of {', '.join(results.KINDS)} (default: %(default)s)")
    up.add_argument("--public", action="store_true", help="make a new repo public (default: private)")
    up.add_argument("--endpoint", help="another Hub endpoint (default: huggingface.co)")
    up.add_argument("--stop-instance-when-done", action="store_true", help="stop this rented machine after a "
                    "successful upload (off by default)")
    pack = sub.add_parser("pack", help="pack a run's results into one zip (with size and sha256) to download")
    pack.add_argument("run")
    pack.add_argument("--include", default=",".join(results.DEFAULT_KINDS))
    pack.add_argument("--out", help="the zip (default: exports/<run>-results.zip)")
    sub.add_parser("remind", help="what has not left this machine yet")
    args = parser.parse_args(argv)
    ws = Workspace.open(args.workspace)
    try:
        if args.cmd == "remind":
            results.remind(ws)
            return 0
        if args.cmd == "pack":
            packed = results.pack_run(ws, ws.run(args.run), args.include.split(","), args.out)
            print(f"{packed['path']}: {packed['bytes'] / 1e9:.2f} GB, {packed['files']} files, sha256 "
                  f"{packed['sha256']}")
            return 0
        run = ws.runs / args.what[0]
        if len(args.what) == 1 and run.is_dir():
            done = results.upload_run(ws, ws.run(args.what[0]), args.repo, args.include.split(","),
                                      private=not args.public, endpoint=args.endpoint)
        else:
            done = upload_files(files_of(args.what), args.repo, private=not args.public, endpoint=args.endpoint)
    except (HubUploadError, results.ResultsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(done.summary())
    if args.stop_instance_when_done:
        from helpers.instance import stop_instance

        stop_instance("upload finished")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
