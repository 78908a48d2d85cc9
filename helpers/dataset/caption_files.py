"""Caption files beside images: where they are, what training reads from them, and writing them as a change set.

- ``caption_path`` / ``read_caption``: an image's caption file and its whole text (for editing);
- ``training_caption``: what training reads from it (the first line, as kohya does) — the trainer and the
  dataset check both call this, so they agree;
- ``preview_changes`` / ``write_captions``: the writer every bulk caption edit goes through (nothing
  overwritten unless asked, replaced files backed up, atomic, undoable with ``helpers.changes.undo_changes``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from helpers.changes import ChangeError, ChangeLog, ChangeSet, common_root


class CaptionError(ChangeError):
    """A caption file cannot be read or written; the message names the file and what to do."""


def caption_path(image: str | os.PathLike, ext: str = ".txt") -> Path:
    """The caption file of ``image``: same folder, same stem, extension ``ext`` (kohya's convention)."""
    if not ext.startswith("."):
        ext = "." + ext
    image = Path(image)
    return image.with_name(image.stem + ext)


def read_caption(image: str | os.PathLike, ext: str = ".txt") -> str | None:
    """The whole caption text of ``image`` (surrounding whitespace stripped), or None without a caption file."""
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


def training_caption(image: Path, ext: str = ".txt", fallback: str = "") -> tuple[str, str]:
    """(caption training uses, problem): the file's first line (kohya ``read_caption``), ``fallback`` (the
    folder's class tokens) when there is no file. ``problem`` is "", "missing", "empty" or "multiline" (the
    lines after the first are not trained). Raises ``CaptionError`` for a file that is not UTF-8."""
    text = read_caption(image, ext)
    if text is None:
        return fallback, "missing"
    lines = [line.strip() for line in text.splitlines()]
    first = lines[0] if lines else ""
    if not first:
        return "", "empty"
    return first, "multiline" if any(lines[1:]) else ""


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
    with ChangeLog(common_root([r.caption_file for r in todo]), "captions", backup=backup) as log:
        result.backup_dir = log.backup_dir
        for row in todo:
            action = log.write(row.caption_file, row.new.encode("utf-8"))
            (result.replaced if action == "replaced" else result.created).append(row.caption_file)
    return result
