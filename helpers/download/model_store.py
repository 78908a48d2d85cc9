"""Base models stored once under the workspace's ``models/<name>/`` with ``model.json`` (source, sha256,
SDXL / SD 1.5, epsilon / v): from a Hub repo, a single-file URL or a local file/folder; pickles refused
unless the user opts in."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path

from helpers.changes import sha256_file, write_text_atomic
from helpers.download.archives import copy_folder
from helpers.download.hub_files import download_from_hub
from helpers.download.sources import MODEL_SUFFIXES, PICKLE_SUFFIXES, DownloadError, auth_headers, detect_source
from helpers.download.transfer import check_free_space, download_url
from helpers.workspace import check_name


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
        record.update(_store_diffusers(src, source, folder, revision=revision, include=include, exclude=exclude,
                                       cache_dir=cache_dir, endpoint=endpoint, progress=progress))
        record.update(recognise_model(folder, allow_pickle))
    else:
        path = _store_single_file(src, source, folder, sha256=sha256, allow_pickle=allow_pickle, link=link,
                                  progress=progress)
        digest = sha256_file(path, progress)
        if sha256 and digest != sha256.lower():
            raise DownloadError(f"{path}: sha256 {digest} does not match the expected {sha256}")
        record.update(kind="single_file", path=str(path), file=path.name, size=path.stat().st_size,
                      sha256=digest, autov2=digest[:10])
        record.update(recognise_model(path, allow_pickle))
    write_text_atomic(record_path, json.dumps(record, indent=1))
    return record


def _store_diffusers(src, source: str, folder: Path, *, revision, include, exclude, cache_dir, endpoint,
                     progress: bool) -> dict[str, object]:
    """A diffusers model (Hub repo or local folder) into ``folder``; returns its record fields."""
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
    return {"kind": "diffusers", "path": str(folder),
            "files": {str(p.relative_to(folder)): sha256_file(p, progress) for p in weights}}


def _store_single_file(src, source: str, folder: Path, *, sha256, allow_pickle: bool, link: bool,
                       progress: bool) -> Path:
    """A single-file checkpoint (URL or local file) into ``folder``; pickles refused unless allowed."""
    if src.kind in ("url", "civitai"):
        headers, hint = auth_headers(src)
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
    return path


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

