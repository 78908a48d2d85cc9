"""Resumable HTTP(S) downloads: ``download_url``.

A partial download is kept as ``.download-<key>.part`` and resumed with a Range request (If-Range on the ETag,
so a file changed on the server restarts instead of being spliced); a dropped connection is retried from where
it stopped; the size and sha256 are checked; a web page where a file was expected, 401/403/404 and a full disk
(checked before the transfer when the size is known) become messages that say what to do.
"""

from __future__ import annotations

import email.message
import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from helpers.changes import sha256_file, unique_path, write_text_atomic
from helpers.download.sources import DownloadError

CHUNK = 1 << 20
DISK_MARGIN = 512 << 20  # keep this much free after a download: a full root disk kills Jupyter
RETRY_STATUS = (429, 500, 502, 503, 504)
NETWORK_ERRORS = (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException)


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


class _Retry(Exception):
    """Start the request loop again (a resumable failure; the attempt was counted)."""


@dataclass
class _Download:
    """One ``download_url`` call's state: where the part file is, what the server said, attempts so far."""

    url: str
    folder: Path
    name: str | None
    explicit: bool
    headers: dict[str, str]
    size: int | None
    sha256: str | None
    retries: int
    timeout: float
    progress: bool
    auth_hint: str
    allow_html: bool
    attempt: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        key = hashlib.sha1(self.url.encode()).hexdigest()[:16]
        self.part = self.folder / f".download-{key}.part"
        self.meta_path = self.folder / f".download-{key}.json"
        if self.part.exists() and self.meta_path.exists():
            try:
                self.meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.meta = {}
        if not self.meta:
            self.part.unlink(missing_ok=True)

    def restart(self) -> None:
        """Throw the part away (it does not fit the file on the server)."""
        self.part.unlink(missing_ok=True)
        self.meta = {}

    def request(self):
        """The response for the bytes still missing; None when the part is already complete."""
        offset = self.part.stat().st_size if self.part.exists() else 0
        req_headers = dict(self.headers)
        if offset:
            req_headers["Range"] = f"bytes={offset}-"
            if self.meta.get("etag") or self.meta.get("last_modified"):
                req_headers["If-Range"] = self.meta.get("etag") or self.meta["last_modified"]
        try:
            return _open(self.url, req_headers, self.timeout), offset
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset and self.meta.get("total") == offset:
                return None, offset
            if exc.code == 416:
                self.restart()
                raise _Retry from None
            if exc.code in RETRY_STATUS and self.attempt < self.retries:
                self.attempt += 1
                time.sleep(min(30, 2 ** self.attempt))
                raise _Retry from None
            raise DownloadError(_http_error_message(exc.code, self.url, self.auth_hint)) from None
        except NETWORK_ERRORS as exc:
            if self.attempt < self.retries:
                self.attempt += 1
                time.sleep(min(30, 2 ** self.attempt) / 4)
                raise _Retry from None
            raise DownloadError(f"{self.url}: cannot connect ({getattr(exc, 'reason', exc)}); check the address "
                                "and the machine's internet access") from None

    def total_size(self, resp, offset: int) -> tuple[int, int | None]:
        """(offset, total) the response really serves; restarts when the server answers the range wrongly."""
        status, match = resp.status, None
        if status == 200 and offset:  # the server ignored Range (or the file changed): start over
            offset = 0
            self.part.unlink(missing_ok=True)
        elif status == 206:
            content_range = resp.headers.get("Content-Range", "")
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", content_range)
            if not match or int(match.group(1)) != offset:  # not the range asked for: start over, a few times
                self.restart()
                self.attempt += 1
                if self.attempt > self.retries:
                    raise DownloadError(f"{self.url}: the server answers range requests wrongly "
                                        f"({content_range!r}); download it with another tool")
                raise _Retry
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        if status == 206 and match and match.group(2).isdigit():
            total = int(match.group(2))
        if self.size is not None and total is not None and total != self.size:
            raise DownloadError(f"{self.url}: the server sends {total} bytes but {self.size} were expected; the "
                                "link points at a different file")
        return offset, total

    def refuse_web_page(self, ctype: str, first: bytes) -> None:
        html_name = (self.name or "").lower().endswith((".html", ".htm"))
        if not self.allow_html and not html_name and (ctype == "text/html" or _looks_like_html(first)):
            raise DownloadError(
                f"{self.url}: got a web page (Content-Type {ctype or 'unknown'}) instead of the file: the link is "
                "a page, a login wall or a share link. Use the direct download link (Dropbox: ?dl=1; Google "
                "Drive: a direct-download link; civitai: the download button's link, with a token for "
                "restricted models; Hugging Face: a /resolve/ link)")

    def receive(self, resp, offset: int) -> Path | None:
        """Stream the response into the part file; returns an existing complete copy instead when there is one."""
        with resp:
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            self.name = self.name or filename_from_headers(resp.headers, resp.geturl())
            offset, total = self.total_size(resp, offset)
            first = resp.read(min(CHUNK, 65536)) if not offset else b""
            if not offset:
                self.refuse_web_page(ctype, first)
            existing = self.folder / self.name
            if not self.explicit and not offset and existing.is_file() and total == existing.stat().st_size \
                    and (not self.sha256 or sha256_file(existing).lower() == self.sha256.lower()):
                return existing  # downloaded before: same name and size (and hash when given)
            if total is not None:
                check_free_space(self.folder, total - offset, self.name)
            self.meta = {"url": self.url, "etag": resp.headers.get("ETag"), "total": total, "name": self.name,
                         "last_modified": resp.headers.get("Last-Modified")}
            write_text_atomic(self.meta_path, json.dumps(self.meta))
            try:
                _stream_body(resp, self.part, first, offset, total, self.name, self.progress)
            except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:  # before OSError: subclasses
                if self.attempt < self.retries:
                    self.attempt += 1
                    time.sleep(min(30, 2 ** self.attempt) / 4)
                    raise _Retry from None
                raise DownloadError(f"{self.url}: the connection dropped {self.attempt + 1} times ({exc}); run the "
                                    f"same download again to resume from {self.part.stat().st_size} bytes") from None
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DownloadError(f"disk full while writing {self.part}: free space, then run the same "
                                        "download again; it resumes from what is already there") from None
                raise
        return None

    def check_complete(self) -> None:
        got, total = self.part.stat().st_size, self.meta.get("total")
        if total is not None and got < total:
            if self.attempt < self.retries:  # the server closed the connection early: resume
                self.attempt += 1
                raise _Retry
            raise DownloadError(f"{self.url}: got {got} of {total} bytes after {self.retries} retries; run the same "
                                "download again to resume")

    def finish(self, dest: Path) -> Path:
        """Check the sha256 and move the part into place (beside, not over, a different file of that name)."""
        target = dest if self.explicit else self.folder / (self.name or self.meta.get("name") or "download")
        if self.sha256:
            actual = sha256_file(self.part, self.progress)
            if actual.lower() != self.sha256.lower():
                bad = self.part.with_name(self.part.name + ".bad-sha256")
                os.replace(self.part, bad)
                self.meta_path.unlink(missing_ok=True)
                raise DownloadError(f"{self.url}: sha256 {actual} does not match the expected {self.sha256}: the "
                                    f"file is damaged or a different version (kept as {bad} for inspection)")
        if target.exists() and not self.explicit:
            target = unique_path(target)
        os.replace(self.part, target)
        self.meta_path.unlink(missing_ok=True)
        return target


def download_url(url: str, dest: str | os.PathLike, *, sha256: str | None = None, size: int | None = None,
                 headers: dict[str, str] | None = None, retries: int = 4, timeout: float = 60.0,
                 progress: bool = True, auth_hint: str = "", allow_html: bool = False) -> Path:
    """Download ``url`` to ``dest`` (a file path, or an existing folder to keep the server's filename).

    A partial download is resumed; a dropped connection is retried ``retries`` times from where it stopped.
    ``dest`` already complete (right size / sha256) is reused without a request.
    """
    dest = Path(dest)
    explicit = not dest.is_dir()  # a file path; else the server's filename inside the folder
    folder, name = (dest.parent, dest.name) if explicit else (dest, None)
    folder.mkdir(parents=True, exist_ok=True)
    if name and dest.exists() and _complete(dest, size, sha256):
        return dest
    job = _Download(url, folder, name, explicit, dict(headers or {}), size, sha256, retries, timeout, progress,
                    auth_hint, allow_html)
    while True:
        try:
            resp, offset = job.request()
            if resp is not None:
                existing = job.receive(resp, offset)
                if existing is not None:
                    return existing
            job.check_complete()
        except _Retry:
            continue
        return job.finish(dest)


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
