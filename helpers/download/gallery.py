"""``gallery-dl`` as a subprocess (boorus, Pinterest, DeviantArt, ArtStation, Reddit, X, Instagram): metadata JSON
beside each image, a download archive so re-runs fetch only what is new, credentials through a private config
file (never the command line), failures summarised from its exit bits and error lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from helpers.download.sources import DownloadError

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

