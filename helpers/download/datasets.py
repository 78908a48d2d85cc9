"""``download_dataset``: a dataset from any SOURCE (Hub, URL of an archive or image, gallery page, folder, archive)
into a dataset folder; re-running reuses what is there and never overwrites different files."""

from __future__ import annotations

import os
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from helpers.changes import sha256_file, unique_path
from helpers.download.archives import copy_folder, extract_archive, same_file
from helpers.download.gallery import download_gallery
from helpers.download.hub_files import download_from_hub
from helpers.download.sources import DownloadError, auth_headers, detect_source, is_archive_name
from helpers.download.transfer import download_url


@dataclass
class DatasetDownload:
    """What ``download_dataset`` did: where the data went, how many files are new, and notes to show."""

    folder: Path
    kind: str
    new_files: int = 0
    reused_files: int = 0
    notes: list[str] = field(default_factory=list)


def download_dataset(source: str, dest: str | os.PathLike, *, repo_type: str | None = None,
                     revision: str | None = None, include: list[str] | None = None,
                     exclude: list[str] | None = None, sha256: str | None = None, cookies: str | None = None,
                     username: str | None = None, password: str | None = None, api_key: str | None = None,
                     limit: int | None = None, cache_dir: str | os.PathLike | None = None,
                     endpoint: str | None = None, max_total_bytes: int = 200 << 30,
                     progress: bool = True) -> DatasetDownload:
    """Bring a dataset from ``source`` (Hub id, URL to an archive or image, gallery page, folder, archive) into
    ``dest``. Re-running the same download reuses what is there and never overwrites different files."""
    dest = Path(dest)
    src = detect_source(source, repo_type)
    out = DatasetDownload(folder=dest, kind=src.kind)
    if src.kind == "hub":
        _from_hub(src, dest, out, revision=revision, include=include, exclude=exclude, cache_dir=cache_dir,
                  endpoint=endpoint, max_total_bytes=max_total_bytes, progress=progress)
    elif src.kind == "gallery":
        res = download_gallery(src.value, dest, cookies=cookies, username=username, password=password,
                               api_key=api_key, limit=limit, progress=progress)
        out.new_files, out.reused_files = len(res.files), res.skipped
        out.notes += res.problems + res.errors[:20]
        if res.returncode and not res.files:
            raise DownloadError(f"gallery-dl got nothing from {src.value}: " + "; ".join(res.problems + res.errors[:5]))
    elif src.kind == "folder":
        res = copy_folder(Path(src.value), dest, progress=progress)
        out.new_files, out.reused_files = len(res.files), len(res.reused)
    elif src.kind in ("archive", "file"):
        path = Path(src.value)
        if src.kind == "file" and not (zipfile.is_zipfile(path) or tarfile.is_tarfile(path)):
            raise DownloadError(f"{path}: a single file, not an archive or folder; put the images in a folder "
                                "(or a zip) and give that")
        if sha256 and sha256_file(path).lower() != sha256.lower():
            raise DownloadError(f"{path}: sha256 does not match {sha256}")
        _unpack_into(path, dest, out, max_total_bytes, progress)
    else:  # a URL (or civitai link): an archive to unpack, or a single image
        _from_url(src, dest, out, sha256=sha256, cache_dir=cache_dir, max_total_bytes=max_total_bytes,
                  progress=progress)
    return out


def _from_hub(src, dest: Path, out: DatasetDownload, *, revision, include, exclude, cache_dir, endpoint,
              max_total_bytes: int, progress: bool) -> None:
    before = _count_files(dest)
    download_from_hub(src.value, dest, repo_type=src.repo_type or "dataset", revision=revision or src.revision,
                      include=include, exclude=exclude, cache_dir=cache_dir, endpoint=endpoint)
    out.new_files = _count_files(dest) - before
    archives = [p for p in dest.rglob("*") if p.is_file() and is_archive_name(p.name)
                and not any(part.startswith(".") for part in p.relative_to(dest).parts)]
    for arc in archives:  # datasets on the Hub are often one zip of images
        res = extract_archive(arc, arc.parent, max_total_bytes=max_total_bytes, progress=progress)
        out.new_files += len(res.files)
        out.notes.append(f"unpacked {arc.relative_to(dest)} ({len(res.files)} files); the archive is kept")


def _unpack_into(archive: Path, dest: Path, out: DatasetDownload, max_total_bytes: int, progress: bool) -> None:
    res = extract_archive(archive, dest, max_total_bytes=max_total_bytes, progress=progress)
    out.new_files, out.reused_files = len(res.files), len(res.reused)
    out.notes += [f"skipped {s}" for s in res.skipped]


def _from_url(src, dest: Path, out: DatasetDownload, *, sha256, cache_dir, max_total_bytes: int,
              progress: bool) -> None:
    downloads = Path(cache_dir) if cache_dir else dest.parent / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)  # a folder: the server names the file
    headers, hint = auth_headers(src)
    got = download_url(src.value, downloads, sha256=sha256, headers=headers, auth_hint=hint, progress=progress)
    if is_archive_name(got.name) or zipfile.is_zipfile(got) or tarfile.is_tarfile(got):
        out.notes.append(f"archive kept at {got} (delete it to free disk)")
        _unpack_into(got, dest, out, max_total_bytes, progress)
        return
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / got.name
    if target.exists():
        if same_file(target, got):
            out.reused_files = 1
            got.unlink()
            return
        target = unique_path(target)
    os.replace(got, target)
    out.new_files = 1


def _count_files(folder: Path) -> int:
    if not folder.exists():
        return 0
    return sum(1 for p in folder.rglob("*") if p.is_file() and ".cache" not in p.relative_to(folder).parts)

