"""Getting data onto the rented box: datasets and base models from the Hub, URLs, archives, galleries and boorus.

This module owns every download tunebook does:

- ``detect_source``: what a SOURCE string is (Hub repo id, http(s) URL, civitai link, gallery/booru page,
  local folder, local archive);
- ``download_url``: resumable HTTP(S) download (Range + If-Range), progress bar, size and sha256 checks, clear
  errors for a web page instead of the file, 401/403/404 and a full disk (checked before the transfer when the
  size is known), retries after a dropped connection;
- ``extract_archive``: zip / tar(.gz/.bz2/.xz) unpacked safely: no ``..`` or absolute paths, no links, limits on
  total size and file count enforced while writing (zip bombs), nested folders kept, nothing overwritten;
- ``download_from_hub``: Hugging Face dataset/model repos (revision, include/exclude patterns, the token saved by
  ``hf auth login`` / 00_setup), reused when already there;
- ``download_gallery``: ``gallery-dl`` as a subprocess (boorus, Pinterest, DeviantArt, ArtStation, Reddit, X,
  Instagram) with cookies/credentials passed through a private config file, metadata JSON kept beside each image;
- ``download_dataset`` / ``download_model``: the two things notebooks and the CLI ask for. A base model is stored
  once under the workspace's ``models/<name>/`` with ``model.json`` (source, sha256, SDXL / SD 1.5, eps / v).

CLI: ``python -m helpers.download SOURCE --to DIR`` (dataset), ``--model NAME`` (base model into the workspace).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import email.message
import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from helpers.changes import sha256_file, write_text_atomic
from helpers.config import option

CHUNK = 1 << 20
DISK_MARGIN = 512 << 20  # keep this much free after a download: a full root disk kills Jupyter
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
MODEL_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
GALLERY_HOSTS = ("danbooru.donmai.us", "safebooru.donmai.us", "gelbooru.com", "safebooru.org", "pinterest.",
                 "pin.it", "deviantart.com", "artstation.com", "reddit.com", "redd.it", "twitter.com", "x.com",
                 "instagram.com", "pixiv.net", "e621.net", "yande.re", "konachan.", "sankaku", "fancaps.net",
                 "tumblr.com", "flickr.com", "zerochan.net", "rule34.")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
JUNK_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}


class DownloadError(RuntimeError):
    """A download could not be done; the message says what went wrong and what to do."""


# ----------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """A parsed SOURCE: ``kind`` is hub, url, civitai, gallery, folder or archive."""

    kind: str
    value: str
    repo_type: str | None = None  # for hub: "dataset" or "model"
    revision: str | None = None


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def detect_source(source: str, repo_type: str | None = None) -> Source:
    """What ``source`` names. A Hub id is ``owner/name`` (``datasets/owner/name`` or an hf.co URL also work)."""
    text = source.strip()
    if not text:
        raise DownloadError("no source given: paste a Hub id (owner/name), a URL, or a local path")
    local = Path(text).expanduser()
    if local.exists():
        if local.is_dir():
            return Source("folder", str(local))
        return Source("archive" if is_archive_name(local.name) else "file", str(local))
    if text.startswith("hf://"):
        text = text[5:]
    parsed = urllib.parse.urlparse(text)
    if parsed.scheme in ("http", "https"):
        host = parsed.netloc.lower()
        if host in ("huggingface.co", "hf.co", "www.huggingface.co"):
            parts = [p for p in parsed.path.split("/") if p]
            if "resolve" in parts:  # a direct file link on the Hub is a plain URL
                return Source("url", text)
            kind = "model"
            if parts and parts[0] in ("datasets", "spaces"):
                kind, parts = parts[0][:-1], parts[1:]
            if len(parts) >= 2:
                revision = parts[3] if len(parts) >= 4 and parts[2] == "tree" else None
                return Source("hub", "/".join(parts[:2]), repo_type or kind, revision)
        if "civitai.com" in host:
            return Source("civitai", text)
        if any(h in host for h in GALLERY_HOSTS):
            return Source("gallery", text)
        return Source("url", text)
    if parsed.scheme:
        raise DownloadError(f"{source!r}: unsupported scheme {parsed.scheme!r}; use https://, a Hub id or a path")
    for prefix, kind in (("datasets/", "dataset"), ("models/", "model")):
        if text.startswith(prefix) and HUB_ID_RE.match(text[len(prefix):]):
            return Source("hub", text[len(prefix):], repo_type or kind)
    if HUB_ID_RE.match(text):
        return Source("hub", text, repo_type)
    raise DownloadError(f"{source!r}: not an existing path, a URL, or a Hub id like owner/name")


# ----------------------------------------------------------------------------------------------- HTTP


class _StripAuthOnRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects, dropping the Authorization header when the host changes (civitai -> signed S3 URL)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlparse(newurl).netloc != urllib.parse.urlparse(req.full_url).netloc:
            for key in list(new.headers):
                if key.lower() == "authorization":
                    del new.headers[key]
            new.unredirected_hdrs.pop("Authorization", None)
        return new


_OPENER = urllib.request.build_opener(_StripAuthOnRedirect)


def _http_error_message(code: int, url: str, host_hint: str = "") -> str:
    if code == 401:
        return (f"{url}: 401 unauthorized: this file needs a login. {host_hint or 'Pass a token'} "
                "(tokens are read from the environment, never from the command line)")
    if code == 403:
        return (f"{url}: 403 forbidden: your token has no access (gated or private: accept the terms on the "
                f"model page), or the link expired. {host_hint}").strip()
    if code == 404:
        return f"{url}: 404 not found: check the link (copy it again from the page's download button)"
    if code == 416:
        return f"{url}: 416 range not satisfiable"
    return f"{url}: HTTP {code}"


def filename_from_headers(headers: email.message.Message, url: str) -> str:
    """The server's filename (Content-Disposition) or the URL's last path part, made safe as a file name."""
    name = ""
    disposition = headers.get("Content-Disposition", "")
    if disposition:
        msg = email.message.Message()
        msg["content-disposition"] = disposition
        name = msg.get_filename() or ""
    if not name:
        name = urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name)
    name = re.sub(r'[<>:"/\\|?*\x00-\x1f]', "_", name).strip(". ")
    return name or "download"


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise ``DownloadError`` when ``folder``'s disk cannot take ``needed`` more bytes (plus a margin)."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed + DISK_MARGIN > free:
        raise DownloadError(f"not enough disk for {what}: needs {needed / 1e9:.2f} GB (+{DISK_MARGIN >> 20} MB "
                            f"margin), {free / 1e9:.2f} GB free on the disk holding {folder}. Free space or use a "
                            "bigger volume (on Vast/RunPod: the /workspace volume, not the root disk)")


def _looks_like_html(first: bytes) -> bool:
    head = first[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml version")) and b"<html" in head


def _open(url: str, headers: dict[str, str], timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "tunebook-download/1", **headers})
    return _OPENER.open(req, timeout=timeout)


def download_url(url: str, dest: str | os.PathLike, *, sha256: str | None = None, size: int | None = None,
                 headers: dict[str, str] | None = None, retries: int = 4, timeout: float = 60.0,
                 progress: bool = True, auth_hint: str = "", allow_html: bool = False) -> Path:
    """Download ``url`` to ``dest`` (a file path, or an existing folder to keep the server's filename).

    A partial download is kept as ``<dest>.part`` and resumed with a Range request (If-Range on the ETag, so a
    file changed on the server restarts instead of being spliced). A dropped connection is retried ``retries``
    times from where it stopped. ``dest`` already complete (right size / sha256) is reused without a request.
    """

    dest = Path(dest)
    headers = dict(headers or {})
    explicit = not dest.is_dir()  # a file path; else the server's filename inside the folder
    folder, name = (dest.parent, dest.name) if explicit else (dest, None)
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(url.encode()).hexdigest()[:16]
    part = folder / f".download-{key}.part"
    meta_path = folder / f".download-{key}.json"
    if name and dest.exists() and _complete(dest, size, sha256):
        return dest
    meta = {}
    if part.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = {}
    if not meta:
        part.unlink(missing_ok=True)
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        req_headers = dict(headers)
        if offset:
            req_headers["Range"] = f"bytes={offset}-"
            if meta.get("etag") or meta.get("last_modified"):
                req_headers["If-Range"] = meta.get("etag") or meta["last_modified"]
        try:
            resp = _open(url, req_headers, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset and meta.get("total") == offset:
                resp = None  # the part is already complete
            elif exc.code == 416:
                part.unlink(missing_ok=True)  # the part does not fit the file on the server: start over
                meta = {}
                continue
            elif exc.code in (429, 500, 502, 503, 504) and attempt < retries:
                attempt += 1
                time.sleep(min(30, 2 ** attempt))
                continue
            else:
                raise DownloadError(_http_error_message(exc.code, url, auth_hint)) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException) as exc:
            if attempt < retries:
                attempt += 1
                time.sleep(min(30, 2 ** attempt) / 4)
                continue
            raise DownloadError(f"{url}: cannot connect ({getattr(exc, 'reason', exc)}); check the address and "
                                "the machine's internet access") from None
        if resp is not None:
            with resp:
                status, m = resp.status, None
                ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
                name = name or filename_from_headers(resp.headers, resp.geturl())
                if status == 200 and offset:  # the server ignored Range (or the file changed): start over
                    offset = 0
                    part.unlink(missing_ok=True)
                elif status == 206:
                    content_range = resp.headers.get("Content-Range", "")
                    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", content_range)
                    if not m or int(m.group(1)) != offset:  # not the range asked for: start over, a few times
                        part.unlink(missing_ok=True)
                        meta = {}
                        attempt += 1
                        if attempt > retries:
                            raise DownloadError(f"{url}: the server answers range requests wrongly "
                                                f"({content_range!r}); download it with another tool")
                        continue
                length = resp.headers.get("Content-Length")
                total = offset + int(length) if length and length.isdigit() else None
                if status == 206 and m and m.group(2).isdigit():
                    total = int(m.group(2))
                if size is not None and total is not None and total != size:
                    raise DownloadError(f"{url}: the server sends {total} bytes but {size} were expected; the link "
                                        "points at a different file")
                first = resp.read(min(CHUNK, 65536)) if not offset else b""
                html_name = name.lower().endswith((".html", ".htm"))
                if not offset and not allow_html and not html_name and (ctype == "text/html" or _looks_like_html(first)):
                    raise DownloadError(
                        f"{url}: got a web page (Content-Type {ctype or 'unknown'}) instead of the file: the link is "
                        "a page, a login wall or a share link. Use the direct download link (Dropbox: ?dl=1; Google "
                        "Drive: a direct-download link; civitai: the download button's link, with a token for "
                        "restricted models; Hugging Face: a /resolve/ link)")
                existing = folder / name
                if not explicit and not offset and existing.is_file() and total == existing.stat().st_size \
                        and (not sha256 or sha256_file(existing).lower() == sha256.lower()):
                    return existing  # downloaded before: same name and size (and hash when given)
                if total is not None:
                    check_free_space(folder, total - offset, f"{name}")
                meta = {"url": url, "etag": resp.headers.get("ETag"), "last_modified":
                        resp.headers.get("Last-Modified"), "total": total, "name": name}
                write_text_atomic(meta_path, json.dumps(meta))
                try:
                    _stream_body(resp, part, first, offset, total, name, progress)
                except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:  # before OSError: subclasses
                    if attempt < retries:
                        attempt += 1
                        time.sleep(min(30, 2 ** attempt) / 4)
                        continue
                    raise DownloadError(f"{url}: the connection dropped {attempt + 1} times ({exc}); run the same "
                                        f"download again to resume from {part.stat().st_size} bytes") from None
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise DownloadError(f"disk full while writing {part}: free space, then run the same "
                                            "download again; it resumes from what is already there") from None
                    raise
        got = part.stat().st_size
        total = meta.get("total")
        if total is not None and got < total:
            if attempt < retries:  # the server closed the connection early: resume
                attempt += 1
                continue
            raise DownloadError(f"{url}: got {got} of {total} bytes after {retries} retries; run the same download "
                                "again to resume")
        break
    target = dest if explicit else folder / (name or meta.get("name") or "download")
    if sha256:
        actual = sha256_file(part, progress)
        if actual.lower() != sha256.lower():
            bad = part.with_name(part.name + ".bad-sha256")
            os.replace(part, bad)
            meta_path.unlink(missing_ok=True)
            raise DownloadError(f"{url}: sha256 {actual} does not match the expected {sha256}: the file is damaged "
                                f"or a different version (kept as {bad} for inspection)")
    if target.exists() and not explicit:
        target = _free_name(target)  # a different file of the same name stays as it is
    os.replace(part, target)
    meta_path.unlink(missing_ok=True)
    return target


def _stream_body(resp, part: Path, first: bytes, offset: int, total: int | None, name: str, progress: bool) -> None:
    """Append the response body to ``part`` (after the ``first`` bytes already read), with a progress bar."""
    from tqdm.auto import tqdm

    with open(part, "ab" if offset else "wb") as fh, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                                          unit_divisor=1024, desc=name, disable=not progress) as bar:
        if first:
            fh.write(first)
            bar.update(len(first))
        while chunk := resp.read(CHUNK):
            fh.write(chunk)
            bar.update(len(chunk))


def _complete(path: Path, size: int | None, sha256: str | None) -> bool:
    """A finished download (partials live in .part files) that passes the checks given."""
    if size is not None and path.stat().st_size != size:
        return False
    return not sha256 or sha256_file(path).lower() == sha256.lower()


def _free_name(path: Path) -> Path:
    n = 1
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.name.split('.')[0]} ({n}){''.join(path.suffixes)}")
        n += 1
    return candidate


# ----------------------------------------------------------------------------------------------- archives


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
    from tqdm.auto import tqdm

    from helpers.dataset import parse_repeat_folder

    archive, dest = Path(archive), Path(dest)
    handle, entries = _members(archive)
    with handle:
        plan: list[tuple[Path, int, object]] = []
        result = ExtractResult()
        if len(entries) > max_files:
            raise UnsafeArchiveError(f"{archive}: {len(entries)} entries, more than the limit of {max_files}")
        for name, kind, size, opener in entries:
            rel = safe_member_path(name)
            if rel is None:
                continue
            if kind == "link":
                result.skipped.append(f"{name} (link: not created)")
                continue
            if kind == "other":
                result.skipped.append(f"{name} (device or fifo: not created)")
                continue
            if kind == "file":
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
        dest.mkdir(parents=True, exist_ok=True)
        check_free_space(dest, declared, f"unpacking {archive.name}")
        staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=dest))
        try:
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
                                        f"{archive}: unpacks to more than {max_total_bytes / 1e9:.1f} GB although "
                                        "its headers say less (a zip bomb?); refusing it, nothing was kept")
                                fh.write(chunk)
                                bar.update(len(chunk))
                    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
                        raise DownloadError(f"{archive}: damaged archive at {rel} ({exc}); download it again. "
                                            "Nothing was unpacked") from None
            result.total_bytes = written
            conflicts = []
            for rel, _, _ in plan:
                target = dest / rel
                if target.exists() and (not target.is_file() or not _same_file(target, staging / rel)):
                    conflicts.append(str(rel))
            if conflicts:
                raise DownloadError(f"{dest}: {len(conflicts)} files from {archive.name} would replace different "
                                    f"files already there (first: {conflicts[0]}); unpack into a new folder or move "
                                    "those files away first. Nothing was changed")
            for rel, _, _ in plan:
                target = dest / rel
                if target.exists():
                    result.reused.append(target)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / rel, target)
                result.files.append(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return result


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return sha256_file(a) == sha256_file(b)


# ----------------------------------------------------------------------------------------------- Hugging Face Hub


def hub_token() -> str | None:
    """The token ``hf auth login`` (or 00_setup) saved, or HF_TOKEN; None when logged out. Never printed."""
    from huggingface_hub import get_token

    return get_token()


def download_from_hub(repo_id: str, dest: str | os.PathLike, *, repo_type: str = "dataset",
                      revision: str | None = None, include: list[str] | None = None,
                      exclude: list[str] | None = None, cache_dir: str | os.PathLike | None = None,
                      endpoint: str | None = None, token: str | None = None) -> Path:
    """Download a Hub repo (or the files matching ``include``/``exclude`` globs) into ``dest``.

    Uses ``huggingface_hub.snapshot_download`` with ``local_dir=dest``: files already there and unchanged are
    not fetched again. The token is the saved login unless given; ``endpoint`` is for mirrors.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        path = snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_dir=dest,
                                 allow_patterns=include or None, ignore_patterns=exclude or None,
                                 cache_dir=str(cache_dir) if cache_dir else None, endpoint=endpoint,
                                 token=token or hub_token() or None)
    except GatedRepoError:
        raise DownloadError(f"{repo_id}: gated repo: accept its terms on huggingface.co/{repo_id} with your "
                            "account, and log in (00_setup) so the token is used") from None
    except RepositoryNotFoundError:
        raise DownloadError(f"{repo_id}: no such {repo_type} repo on the Hub, or it is private and you are not "
                            f"logged in (check the id; for a model repo pass repo type 'model')") from None
    except RevisionNotFoundError:
        raise DownloadError(f"{repo_id}: revision {revision!r} not found (a branch, tag or commit)") from None
    except LocalEntryNotFoundError:
        raise DownloadError(f"{repo_id}: cannot reach the Hub and nothing is cached (offline? HF_HUB_OFFLINE is "
                            f"{os.environ.get('HF_HUB_OFFLINE', 'unset')})") from None
    except HfHubHTTPError as exc:
        raise DownloadError(f"{repo_id}: Hub error: {str(exc).splitlines()[0]}") from None
    return Path(path)


