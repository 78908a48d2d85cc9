"""What a SOURCE string names (Hub repo id, URL, civitai link, gallery page, local folder or archive), and the
credentials a host needs, read from the environment or the saved Hub login — never from a command line."""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


MODEL_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


GALLERY_HOSTS = ("danbooru.donmai.us", "safebooru.donmai.us", "gelbooru.com", "safebooru.org", "pinterest.",
                 "pin.it", "deviantart.com", "artstation.com", "reddit.com", "redd.it", "twitter.com", "x.com",
                 "instagram.com", "pixiv.net", "e621.net", "yande.re", "konachan.", "sankaku", "fancaps.net",
                 "tumblr.com", "flickr.com", "zerochan.net", "rule34.")


HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


class DownloadError(RuntimeError):
    """A download could not be done; the message says what went wrong and what to do."""


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


def hub_token() -> str | None:
    """The token ``hf auth login`` (or 00_setup) saved, or HF_TOKEN; None when logged out. Never printed."""
    from huggingface_hub import get_token

    return get_token()


def auth_headers(src: Source) -> tuple[dict[str, str], str]:
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

