"""Safe changes to the user's files: atomic writes, content hashes, free names, backups and one undo.

- ``write_bytes_atomic`` / ``write_text_atomic``: temp file in the same folder, fsync, rename — a crash or a
  kill leaves the old file or the new one, never half of either. Every file tunebook writes goes through them.
- ``sha256_bytes`` / ``sha256_text`` / ``sha256_file`` and ``unique_path`` (``x (2).png``).
- ``ChangeLog``: how every bulk edit of a dataset (captions written, images fixed, files rejected or renamed,
  folders laid out) records what it does. Replaced files are first copied into
  ``<root>/.tunebook_backups/<UTC time>-<label>/files/``; the folder's ``changes.json`` manifest lists every
  created / replaced / renamed file and is saved even when the edit stops halfway.
- ``undo_changes(backup_dir)``: the one undo for all of them; a file edited since is left alone (or kept
  beside the backup with ``force``), so undo never loses work.

A leaf module: it imports nothing from tunebook.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 1 << 20
BACKUP_DIRNAME = ".tunebook_backups"
MANIFEST_NAME = "changes.json"
COMPOUND_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".captions.json")


class ChangeError(ValueError):
    """A change set cannot be written or undone; the message names the file and what to do."""


def _file_mode(path: Path) -> int:
    """The mode an existing file has, or the one a plain ``open(..., "w")`` would give a new one."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` via temp file + rename in the same folder: a crash leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; keep the mode a normal write would give
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically (see ``write_bytes_atomic``)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    """sha256 of ``text`` encoded as UTF-8."""
    return sha256_bytes(text.encode("utf-8"))