# ----------------------------------------------------------------------------------------------- gallery-dl

GALLERY_EXIT_BITS = {1: "unspecified error", 4: "HTTP or extraction error (page changed, rate limit, not found)",
                     8: "blocked by a bot challenge (Cloudflare): use cookies from a logged-in browser",
                     16: "login needed or refused: pass a cookies.txt file or username/password",
                     32: "bad input (filter, range or format)", 64: "unsupported URL: gallery-dl has no extractor"}


@dataclass
class GalleryResult:
    """What a gallery-dl run produced (paths of new images and metadata files) and its failures, summarised."""

    files: list[Path] = field(default_factory=list)
    metadata: list[Path] = field(default_factory=list)
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    returncode: int = 0

    @property
    def problems(self) -> list[str]:
        return [text for bit, text in GALLERY_EXIT_BITS.items() if self.returncode & bit]


def find_gallery_dl() -> list[str]:
    """The gallery-dl command: on PATH, else beside this Python (a venv not on PATH in a notebook kernel)."""
    exe = shutil.which("gallery-dl")
    if exe:
        return [exe]
    sibling = Path(sys.executable).with_name("gallery-dl")
    if sibling.exists():
        return [str(sibling)]
    raise DownloadError("gallery-dl is not installed: `pip install gallery-dl==1.32.18` (setup.sh does this)")


