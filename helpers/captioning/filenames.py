"""The guide's "filenames are my captions" step, done properly, and its reverse — notebook 02.

- ``caption_from_filename`` / ``captions_from_filenames``: extension and numbering suffixes (``_01``, `` (2)``,
  ``-3``, `` copy``) removed, optional ``_`` -> space; written with ``write_captions`` (backed up, undoable);
- ``filename_from_caption`` / ``rename_images_to_captions``: captions as filenames for editing in a bulk
  renamer (Windows-illegal characters, reserved names, over-long names and clashes handled; undoable);
- notebook 02's configs and display helpers.

Caption files themselves (paths, reading, the change-set writer) belong to ``helpers.dataset.caption_files``;
undo to ``helpers.changes``.

CLI: ``python -m helpers.captioning.filenames from-filenames DIR`` / ``to-filenames DIR`` / ``undo BACKUP_DIR``
(also ``python -m helpers.captions ...``, kept for older command lines).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from helpers.changes import ChangeError, ChangeLog, ChangeSet, common_root, undo_changes
from helpers.config import option
from helpers.dataset.caption_files import (
    CaptionError,
    ChangeRow,
    caption_path,
    format_preview,
    preview_changes,
    read_caption,
    write_captions,
)
from helpers.dataset.files import list_images, sidecar_files
from helpers.workspace import name_problem

__all__ = ["preview_changes", "write_captions"]  # re-exported: notebook 02 previews and writes through this module

# Numbering a downloader, the OS or the user added: "_01", " (2)", "-3", " copy", " - Copy (2)", "_copy2".
_SUFFIX_PATTERNS = [
    re.compile(r"(?:\s*-\s*|\s+|_)copy(?:\s*\(\d+\)|\s*\d+)?$", re.IGNORECASE),
    re.compile(r"\s*\(\d+\)$"),
    re.compile(r"\s*\[\d+\]$"),
    re.compile(r"(?:[_.]|\s*-\s*)\d+$"),  # not " 2": "age 30" is a caption, "cat_30" is numbering
]


def strip_numbering(stem: str) -> str:
    """``stem`` without trailing numbering/copy suffixes (repeatedly: "cat_01 (2) copy" -> "cat").

    A name that is only a number is kept as it is (there is nothing else to caption with).
    """
    text = stem.strip()
    changed = True
    while changed:
        changed = False
        for pattern in _SUFFIX_PATTERNS:
            cut = pattern.sub("", text).rstrip()
            if cut != text and cut:
                text, changed = cut, True
    return text


def caption_from_filename(image: str | os.PathLike, *, underscores_to_spaces: bool = True,
                          strip_suffixes: bool = True) -> str:
    """The caption a filename encodes: extension and numbering suffixes removed, optional ``_`` -> space.

    Case and punctuation are kept (the guide writes captions like "xxcc outfit, standing, helmet").
    """
    stem = unicodedata.normalize("NFC", Path(image).stem)  # macOS stores decomposed accents
    text = strip_numbering(stem) if strip_suffixes else stem.strip()
    if underscores_to_spaces:
        text = text.replace("_", " ")
    return re.sub(r"\s+", " ", text).strip()


def captions_from_filenames(images: list[Path], *, underscores_to_spaces: bool = True,
                            strip_suffixes: bool = True) -> dict[Path, str]:
    """{image: caption from its filename} for every image (feed to ``preview_changes`` / ``write_captions``)."""
    return {Path(p): caption_from_filename(p, underscores_to_spaces=underscores_to_spaces,
                                           strip_suffixes=strip_suffixes) for p in images}


_WINDOWS_ILLEGAL = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}


MAX_NAME_BYTES = 255  # ext4/NTFS limit on one path component


def _legal_name_text(caption: str, spaces_to_underscores: bool) -> str:
    text = _WINDOWS_ILLEGAL.sub("_", " ".join(caption.split()))
    return text.replace(" ", "_") if spaces_to_underscores else text


def _name_budget(suffix: str, max_bytes: int) -> int:
    return max_bytes - len(suffix.encode("utf-8")) - 4  # room for a "_999" clash number


def caption_fits_filename(caption: str, suffix: str, max_bytes: int = MAX_NAME_BYTES) -> bool:
    """Whether the whole caption fits in a filename (a longer one is cut, and only its .txt keeps all of it)."""
    return len(_legal_name_text(caption, False).encode("utf-8")) <= _name_budget(suffix, max_bytes)


def filename_from_caption(caption: str, suffix: str, *, spaces_to_underscores: bool = False,
                          max_bytes: int = MAX_NAME_BYTES) -> str:
    """A filename (stem + ``suffix``) that holds ``caption`` and is legal on Windows, macOS and Linux.

    Illegal characters become ``_``, line breaks a space; trailing dots/spaces (Windows drops them) and reserved
    device names (``CON``, ``NUL``...) are avoided; the result is cut at a UTF-8 character boundary so it fits
    ``max_bytes`` together with ``suffix`` and room for a ``_NN`` clash number.
    """
    text = _legal_name_text(caption, spaces_to_underscores)
    budget = _name_budget(suffix, max_bytes)
    data = text.encode("utf-8")
    if len(data) > budget:
        text = data[:budget].decode("utf-8", errors="ignore")
    text = text.rstrip(" .")
    if not text:
        text = "untitled"
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text = "_" + text
    return text + suffix


def plan_renames(captions: dict[Path, str], *, spaces_to_underscores: bool = False,
                 ext: str = ".txt") -> list[tuple[Path, Path]]:
    """[(image, new image path)] giving each image its caption as name; clashes get ``_01``, ``_02``...

    Images whose name already says their caption are left out. The caption file moves with its image.
    """
    def key(path: Path) -> str:  # case-insensitive: Windows and macOS filesystems are
        return str(path).lower()

    taken: set[str] = set()
    moving = set()
    plans = []
    for image in sorted(captions, key=lambda p: str(p)):
        image = Path(image)
        want = filename_from_caption(captions[image], image.suffix.lower(),
                                     spaces_to_underscores=spaces_to_underscores)
        stem = Path(want).stem
        if caption_from_filename(image, underscores_to_spaces=spaces_to_underscores) == \
                caption_from_filename(want, underscores_to_spaces=spaces_to_underscores) and key(image) not in taken:
            taken.add(key(image))
            continue
        plans.append((image, stem))
        moving.add(image)
    # Names of files that stay where they are must not be taken by a renamed one.
    for image in captions:
        if Path(image) not in moving:
            taken.add(key(Path(image)))
    out = []
    for image, stem in plans:
        folder, suffix = image.parent, image.suffix.lower()
        number, target = 0, folder / (stem + suffix)
        while (key(target) in taken or (target.exists() and target != image)
               or (caption_path(target, ext).exists() and caption_path(target, ext) != caption_path(image, ext))):
            number += 1
            target = folder / f"{stem}_{number:02d}{suffix}"
        taken.add(key(target))
        out.append((image, target))
    return out


def rename_images_to_captions(captions: dict[Path, str], *, spaces_to_underscores: bool = False,
                              ext: str = ".txt", dry_run: bool = False) -> ChangeSet:
    """Rename every image (and its caption file) to its caption; recorded in a backup folder for undo."""
    plans = plan_renames(captions, spaces_to_underscores=spaces_to_underscores, ext=ext)
    result = ChangeSet()
    cut = [image for image, _ in plans if not caption_fits_filename(captions[image], image.suffix)]
    if cut:
        result.notes.append(f"{len(cut)} captions are too long for a filename (255 bytes) and were shortened in "
                            "the name; their .txt files keep the full text, so do not overwrite those captions "
                            "from filenames")
    if dry_run or not plans:
        result.renamed = plans
        return result
    with ChangeLog(common_root([p for p, _ in plans]), "renames") as log:
        result.backup_dir = log.backup_dir
        for image, target in plans:
            pairs = [(image, target)]
            for side in sidecar_files(image, ext):  # caption, caption record, metadata JSON move along
                tail = side.name[len(image.name):] if side.name.startswith(image.name) else side.name[len(image.stem):]
                head = target.name if side.name.startswith(image.name) else target.stem
                pairs.append((side, target.with_name(head + tail)))
            for src, dst in pairs:
                log.rename(src, dst)
            result.renamed.append((image, target))
    return result


@dataclass
class FilenameCaptionConfig:
    """What notebook 02's filenames -> captions form edits."""

    format_version: ClassVar[int] = 1
    dataset: str = option("demo", help="dataset name in the workspace", label="dataset name")
    underscores_to_spaces: bool = option(True, help="turn '_' into spaces ('red_fox' -> 'red fox')")
    strip_numbering: bool = option(True, help="remove numbering a downloader or file manager added: '_01', "
                                              "' (2)', '-3', ' copy'")
    overwrite: bool = option(False, help="replace existing captions (each is backed up first; undo is possible)")
    caption_ext: str = option(".txt", help="caption file extension kohya reads (--caption_extension)",
                              group="advanced")

    def check(self) -> dict[str, str]:
        return name_problem(self.dataset, "dataset", "dataset name")


