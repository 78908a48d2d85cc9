"""Caption files beside images: read them, write them in safe change sets, and convert filenames <-> captions.

Kohya-style datasets keep one caption per image in ``<stem>.txt`` next to it. This module owns:

- ``caption_path`` / ``read_caption``: where an image's caption lives and its text (UTF-8, clear error if not);
- ``preview_changes`` / ``write_captions`` / ``undo_changes``: the change-set writer every bulk caption edit in
  tunebook goes through. Nothing is overwritten unless asked; every replaced file is first copied into a
  timestamped backup folder with a ``changes.json`` manifest, writes are atomic, and a change set can be undone;
- ``caption_from_filename`` / ``captions_from_filenames``: the guide's "filenames are my captions" step done
  properly (numbering suffixes, copies, optional ``_`` -> space);
- ``filename_from_caption`` / ``rename_images_to_captions``: the reverse, for editing captions as filenames in a
  bulk renamer (Windows-illegal characters, reserved names, over-long names and clashes handled; undoable).

CLI: ``python -m helpers.captions from-filenames DIR`` / ``to-filenames DIR`` / ``undo BACKUP_DIR``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from helpers.changes import sha256_file, sha256_text, write_bytes_atomic
from helpers.config import option

BACKUP_DIRNAME = ".tunebook_backups"
MANIFEST_NAME = "changes.json"


class CaptionError(ValueError):
    """A caption file cannot be read or written; the message names the file and what to do."""


# ----------------------------------------------------------------------------------------------- reading


def caption_path(image: str | os.PathLike, ext: str = ".txt") -> Path:
    """The caption file of ``image``: same folder, same stem, extension ``ext`` (kohya's convention)."""
    if not ext.startswith("."):
        ext = "." + ext
    image = Path(image)
    return image.with_name(image.stem + ext)


def read_caption(image: str | os.PathLike, ext: str = ".txt") -> str | None:
    """The caption text of ``image`` (surrounding whitespace stripped), or None when it has no caption file."""
    path = caption_path(image, ext)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise CaptionError(f"{path}: is a folder, not a caption file; rename or remove it") from None
    try:
        text = data.decode("utf-8-sig")  # a BOM from Windows editors is not part of the caption
    except UnicodeDecodeError as exc:
        raise CaptionError(f"{path}: not UTF-8 text (byte {exc.start}); re-save it as UTF-8 "
                           "(e.g. `iconv -f cp1252 -t utf-8`) and try again") from None
    return text.strip()


# ----------------------------------------------------------------------------------------------- change sets


@dataclass
class ChangeRow:
    """One planned caption change, as shown in a preview table."""

    image: Path
    caption_file: Path
    old: str | None
    new: str
    action: str  # "create", "overwrite", "skip (exists)", "unchanged"

    def __iter__(self):  # unpacks as (image, old, new, action)
        return iter((self.image, self.old, self.new, self.action))


@dataclass
class ChangeSet:
    """What a bulk edit did; ``backup_dir`` (with its ``changes.json``) is what ``undo_changes`` needs."""

    created: list[Path] = field(default_factory=list)
    replaced: list[Path] = field(default_factory=list)
    renamed: list[tuple[Path, Path]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    backup_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return len(self.created) + len(self.replaced) + len(self.renamed)

    def summary(self) -> dict[str, object]:
        return {"created": len(self.created), "replaced": len(self.replaced), "renamed": len(self.renamed),
                "skipped": len(self.skipped), "unchanged": len(self.unchanged),
                "backup_dir": str(self.backup_dir) if self.backup_dir else None}


def preview_changes(new: dict[Path, str], *, overwrite: bool = False, ext: str = ".txt") -> list[ChangeRow]:
    """Rows (image, old caption, new caption, action) for ``new`` = {image: caption}, without writing anything.

    Raises ``CaptionError`` naming the file when an existing caption is not UTF-8 (it would not be backed up
    faithfully otherwise, so it must be fixed first).
    """
    rows = []
    for image in sorted(new, key=lambda p: str(p)):
        text = new[image]
        if not isinstance(text, str):
            raise CaptionError(f"{image}: caption must be text, got {type(text).__name__}")
        old = read_caption(image, ext)
        if old is None:
            action = "create"
        elif old == text.strip():
            action = "unchanged"
        elif overwrite:
            action = "overwrite"
        else:
            action = "skip (exists)"
        rows.append(ChangeRow(Path(image), caption_path(image, ext), old, text, action))
    return rows


def format_preview(rows: list[ChangeRow], limit: int = 50, width: int = 60) -> str:
    """A plain-text preview table (for the CLI and notebooks without widgets)."""
    def cut(text: str | None) -> str:
        text = "" if text is None else text.replace("\n", " / ")
        return text if len(text) <= width else text[: width - 1] + "…"

    counts: dict[str, int] = {}
    for row in rows:
        counts[row.action] = counts.get(row.action, 0) + 1
    lines = [f"{'action':<14} {'image':<32} {'old':<{width}}  new"]
    for row in rows[:limit]:
        lines.append(f"{row.action:<14} {cut(row.image.name):<32} {cut(row.old):<{width}}  {cut(row.new)}")
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more")
    lines.append("totals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if counts else "nothing to do")
    return "\n".join(lines)


def _common_root(paths: list[Path]) -> Path:
    folders = [str(p.resolve().parent) for p in paths]
    return Path(os.path.commonpath(folders)) if folders else Path.cwd()


def new_backup_dir(root: Path, label: str) -> Path:
    """A fresh ``<root>/.tunebook_backups/<UTC timestamp>-<label>/`` folder (hidden, so image listings skip it)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    path = root / BACKUP_DIRNAME / f"{stamp}-{label}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def save_manifest(backup_dir: Path, root: Path, entries: list[dict]) -> None:
    """Write ``changes.json`` (entries: created / replaced / renamed, paths relative to ``root``) for undo."""
    manifest = {"format_version": 1, "root": str(root), "entries": entries}
    write_bytes_atomic(backup_dir / MANIFEST_NAME, json.dumps(manifest, indent=1, ensure_ascii=False).encode())


def write_captions(new: dict[Path, str], *, overwrite: bool = False, backup: bool = True,
                   ext: str = ".txt") -> ChangeSet:
    """Write ``new`` = {image: caption} as caption files; returns what changed.

    Existing captions are kept unless ``overwrite``; a replaced file is first copied into a timestamped backup
    folder (``<common folder>/.tunebook_backups/<time>-captions/``) whose ``changes.json`` lets
    ``undo_changes`` restore it, and created files are recorded there too. Each file is written atomically, so
    a crash leaves either the old or the new caption, never half of one.
    """
    rows = preview_changes(new, overwrite=overwrite, ext=ext)
    result = ChangeSet()
    todo = [r for r in rows if r.action in ("create", "overwrite")]
    result.skipped = [r.caption_file for r in rows if r.action == "skip (exists)"]
    result.unchanged = [r.caption_file for r in rows if r.action == "unchanged"]
    if not todo:
        return result
    root = _common_root([r.caption_file for r in todo])
    entries: list[dict] = []
    if backup:
        result.backup_dir = new_backup_dir(root, "captions")
    try:
        for row in todo:
            path = row.caption_file
            rel = os.path.relpath(path.resolve(), root)
            entry = {"path": rel, "new_sha256": sha256_text(row.new)}
            if row.action == "overwrite":
                if result.backup_dir is not None:
                    saved = result.backup_dir / "files" / rel
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, saved)
                    entry.update(action="replaced", backup=os.path.relpath(saved, result.backup_dir))
                else:
                    entry.update(action="replaced", backup=None)
            else:
                entry["action"] = "created"
            write_bytes_atomic(path, row.new.encode("utf-8"))
            (result.replaced if row.action == "overwrite" else result.created).append(path)
            entries.append(entry)
    finally:
        if result.backup_dir is not None:  # the manifest records whatever was done, even after an error
            save_manifest(result.backup_dir, root, entries)
    return result


@dataclass
class UndoResult:
    """What ``undo_changes`` did; ``conflicts`` are files edited since the change set (left as they are)."""

    restored: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    renamed_back: list[tuple[Path, Path]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def undo_changes(changeset_or_backup_dir: ChangeSet | str | os.PathLike, *, force: bool = False) -> UndoResult:
    """Reverse a change set from its backup folder: restore replaced files, remove created ones, rename back.

    A file edited since the change set is left alone and reported in ``conflicts`` unless ``force`` (then the
    current version is kept in the backup folder as ``*.undone`` before restoring), so undo never loses work.
    """
    backup_dir = (changeset_or_backup_dir.backup_dir if isinstance(changeset_or_backup_dir, ChangeSet)
                  else Path(changeset_or_backup_dir))
    if backup_dir is None:
        raise CaptionError("this change set was written with backup=False (or changed nothing): nothing to undo")
    manifest_path = Path(backup_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaptionError(f"{manifest_path}: no change manifest here; pass the backup folder that "
                           "write_captions / rename_images_to_captions reported") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CaptionError(f"{manifest_path}: damaged manifest ({exc}); restore files from {backup_dir}/files "
                           "by hand") from None
    root = Path(manifest["root"])
    out = UndoResult()
    for entry in reversed(manifest.get("entries", [])):
        action = entry.get("action")
        path = root / entry["path"]
        if action == "renamed":
            target = root / entry["to"]
            if not target.exists() or path.exists():
                out.conflicts.append(f"{target} -> {path}: cannot rename back (source missing or name taken)")
                continue
            os.rename(target, path)
            out.renamed_back.append((target, path))
            continue
        current = sha256_file(path)
        edited = current is not None and current != entry.get("new_sha256")
        if edited and not force:
            out.conflicts.append(f"{path}: edited after the change set; left as it is (use force to undo anyway)")
            continue
        if edited:
            keep = Path(backup_dir) / "undone" / entry["path"]
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, keep)
        if action == "created":
            if current is not None:
                path.unlink()
                out.removed.append(path)
        elif action == "replaced":
            saved = entry.get("backup")
            if not saved:
                out.conflicts.append(f"{path}: written without a backup; cannot restore")
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, (Path(backup_dir) / saved).read_bytes())
            out.restored.append(path)
    return out


# ----------------------------------------------------------------------------------------------- filenames -> captions

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


# ----------------------------------------------------------------------------------------------- captions -> filenames

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
    from helpers.dataset import sidecar_files

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
    root = _common_root([p for p, _ in plans])
    result.backup_dir = new_backup_dir(root, "renames")
    entries: list[dict] = []
    try:
        for image, target in plans:
            pairs = [(image, target)]
            for side in sidecar_files(image, ext):  # caption, caption record, metadata JSON move along
                tail = side.name[len(image.name):] if side.name.startswith(image.name) else side.name[len(image.stem):]
                head = target.name if side.name.startswith(image.name) else target.stem
                pairs.append((side, target.with_name(head + tail)))
            for src, dst in pairs:
                if dst.exists():
                    raise CaptionError(f"{dst}: already exists; nothing was overwritten, renamed so far: "
                                       f"{len(entries)} (undo with `python -m helpers.captions undo "
                                       f"{result.backup_dir}`)")
                os.rename(src, dst)
                entries.append({"action": "renamed", "path": os.path.relpath(src.resolve(), root),
                                "to": os.path.relpath(dst.resolve(), root)})
            result.renamed.append((image, target))
    finally:
        save_manifest(result.backup_dir, root, entries)
    return result


# ----------------------------------------------------------------------------------------------- notebook 02


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
        return _check_dataset_name(self.dataset)


@dataclass
class RenameConfig:
    """What notebook 02's captions -> filenames form edits."""

    format_version: ClassVar[int] = 1
    dataset: str = option("demo", help="dataset name in the workspace", label="dataset name")
    spaces_to_underscores: bool = option(False, help="write spaces as '_' in the new names")
    dry_run: bool = option(True, help="only show the planned renames; untick to rename (undo is possible)")
    caption_ext: str = option(".txt", help="caption file extension", group="advanced")

    def check(self) -> dict[str, str]:
        return _check_dataset_name(self.dataset)


def _check_dataset_name(name: str) -> dict[str, str]:
    from helpers.workspace import check_name

    try:
        check_name(name, "dataset name")
    except ValueError as exc:
        return {"dataset": str(exc)}
    return {}


def plan_filename_captions(folder: str | os.PathLike, *, underscores_to_spaces: bool = True,
                           strip_suffixes: bool = True) -> dict[Path, str]:
    """{image: caption from its filename} for a dataset folder; {} with a message when it has no images."""
    from helpers.dataset import list_images

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
    from helpers.dataset import list_images
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
    from helpers.dataset import list_images

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
        print(f"undo with: captions.undo_changes({str(changes.backup_dir)!r})")


# ----------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    from helpers.dataset import list_images

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
    except CaptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
