"""Safe changes to the user's files: atomic writes, content hashes and free names.

Every file tunebook writes goes through ``write_bytes_atomic`` / ``write_text_atomic`` (temp file in the same
folder, fsync, rename), so a crash or a kill leaves the old file or the new one, never half of either. The
backup / manifest / undo machinery that bulk edits use sits on top of these (see ``backup_files`` and
``undo_changes`` below once a stage needs them). This is a leaf module: it imports nothing from tunebook.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

CHUNK = 1 << 20


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


def unique_path(path: str | os.PathLike, taken: set[Path] | None = None) -> Path:
    """``path`` itself when free, else ``stem (2).ext``, ``stem (3).ext`` ... (free on disk and not in ``taken``)."""
    path = Path(path)
    taken = taken or set()
    candidate, n = path, 2
    while candidate.exists() or candidate in taken:
        candidate = path.with_name(f"{path.stem} ({n}){path.suffix}")
        n += 1
    return candidate