@dataclass
class RenameConfig:
    """What notebook 02's captions -> filenames form edits."""

    format_version: ClassVar[int] = 1
    dataset: str = option("demo", help="dataset name in the workspace", label="dataset name")
    spaces_to_underscores: bool = option(False, help="write spaces as '_' in the new names")
    dry_run: bool = option(True, help="only show the planned renames; untick to rename (undo is possible)")
    caption_ext: str = option(".txt", help="caption file extension", group="advanced")

    def check(self) -> dict[str, str]:
        return name_problem(self.dataset, "dataset", "dataset name")


def plan_filename_captions(folder: str | os.PathLike, *, underscores_to_spaces: bool = True,
                           strip_suffixes: bool = True) -> dict[Path, str]:
    """{image: caption from its filename} for a dataset folder; {} with a message when it has no images."""
    folder = Path(folder)
    images = list_images(folder) if folder.is_dir() else []
    if not images:
        print(f"no images in {folder}: download a dataset in 01_download first")
        return {}
    return captions_from_filenames(images, underscores_to_spaces=underscores_to_spaces,
                                   strip_suffixes=strip_suffixes)


def shared_captions(new: dict[Path, str]) -> dict[str, list[Path]]:
    """Captions that several images would get (identical names once numbering is stripped), most shared first."""
    groups: dict[str, list[Path]] = {}
    for image, text in new.items():
        groups.setdefault(text, []).append(image)
    return dict(sorted(((t, sorted(g)) for t, g in groups.items() if len(g) > 1), key=lambda kv: -len(kv[1])))


