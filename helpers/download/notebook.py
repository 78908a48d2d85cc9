"""What notebook 01's download cells call: the dataset and base-model forms' configs, run steps that print one
clear line instead of a traceback, and the stored-models table."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from helpers import ledger
from helpers.config import option
from helpers.download.datasets import DatasetDownload, download_dataset
from helpers.download.model_store import download_model, list_stored_models
from helpers.download.sources import DownloadError
from helpers.ui.errors import stage_failed
from helpers.workspace import name_problem


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
        return name_problem(self.dataset, "dataset", "dataset name")


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
        return name_problem(self.name, "name", "model name")


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
        with ledger.stage(ws.root, "downloads", detail=cfg.source):  # paid time (helpers.ledger)
            res = download_dataset(cfg.source, folder, revision=cfg.revision or None, include=cfg.include or None,
                                   exclude=cfg.exclude or None, sha256=cfg.sha256 or None,
                                   cookies=cfg.cookies or None, username=cfg.username or None,
                                   password=cfg.password or None, limit=cfg.limit or None,
                                   cache_dir=ws.cache / "downloads")
    except (DownloadError, FileNotFoundError, ValueError) as exc:
        stage_failed(f"download failed: {exc}")
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
        with ledger.stage(ws.root, "downloads", detail=cfg.source):
            record = download_model(cfg.source, ws.models, cfg.name, revision=cfg.revision or None,
                                    sha256=cfg.sha256 or None, allow_pickle=cfg.allow_pickle, cache_dir=ws.hf_cache)
    except (DownloadError, FileNotFoundError, ValueError) as exc:
        stage_failed(f"model download failed: {exc}")
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