def build_gallery_command(url: str, dest: Path, *, config_file: Path | None = None, cookies: Path | None = None,
                          limit: int | None = None, extra_args: list[str] | None = None) -> list[str]:
    """The gallery-dl argument list: into ``dest``, metadata JSON beside each file, a download archive so a
    re-run only fetches what is new, optional cookies/private config and a ``--range 1-limit``."""
    cmd = find_gallery_dl() + ["--write-metadata", "-D", str(dest),
                               "--download-archive", str(dest / ".gallery-dl-archive.sqlite3")]
    if config_file:
        cmd += ["--config", str(config_file)]
    if cookies:
        cmd += ["--cookies", str(cookies)]
    if limit:
        cmd += ["--range", f"1-{int(limit)}"]
    return cmd + list(extra_args or []) + ["--", url]


def download_gallery(url: str, dest: str | os.PathLike, *, cookies: str | os.PathLike | None = None,
                     username: str | None = None, password: str | None = None, api_key: str | None = None,
                     user_id: str | None = None, limit: int | None = None, extra_args: list[str] | None = None,
                     progress: bool = True, timeout: float | None = None) -> GalleryResult:
    """Download a gallery/booru/profile page with gallery-dl into ``dest``; metadata JSON kept beside each image.

    Credentials go through a private temporary config file (mode 600, deleted afterwards), never the command
    line where ``ps`` shows them. Each downloaded file counts on the progress bar; failures are summarised
    from gallery-dl's error lines and exit status bits.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if cookies is not None and not Path(cookies).is_file():
        raise DownloadError(f"cookies file {cookies} not found: export cookies.txt (Netscape format) from a "
                            "logged-in browser and upload it")
    secrets = {k: v for k, v in (("username", username), ("password", password), ("api-key", api_key),
                                 ("user-id", user_id)) if v}
    config_file = None
    result = GalleryResult()
    try:
        if secrets:
            fd, name = tempfile.mkstemp(prefix="gallery-dl-", suffix=".json")
            config_file = Path(name)
            os.chmod(config_file, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"extractor": secrets}, fh)
        cmd = build_gallery_command(url, dest, config_file=config_file,
                                    cookies=Path(cookies) if cookies else None, limit=limit, extra_args=extra_args)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                                cwd=dest)
        stderr_lines: list[str] = []
        import threading

        reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True)
        reader.start()
        with tqdm(total=limit, unit="file", desc="gallery-dl", disable=not progress) as bar:
            for line in proc.stdout:
                line = line.rstrip("\n")
                if not line:
                    continue
                if line.startswith("# "):  # already downloaded (download archive) or existing
                    result.skipped += 1
                    bar.update(1)
                    continue
                path = Path(line.strip())
                if not path.is_absolute():
                    path = dest / path
                result.files.append(path)
                bar.update(1)
        try:
            result.returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            result.returncode = proc.wait()
            result.errors.append(f"stopped after {timeout} s")
        reader.join(timeout=5)
        result.errors += [ln.strip() for ln in stderr_lines if "[error]" in ln or "[warning]" in ln]
    finally:
        if config_file is not None:
            config_file.unlink(missing_ok=True)
    result.metadata = [p.with_name(p.name + ".json") for p in result.files if p.with_name(p.name + ".json").exists()]
    return result


# ----------------------------------------------------------------------------------------------- datasets


def copy_folder(src: Path, dest: Path, *, progress: bool = True) -> ExtractResult:
    """Copy a folder's files (hidden ones and ``_rejected/`` skipped) into ``dest``, never overwriting."""
    from tqdm.auto import tqdm

    from helpers.dataset import list_dataset_files

    src, dest = src.resolve(), Path(dest)
    if dest.resolve() == src:
        return ExtractResult(reused=list_dataset_files(src))
    files = list_dataset_files(src)
    total = sum(p.stat().st_size for p in files)
    check_free_space(dest, total, f"copying {src}")
    result = ExtractResult(total_bytes=total)
    conflicts = [p for p in files if (dest / p.relative_to(src)).exists()
                 and not _same_file(dest / p.relative_to(src), p)]
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
        return out
    if src.kind == "gallery":
        res = download_gallery(src.value, dest, cookies=cookies, username=username, password=password,
                               api_key=api_key, limit=limit, progress=progress)
        out.new_files, out.reused_files = len(res.files), res.skipped
        out.notes += res.problems + res.errors[:20]
        if res.returncode and not res.files:
            raise DownloadError(f"gallery-dl got nothing from {src.value}: " + "; ".join(res.problems + res.errors[:5]))
        return out
    if src.kind == "folder":
        res = copy_folder(Path(src.value), dest, progress=progress)
        out.new_files, out.reused_files = len(res.files), len(res.reused)
        return out
    if src.kind in ("archive", "file"):
        path = Path(src.value)
        if src.kind == "file" and not (zipfile.is_zipfile(path) or tarfile.is_tarfile(path)):
            raise DownloadError(f"{path}: a single file, not an archive or folder; put the images in a folder "
                                "(or a zip) and give that")
        if sha256 and sha256_file(path).lower() != sha256.lower():
            raise DownloadError(f"{path}: sha256 does not match {sha256}")
        res = extract_archive(path, dest, max_total_bytes=max_total_bytes, progress=progress)
        out.new_files, out.reused_files = len(res.files), len(res.reused)
        out.notes += [f"skipped {s}" for s in res.skipped]
        return out
    # a URL (or civitai link): an archive to unpack, or a single image
    downloads = Path(cache_dir) if cache_dir else dest.parent / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)  # a folder: the server names the file
    headers, hint = _auth_headers(src)
    got = download_url(src.value, downloads, sha256=sha256, headers=headers, auth_hint=hint, progress=progress)
    if is_archive_name(got.name) or zipfile.is_zipfile(got) or tarfile.is_tarfile(got):
        res = extract_archive(got, dest, max_total_bytes=max_total_bytes, progress=progress)
        out.new_files, out.reused_files = len(res.files), len(res.reused)
        out.notes.append(f"archive kept at {got} (delete it to free disk)")
        out.notes += [f"skipped {s}" for s in res.skipped]
        return out
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / got.name
    if target.exists():
        if _same_file(target, got):
            out.reused_files = 1
            got.unlink()
            return out
        target = _free_name(target)
    os.replace(got, target)
    out.new_files = 1
    return out


