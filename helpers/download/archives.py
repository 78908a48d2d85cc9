"""Unpacking archives and copying folders into a dataset safely: no path escapes, no links, size limits enforced
while writing (zip bombs), nothing overwritten, damaged archives reported with nothing half-unpacked."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from helpers.changes import sha256_file
from helpers.dataset.files import list_dataset_files, parse_repeat_folder
from helpers.download.sources import DownloadError
from helpers.download.transfer import CHUNK, check_free_space

JUNK_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}


class UnsafeArchiveError(DownloadError):
    """An archive tries to write outside its folder, or is larger than allowed."""


@dataclass
class ExtractResult:
    """What ``extract_archive`` wrote (paths inside the target) and what it left out on purpose."""

    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    reused: list[Path] = field(default_factory=list)
    total_bytes: int = 0


def safe_member_path(name: str) -> Path | None:
    """The relative path an archive entry may use, or None for junk (``__MACOSX``, ``.DS_Store``).

    Raises ``UnsafeArchiveError`` for absolute paths, drive letters and ``..`` components.
    """
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise UnsafeArchiveError(f"archive entry {name!r} has an absolute path; refusing the archive")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"archive entry {name!r} points outside the folder ('..'); refusing the archive")
    if not parts or any(p in JUNK_NAMES for p in parts) or parts[-1].startswith("._"):
        return None
    return Path(*parts)


def _members(archive: Path):
    """(relative name, kind, declared size, opener) for each entry; kind is file, dir, link or other."""
    name = archive.name.lower()
    if name.endswith(".zip") or zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)
        entries = []
        for info in zf.infolist():
            mode = info.external_attr >> 16
            if info.flag_bits & 0x1:
                raise DownloadError(f"{archive}: entry {info.filename!r} is encrypted; unpack it yourself with the "
                                    "password and use the folder")
            if stat.S_ISLNK(mode):
                kind = "link"
            elif info.is_dir():
                kind = "dir"
            else:
                kind = "file"
            entries.append((info.filename, kind, info.file_size, lambda i=info: zf.open(i)))
        return zf, entries
    try:
        tf = tarfile.open(archive, "r:*")
    except tarfile.TarError as exc:
        raise DownloadError(f"{archive}: not a zip or tar archive ({exc}); .7z/.rar are not supported: unpack "
                            "them with 7z and use the folder") from None
    entries = []
    for member in tf:
        if member.issym() or member.islnk():
            kind = "link"
        elif member.isdir():
            kind = "dir"
        elif member.isfile():
            kind = "file"
        else:
            kind = "other"
        entries.append((member.name, kind, member.size, lambda m=member: tf.extractfile(m)))
    return tf, entries


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, *, max_total_bytes: int = 200 << 30,
                    max_files: int = 200_000, strip_single_root: bool = True, progress: bool = True) -> ExtractResult:
    """Unpack a zip/tar archive into ``dest`` safely; returns what was written.

    Every entry is checked before anything is written: ``..``, absolute paths and drive letters refuse the
    whole archive; links and special files are skipped (never created); more than ``max_files`` entries or a
    declared size over ``max_total_bytes`` (or the free disk) refuses it. Sizes are counted again while
    writing, so a zip bomb that lies in its headers stops at the limit. A single top-level folder is dropped
    (``photos/a.jpg`` -> ``dest/a.jpg``) unless it is a kohya ``N_name`` folder. Files already in ``dest`` with
    the same bytes are reused; different ones are never overwritten (``DownloadError`` before writing).
    """
    archive, dest = Path(archive), Path(dest)
    handle, entries = _members(archive)
    with handle:
        result = ExtractResult()
        plan = _plan_members(archive, entries, result, max_files, max_total_bytes, strip_single_root)
        declared = sum(size for _, size, _ in plan)
        dest.mkdir(parents=True, exist_ok=True)
        check_free_space(dest, declared, f"unpacking {archive.name}")
        staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=dest))
        try:
            result.total_bytes = _unpack(archive, plan, staging, declared, max_total_bytes, progress)
            _place(archive, [rel for rel, _, _ in plan], staging, dest, result)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return result


def _plan_members(archive: Path, entries, result: ExtractResult, max_files: int, max_total_bytes: int,
                  strip_single_root: bool) -> list[tuple[Path, int, object]]:
    """(relative path, declared size, opener) of every file to unpack; refuses unsafe or oversized archives."""
    if len(entries) > max_files:
        raise UnsafeArchiveError(f"{archive}: {len(entries)} entries, more than the limit of {max_files}")
    plan: list[tuple[Path, int, object]] = []
    for name, kind, size, opener in entries:
        rel = safe_member_path(name)
        if rel is None:
            continue
        if kind in ("link", "other"):
            result.skipped.append(f"{name} ({'link' if kind == 'link' else 'device or fifo'}: not created)")
        elif kind == "file":
            plan.append((rel, size, opener))
    declared = sum(size for _, size, _ in plan)
    if declared > max_total_bytes:
        raise UnsafeArchiveError(f"{archive}: unpacks to {declared / 1e9:.1f} GB, over the limit of "
                                 f"{max_total_bytes / 1e9:.1f} GB; raise max_total_bytes if you trust it")
    roots = {rel.parts[0] for rel, _, _ in plan}
    if strip_single_root and len(roots) == 1 and all(len(rel.parts) > 1 for rel, _, _ in plan):
        (root,) = roots
        if parse_repeat_folder(root) is None:
            plan = [(Path(*rel.parts[1:]), size, opener) for rel, size, opener in plan]
    seen: set[str] = set()
    for rel, _, _ in plan:
        if str(rel).lower() in seen:
            raise DownloadError(f"{archive}: two entries unpack to {rel} (names differing only in case, or "
                                "repeated); unpack it by hand and choose")
        seen.add(str(rel).lower())
    return plan


def _unpack(archive: Path, plan, staging: Path, declared: int, max_total_bytes: int, progress: bool) -> int:
    """Write every planned file into ``staging``, counting bytes as they come (zip bombs); returns the total."""
    from tqdm.auto import tqdm

    written = 0
    with tqdm(total=declared, unit="B", unit_scale=True, desc=f"unpacking {archive.name}",
              disable=not progress) as bar:
        for rel, _, opener in plan:
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                with opener() as src, open(out, "wb") as fh:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > max_total_bytes:
                            raise UnsafeArchiveError(
                                f"{archive}: unpacks to more than {max_total_bytes / 1e9:.1f} GB although its "
                                "headers say less (a zip bomb?); refusing it, nothing was kept")
                        fh.write(chunk)
                        bar.update(len(chunk))
            except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
                raise DownloadError(f"{archive}: damaged archive at {rel} ({exc}); download it again. "
                                    "Nothing was unpacked") from None
    return written


def _place(archive: Path, rels: list[Path], staging: Path, dest: Path, result: ExtractResult) -> None:
    """Move the unpacked files into ``dest``; identical files already there are reused, different ones refuse all."""
    conflicts = [str(rel) for rel in rels if (dest / rel).exists()
                 and (not (dest / rel).is_file() or not same_file(dest / rel, staging / rel))]
    if conflicts:
        raise DownloadError(f"{dest}: {len(conflicts)} files from {archive.name} would replace different "
                            f"files already there (first: {conflicts[0]}); unpack into a new folder or move "
                            "those files away first. Nothing was changed")
    for rel in rels:
        target = dest / rel
        if target.exists():
            result.reused.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, target)
        result.files.append(target)


def same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return sha256_file(a) == sha256_file(b)


def copy_folder(src: Path, dest: Path, *, progress: bool = True) -> ExtractResult:
    """Copy a folder's files (hidden ones and ``_rejected/`` skipped) into ``dest``, never overwriting."""
    from tqdm.auto import tqdm

    src, dest = src.resolve(), Path(dest)
    if dest.resolve() == src:
        return ExtractResult(reused=list_dataset_files(src))
    files = list_dataset_files(src)
    total = sum(p.stat().st_size for p in files)
    check_free_space(dest, total, f"copying {src}")
    result = ExtractResult(total_bytes=total)
    conflicts = [p for p in files if (dest / p.relative_to(src)).exists()
                 and not same_file(dest / p.relative_to(src), p)]
    if conflicts:
        raise DownloadError(f"{dest}: {len(conflicts)} files would replace different ones (first: "
                            f"{conflicts[0].relative_to(src)}); copy into a new dataset name. Nothing was changed")
    for p in tqdm(files, desc=f"copying {src.name}", unit="file", disable=not progress):
        target = dest / p.relative_to(src)
        if target.exists():
            result.reused.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copy2(p, tmp)
        os.replace(tmp, target)
        result.files.append(target)
    return result