def sha256_file(path: str | os.PathLike, progress: bool = False) -> str | None:
    """sha256 of a file read in 1 MiB chunks (a progress bar for big files); None when it does not exist."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    digest = hashlib.sha256()
    bar = None
    if progress and size >= (256 << 20):
        from tqdm.auto import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}")
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return digest.hexdigest()


def split_suffix(name: str) -> tuple[str, str]:
    """(stem, suffix) with compound suffixes kept whole: ``a.tar.gz`` -> (``a``, ``.tar.gz``)."""
    lower = name.lower()
    for suffix in COMPOUND_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    path = Path(name)
    return path.stem, path.suffix


def unique_path(path: str | os.PathLike) -> Path:
    """``path`` itself when free, else ``stem (2).ext``, ``stem (3).ext`` ... (a name nothing on disk has)."""
    path = Path(path)
    stem, suffix = split_suffix(path.name)
    candidate, n = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{stem} ({n}){suffix}")
        n += 1
    return candidate


# ----------------------------------------------------------------------------------------------- change sets


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


def common_root(paths: list[Path]) -> Path:
    """The deepest folder holding every path (where a change set's backup folder goes)."""
    folders = [str(Path(p).resolve().parent) for p in paths]
    return Path(os.path.commonpath(folders)) if folders else Path.cwd()


def new_backup_dir(root: Path, label: str) -> Path:
    """A fresh ``<root>/.tunebook_backups/<UTC timestamp>-<label>/`` folder (hidden, so image listings skip it)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    path = Path(root) / BACKUP_DIRNAME / f"{stamp}-{label}"
    path.mkdir(parents=True, exist_ok=False)
    return path


class ChangeLog:
    """Records one bulk edit under ``root``: every file it creates, replaces or renames, for ``undo_changes``.

    Use as a context manager; the manifest is written on exit, also when the edit stops halfway, so what was
    done can always be undone. ``backup=False`` writes without a backup folder (nothing to undo).
    """

    def __init__(self, root: str | os.PathLike, label: str, *, backup: bool = True):
        self.root = Path(root).resolve()
        self.backup_dir = new_backup_dir(self.root, label) if backup else None
        self.entries: list[dict] = []

    def __enter__(self) -> ChangeLog:
        return self

    def __exit__(self, *exc) -> bool:
        self.save()
        return False

    def rel(self, path: Path) -> str:
        return os.path.relpath(Path(path).resolve(), self.root)

    def save(self) -> None:
        if self.backup_dir is not None:
            manifest = {"format_version": 1, "root": str(self.root), "entries": self.entries}
            write_bytes_atomic(self.backup_dir / MANIFEST_NAME,
                               json.dumps(manifest, indent=1, ensure_ascii=False).encode())

    def keep_copy(self, path: Path) -> str | None:
        """Copy ``path`` into the backup folder; returns its place there (None without a backup folder)."""
        if self.backup_dir is None:
            return None
        saved = self.backup_dir / "files" / self.rel(path)
        saved.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, saved)
        return os.path.relpath(saved, self.backup_dir)

    def write(self, path: Path, data: bytes) -> str:
        """Create or replace ``path`` with ``data`` (the old file backed up first); returns the action."""
        path = Path(path)
        action = "replaced" if path.exists() else "created"
        entry = {"action": action, "path": self.rel(path), "new_sha256": sha256_bytes(data)}
        if action == "replaced":
            entry["backup"] = self.keep_copy(path)
        write_bytes_atomic(path, data)
        self.entries.append(entry)
        return action

    def remove(self, path: Path) -> None:
        """Delete ``path`` after backing it up (undo restores it)."""
        entry = {"action": "replaced", "path": self.rel(path), "new_sha256": None, "backup": self.keep_copy(path)}
        Path(path).unlink()
        self.entries.append(entry)

    def rename(self, src: Path, dst: Path) -> None:
        """Move ``src`` to ``dst`` (never over an existing file)."""
        if Path(dst).exists():
            raise ChangeError(f"{dst}: already exists; nothing was overwritten (undo what was done so far with "
                              f"`python -m helpers.captioning undo {self.backup_dir}`)")
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        entry = {"action": "renamed", "path": self.rel(src), "to": self.rel(dst)}
        os.rename(src, dst)
        self.entries.append(entry)


@dataclass
class UndoResult:
    """What ``undo_changes`` did; ``conflicts`` are files edited since the change set (left as they are)."""

    restored: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    renamed_back: list[tuple[Path, Path]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def read_manifest(backup_dir: Path) -> dict:
    path = Path(backup_dir) / MANIFEST_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChangeError(f"{path}: no change manifest here; pass the backup folder the edit reported "
                          f"(they live in {BACKUP_DIRNAME}/ inside the dataset)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ChangeError(f"{path}: damaged manifest ({exc}); restore files from {backup_dir}/files by hand") from None


def undo_changes(changeset_or_backup_dir: ChangeSet | str | os.PathLike, *, force: bool = False) -> UndoResult:
    """Reverse a change set from its backup folder: restore replaced files, remove created ones, rename back.

    A file edited since the change set is left alone and reported in ``conflicts`` unless ``force`` (then the
    current version is kept in the backup folder under ``undone/`` before restoring), so undo never loses work.
    """
    backup_dir = (changeset_or_backup_dir.backup_dir if isinstance(changeset_or_backup_dir, ChangeSet)
                  else Path(changeset_or_backup_dir))
    if backup_dir is None:
        raise ChangeError("this change set was written with backup=False (or changed nothing): nothing to undo")
    manifest = read_manifest(Path(backup_dir))
    root = Path(manifest["root"])
    out = UndoResult()
    for entry in reversed(manifest.get("entries", [])):
        path = root / entry["path"]
        if entry.get("action") == "renamed":
            _rename_back(root / entry["to"], path, out)
        else:
            _restore(entry, path, Path(backup_dir), force, out)
    return out


def _rename_back(current: Path, original: Path, out: UndoResult) -> None:
    if not current.exists() or original.exists():
        out.conflicts.append(f"{current} -> {original}: cannot rename back (source missing or name taken)")
        return
    original.parent.mkdir(parents=True, exist_ok=True)
    os.rename(current, original)
    out.renamed_back.append((current, original))


def _restore(entry: dict, path: Path, backup_dir: Path, force: bool, out: UndoResult) -> None:
    current = sha256_file(path)
    edited = current is not None and current != entry.get("new_sha256")
    if edited and not force:
        out.conflicts.append(f"{path}: edited after the change set; left as it is (use force to undo anyway)")
        return
    if edited:
        keep = backup_dir / "undone" / entry["path"]
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, keep)
    if entry.get("action") == "created":
        if current is not None:
            path.unlink()
            out.removed.append(path)
    elif entry.get("action") == "replaced":
        saved = entry.get("backup")
        if not saved:
            out.conflicts.append(f"{path}: written without a backup; cannot restore")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, (backup_dir / saved).read_bytes())
        out.restored.append(path)