def show_shared(new: dict[Path, str], limit: int = 20) -> None:
    """Print the captions several images would share: fine for one concept, a hint to add detail otherwise."""
    groups = shared_captions(new)
    if not new:
        return
    if not groups:
        print(f"{len(new)} images, every caption different")
        return
    print(f"{len(new)} images, {len(set(new.values()))} different captions; shared by several images "
          "(the guide captions what differs between them):")
    for text, images in list(groups.items())[:limit]:
        print(f"  x{len(images)}  {text}")


def show_preview(rows: list[ChangeRow], limit: int = 200) -> None:
    """The preview as an HTML table in a notebook (plain text elsewhere), with totals per action."""
    try:
        from IPython.display import HTML, display
    except ImportError:
        print(format_preview(rows, limit))
        return
    import html

    if not rows:
        print("nothing to preview")
        return
    colours = {"create": "#e6f4ea", "overwrite": "#fdecea", "skip (exists)": "#fff8e1", "unchanged": "#f1f3f4"}
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.action] = counts.get(row.action, 0) + 1
    lines = ["<table><tr><th>action</th><th>image</th><th>current caption</th><th>new caption</th></tr>"]
    for row in rows[:limit]:
        lines.append(f"<tr style='background:{colours.get(row.action, '#fff')}'><td>{row.action}</td>"
                     f"<td>{html.escape(row.image.name)}</td><td>{html.escape(row.old or '')}</td>"
                     f"<td>{html.escape(row.new)}</td></tr>")
    lines.append("</table>")
    more = f" (first {limit} of {len(rows)} shown)" if len(rows) > limit else ""
    totals = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    display(HTML(f"<p><b>{totals}</b>{more}</p>" + "".join(lines)))


def caption_sheet(folder: str | os.PathLike, ext: str = ".txt", limit: int = 36, columns: int = 6):
    """A contact sheet of images with their captions (None when there are no images)."""
    from helpers.ui.gallery import thumbnail_grid

    folder = Path(folder)
    images = list_images(folder)[:limit] if folder.is_dir() else []
    if not images:
        print(f"no images in {folder}")
        return None
    items = []
    for image in images:
        try:
            text = read_caption(image, ext)
        except CaptionError as exc:
            text = f"unreadable caption: {exc}"
        items.append((image, text if text is not None else "(no caption)"))
    return thumbnail_grid(items, columns=columns)