def _count_files(folder: Path) -> int:
    if not folder.exists():
        return 0
    return sum(1 for p in folder.rglob("*") if p.is_file() and ".cache" not in p.relative_to(folder).parts)


def _auth_headers(src: Source) -> tuple[dict[str, str], str]:
    """Authorization for hosts that need it (civitai token, Hub token for /resolve/ links), from the environment."""
    host = urllib.parse.urlparse(src.value).netloc.lower()
    if src.kind == "civitai":
        token = os.environ.get("CIVITAI_TOKEN") or os.environ.get("CIVITAI_API_KEY")
        hint = "Set CIVITAI_TOKEN (civitai.com > account settings > API keys) and run again"
        return ({"Authorization": f"Bearer {token}"} if token else {}), hint
    if host in ("huggingface.co", "hf.co"):
        token = hub_token()
        return ({"Authorization": f"Bearer {token}"} if token else {}), "Log in to the Hub in 00_setup"
    return {}, ""


# ----------------------------------------------------------------------------------------------- base models

def recognise_model(path: Path, allow_pickle: bool = False) -> dict[str, object]:
    """{"architecture": sdxl|sd15, "prediction": epsilon|v_prediction, "layout", "components"} read from the
    model's keys and metadata by ``helpers.models.checkpoint.open_checkpoint``; ``architecture`` None and a
    ``note`` when it is not an SDXL / SD 1.5 model (the file is still stored, the note says what it is)."""
    from helpers.models.checkpoint import CheckpointError, open_checkpoint

    try:
        with open_checkpoint(path, allow_pickle=allow_pickle) as ckpt:
            return {"architecture": ckpt.arch, "prediction": ckpt.prediction, "layout": ckpt.layout,
                    "components": ckpt.components()}
    except CheckpointError as exc:
        return {"architecture": None, "prediction": None, "note": str(exc)}