def plan_renames_for(folder: str | os.PathLike, *, spaces_to_underscores: bool = False,
                     ext: str = ".txt") -> dict[Path, str]:
    """{image: caption} for every captioned image in ``folder`` (the input of ``rename_images_to_captions``)."""
    folder = Path(folder)
    images = list_images(folder) if folder.is_dir() else []
    out = {}
    for image in images:
        text = read_caption(image, ext)
        if text:
            out[image] = text
    if not out:
        print(f"no captioned images in {folder}: nothing to rename")
    return out


def show_renames(changes: ChangeSet, dry_run: bool, limit: int = 100) -> None:
    """Print the renames planned (dry run) or done, and how to undo them."""
    if not changes.renamed:
        print("no renames needed: every name already says its caption")
        return
    verb = "would rename" if dry_run else "renamed"
    print(f"{verb} {len(changes.renamed)} images:")
    for src, dst in changes.renamed[:limit]:
        print(f"  {src.name}  ->  {dst.name}")
    if len(changes.renamed) > limit:
        print(f"  ... and {len(changes.renamed) - limit} more")
    for note in changes.notes:
        print("note:", note)
    if changes.backup_dir:
        print(f"undo with: python -m helpers.captioning undo {changes.backup_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.captions", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_from = sub.add_parser("from-filenames", help="write <stem>.txt captions from image filenames")
    p_from.add_argument("folder", type=Path)
    p_from.add_argument("--keep-underscores", action="store_true", help="do not turn '_' into spaces")
    p_from.add_argument("--keep-numbering", action="store_true", help="keep '_01', ' (2)', ' copy' suffixes")
    p_from.add_argument("--overwrite", action="store_true", help="replace existing captions (backed up first)")
    p_from.add_argument("--dry-run", action="store_true", help="only show the preview table")
    p_from.add_argument("--ext", default=".txt", help="caption extension (default .txt)")
    p_to = sub.add_parser("to-filenames", help="rename images (and their captions) to their caption text")
    p_to.add_argument("folder", type=Path)
    p_to.add_argument("--underscores", action="store_true", help="write spaces as '_' in the new names")
    p_to.add_argument("--dry-run", action="store_true", help="only show the planned renames")
    p_to.add_argument("--ext", default=".txt")
    p_undo = sub.add_parser("undo", help="undo a change set from its backup folder")
    p_undo.add_argument("backup_dir", type=Path)
    p_undo.add_argument("--force", action="store_true", help="undo files edited since (current kept in backup)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "undo":
            res = undo_changes(args.backup_dir, force=args.force)
            print(f"restored {len(res.restored)}, removed {len(res.removed)}, renamed back {len(res.renamed_back)}")
            for line in res.conflicts:
                print("conflict:", line, file=sys.stderr)
            return 1 if res.conflicts else 0
        if not args.folder.is_dir():
            parser.error(f"{args.folder}: not a folder")
        images = list_images(args.folder)
        if not images:
            print(f"no images in {args.folder}", file=sys.stderr)
            return 1
        if args.cmd == "from-filenames":
            new = captions_from_filenames(images, underscores_to_spaces=not args.keep_underscores,
                                          strip_suffixes=not args.keep_numbering)
            print(format_preview(preview_changes(new, overwrite=args.overwrite, ext=args.ext)))
            if args.dry_run:
                return 0
            res = write_captions(new, overwrite=args.overwrite, ext=args.ext)
            print(json.dumps(res.summary()))
            return 0
        captions = {}
        missing = []
        for image in images:
            text = read_caption(image, args.ext)
            if text:
                captions[image] = text
            else:
                missing.append(image)
        res = rename_images_to_captions(captions, spaces_to_underscores=args.underscores, ext=args.ext,
                                        dry_run=args.dry_run)
        for src, dst in res.renamed:
            print(f"{src.name}  ->  {dst.name}")
        if missing:
            print(f"{len(missing)} images have no caption and keep their names", file=sys.stderr)
        print(json.dumps(res.summary()))
        return 0
    except ChangeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