def download_model(source: str, models_dir: str | os.PathLike, name: str, *, revision: str | None = None,
                   sha256: str | None = None, allow_pickle: bool = False, include: list[str] | None = None,
                   exclude: list[str] | None = None, link: bool = True, cache_dir: str | os.PathLike | None = None,
                   endpoint: str | None = None, progress: bool = True) -> dict[str, object]:
    """Store a base model once as ``models_dir/<name>/`` with ``model.json`` (source, sha256, architecture).

    ``source``: a Hub repo id (diffusers layout; only the safetensors weights and configs are fetched), a
    single-file URL (resumable, civitai token from CIVITAI_TOKEN) or a local file/folder (hard-linked when on
    the same disk, else copied). Pickle checkpoints (.ckpt/.pt/.bin) are refused unless ``allow_pickle``:
    loading one runs code from the file. Re-running with the same source reuses the stored model.
    """
    from helpers.workspace import check_name

    check_name(name, "model name")
    folder = Path(models_dir) / name
    record_path = folder / "model.json"
    if record_path.exists():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("source") == source and (not sha256 or record.get("sha256") == sha256.lower()):
            record["reused"] = True
            return record
        raise DownloadError(f"{folder}: a different model is stored under this name (from {record.get('source')}); "
                            "choose another name or delete that folder")
    src = detect_source(source, "model")
    folder.mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {"name": name, "source": source, "stored_at":
                                 _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if src.kind == "hub" or (src.kind == "folder" and (Path(src.value) / "model_index.json").exists()):
        if src.kind == "hub":
            from helpers.models.loader import HUB_ALLOW, HUB_IGNORE  # the files the model loader reads

            download_from_hub(src.value, folder, repo_type="model", revision=revision or src.revision,
                              include=include or HUB_ALLOW, exclude=exclude or HUB_IGNORE,
                              cache_dir=cache_dir, endpoint=endpoint)
        else:
            copy_folder(Path(src.value), folder, progress=progress)
        if not (folder / "model_index.json").exists():
            raise DownloadError(f"{source}: no model_index.json: not a diffusers model repo. For a single-file "
                                "checkpoint give the file's URL (…/resolve/main/model.safetensors)")
        weights = sorted(p for p in folder.rglob("*.safetensors") if ".cache" not in p.parts)
        record.update(kind="diffusers", path=str(folder), files={
            str(p.relative_to(folder)): sha256_file(p, progress) for p in weights})
        record.update(recognise_model(folder, allow_pickle))
    else:
        if src.kind in ("url", "civitai"):
            headers, hint = _auth_headers(src)
            path = download_url(src.value, folder, sha256=sha256, headers=headers, auth_hint=hint, progress=progress)
        elif src.kind in ("file", "archive"):
            path = _store_local_file(Path(src.value), folder, link)
        else:
            raise DownloadError(f"{source}: a {src.kind} cannot be a base model; give a Hub repo id, a file URL or "
                                "a .safetensors path")
        if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
            quarantine = path.with_name(path.name + ".refused")
            os.replace(path, quarantine)
            raise DownloadError(f"{path.name}: a pickle checkpoint, which can run code when loaded; kept as "
                                f"{quarantine}. Prefer a .safetensors version, or opt in with allow_pickle=True "
                                "(--allow-pickle) if you trust the source")
        if path.suffix.lower() not in MODEL_SUFFIXES:
            raise DownloadError(f"{path.name}: not a model file (.safetensors expected); check the link")
        digest = sha256_file(path, progress)
        if sha256 and digest != sha256.lower():
            raise DownloadError(f"{path}: sha256 {digest} does not match the expected {sha256}")
        record.update(kind="single_file", path=str(path), file=path.name, size=path.stat().st_size,
                      sha256=digest, autov2=digest[:10])
        record.update(recognise_model(path, allow_pickle))
    write_text_atomic(record_path, json.dumps(record, indent=1))
    return record


def _store_local_file(src: Path, folder: Path, link: bool) -> Path:
    target = folder / src.name
    if target.exists():
        return target
    if link:
        try:
            os.link(src, target)  # same disk: no second copy of a 7 GB file
            return target
        except OSError:
            pass
    check_free_space(folder, src.stat().st_size, f"copying {src.name}")
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, target)
    return target


def list_stored_models(models_dir: str | os.PathLike) -> list[dict[str, object]]:
    """The ``model.json`` records of every stored base model."""
    out = []
    for record in sorted(Path(models_dir).glob("*/model.json")):
        try:
            out.append(json.loads(record.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError):
            out.append({"name": record.parent.name, "note": "damaged model.json"})
    return out


# ----------------------------------------------------------------------------------------------- config + CLI


@dataclass
class DownloadConfig:
    """What notebook 01's dataset form edits."""

    format_version: ClassVar[int] = 1
    source: str = option("", help="Hub dataset id (owner/name), URL of a zip/tar or image, gallery/booru page, or "
                                  "a folder/archive already on this machine; empty keeps the dataset as it is",
                         label="source")
    dataset: str = option("demo", help="dataset name in the workspace (letters, digits, . _ -)", label="dataset name")
    revision: str = option("", help="Hub branch, tag or commit (empty: main)", group="advanced")
    include: list[str] = option([], help="only files matching these globs (Hub), e.g. *.png", group="advanced")
    exclude: list[str] = option([], help="skip files matching these globs (Hub)", group="advanced")
    sha256: str = option("", help="expected sha256 of the downloaded file (URL/archive)", group="advanced")
    cookies: str = option("", help="cookies.txt for gallery-dl (logged-in browser export)", kind="path",
                          group="gallery")
    username: str = option("", help="gallery site username (danbooru login)", group="gallery")
    password: str = option("", help="gallery site password or API key (never saved)", kind="secret",
                           group="gallery")
    limit: int = option(0, help="gallery-dl: at most this many files (0: all)", min=0, group="gallery")

    def check(self) -> dict[str, str]:
        return _check_name(self.dataset, "dataset", "dataset name")


@dataclass
class ModelDownloadConfig:
    """What notebook 01's base-model form edits."""

    format_version: ClassVar[int] = 1
    source: str = option("", help="Hub repo id (diffusers, e.g. stabilityai/stable-diffusion-xl-base-1.0), a "
                                  ".safetensors URL (civitai links need CIVITAI_TOKEN) or a file/folder on this "
                                  "machine; empty skips this step", label="source")
    name: str = option("base", help="name of the stored model in the workspace", label="model name")
    revision: str = option("", help="Hub branch, tag or commit (empty: main)", group="advanced")
    sha256: str = option("", help="expected sha256 of a single file", group="advanced")
    allow_pickle: bool = option(False, help="accept .ckpt/.pt/.bin (they can run code when loaded)",
                                group="advanced")

    def check(self) -> dict[str, str]:
        return _check_name(self.name, "name", "model name")


def _check_name(name: str, key: str, what: str) -> dict[str, str]:
    from helpers.workspace import check_name

    try:
        check_name(name, what)
    except ValueError as exc:
        return {key: str(exc)}
    return {}


def fetch_dataset(cfg: DownloadConfig, ws) -> DatasetDownload | None:
    """Notebook 01's run step: download ``cfg.source`` into the workspace dataset ``cfg.dataset``.

    An empty source keeps the dataset as it is (and says so); errors are printed as one clear line, not a
    traceback, and return None.
    """
    folder = ws.dataset(cfg.dataset)
    if not cfg.source.strip():
        there = "exists" if folder.is_dir() else "does not exist yet: paste a source above and run again"
        print(f"no source given: dataset {cfg.dataset!r} at {folder} {there}")
        return None
    try:
        res = download_dataset(cfg.source, folder, revision=cfg.revision or None, include=cfg.include or None,
                               exclude=cfg.exclude or None, sha256=cfg.sha256 or None, cookies=cfg.cookies or None,
                               username=cfg.username or None, password=cfg.password or None,
                               limit=cfg.limit or None, cache_dir=ws.cache / "downloads")
    except (DownloadError, FileNotFoundError, ValueError) as exc:
        print(f"download failed: {exc}")
        return None
    print(f"{res.kind} -> {res.folder}: {res.new_files} new files, {res.reused_files} already there")
    for note in res.notes:
        print("note:", note)
    return res


def fetch_model(cfg: ModelDownloadConfig, ws) -> dict[str, object] | None:
    """Notebook 01's base-model step: store ``cfg.source`` as ``models/<cfg.name>/``; empty source skips it."""
    if not cfg.source.strip():
        print("no base model source given: skipped (stored models are listed below)")
        return None
    try:
        record = download_model(cfg.source, ws.models, cfg.name, revision=cfg.revision or None,
                                sha256=cfg.sha256 or None, allow_pickle=cfg.allow_pickle, cache_dir=ws.hf_cache)
    except (DownloadError, FileNotFoundError, ValueError) as exc:
        print(f"model download failed: {exc}")
        return None
    arch = record.get("architecture") or "not recognised"
    print(f"stored {cfg.name}: {arch} {record.get('prediction') or ''} ({record.get('kind')}, "
          f"{'reused' if record.get('reused') else 'new'})")
    return record


def models_table(models_dir: str | os.PathLike) -> list[dict[str, object]]:
    """One row per item in the models folder: name, kind, architecture, prediction, sha256 (model.json when
    there; items stored by hand show as 'not recorded')."""
    rows = []
    recorded = {r.get("name"): r for r in list_stored_models(models_dir)}
    for item in sorted(Path(models_dir).iterdir()) if Path(models_dir).is_dir() else []:
        if item.name.startswith("."):
            continue
        r = recorded.get(item.name, {})
        rows.append({"name": item.name, "kind": r.get("kind") or ("folder" if item.is_dir() else "file"),
                     "architecture": r.get("architecture") or "not recorded", "prediction": r.get("prediction") or "",
                     "sha256": (r.get("sha256") or "")[:12], "source": r.get("source") or ""})
    return rows


def show_models(models_dir: str | os.PathLike) -> None:
    """Print the stored base models as a table (notebook 01's last cell)."""
    rows = models_table(models_dir)
    if not rows:
        print(f"no base models in {models_dir} yet")
        return
    cols = ["name", "kind", "architecture", "prediction", "sha256", "source"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))


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
            from helpers.workspace import Workspace

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
