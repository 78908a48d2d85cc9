"""Results off the machine: a run's files that matter, uploaded to a Hub repo (``helpers.hub.upload``) or packed
into one archive to download, and the reminder that nothing on a rented instance survives destroying it.

A stopped instance still bills its disk; only destroying it stops the meter, and destroying deletes the disk. So
before that: ``upload_run`` (private by default, resumable, recorded in the run's ``uploads.json``) or
``pack_run`` (one uncompressed zip in ``exports/`` with its size and sha256, and a ``.sha256`` file beside it for
``sha256sum -c`` after the download: Jupyter's file browser, right-click, Download). ``remind(ws)`` says per run
what has left the machine and what has not; notebooks 04-06 call it.

What a run's results are (``KINDS``): ``final`` model file(s), ``intermediate`` model files, ``loras`` extracted
from it (``exports/<run>-*``), its ``config``, ``log`` (log, summary, pre-flight), ``samples``, and the newest
training ``state`` (to continue on another machine).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from helpers.changes import write_text_atomic
from helpers.config import option
from helpers.workspace import RunPaths, Workspace

KINDS = {"final": "final model", "intermediate": "intermediate model files", "loras": "LoRAs from the run",
         "config": "config.toml", "log": "log, summary and pre-flight", "samples": "sample images",
         "state": "newest training state"}
DEFAULT_KINDS = ("final", "loras", "config", "log", "samples")
DESTROY_WARNING = ("Nothing on this instance survives destroying it: a stopped instance still bills its disk, "
                   "destroying it stops the meter and deletes everything here.")


class ResultsError(ValueError):
    """Nothing to upload or pack, or no room for the archive; the message says what to do."""


@dataclass
class UploadConfig:
    """Notebooks 04/05: get a run's results off this machine (nothing happens until you choose an action)."""

    format_version: ClassVar[int] = 1
    action: Literal["nothing", "upload", "pack"] = option("nothing", help="upload to a Hugging Face repo, or pack "
                                                          "into one zip in exports/ to download")
    run: str = option("", help="the run whose results go")
    include: list[str] = option(list(DEFAULT_KINDS), help=f"which results: {', '.join(KINDS)}")
    repo: str = option("", help="Hub repo for 'upload': owner/name, or name (under your user)")
    private: bool = option(True, help="a new repo is private (uncheck for public)")
    stop_instance_when_done: bool = option(False, help="stop this rented machine after a successful upload "
                                           "(vastai / runpodctl; the disk still bills until you destroy it)")

    def check(self) -> dict[str, str]:
        problems = {}
        if self.action == "upload" and not self.repo.strip():
            problems["repo"] = "name the Hub repo to upload to (owner/name, or name under your user)"
        if self.action != "nothing" and not self.run:
            problems["run"] = "choose the run whose results go"
        unknown = sorted(set(self.include) - set(KINDS))
        if unknown:
            problems["include"] = f"unknown: {', '.join(unknown)}; choose from {', '.join(KINDS)}"
        return problems


def run_files(ws: Workspace, run: RunPaths, include=DEFAULT_KINDS) -> dict[str, Path]:
    """{path in the repo or archive: local file} of a run's chosen ``KINDS``."""
    unknown = sorted(set(include) - set(KINDS))
    if unknown:
        raise ResultsError(f"unknown result kind(s) {unknown}: choose from {', '.join(KINDS)}")
    files: dict[str, Path] = {}
    if "final" in include:
        files |= {p.name: p for p in run.final_models()}
    if "intermediate" in include:
        files |= {f"checkpoints/{p.name}": p for p in run.periodic_checkpoints()}
    if "loras" in include and ws.exports.is_dir():
        files |= {f"loras/{p.name}": p for p in sorted(ws.exports.glob(f"{run.name}-*"))
                  if p.is_file() and p.suffix in (".safetensors", ".json")}
    named = {"config": [run.config], "log": [run.log, run.summary, run.preflight]}
    for kind, paths in named.items():
        if kind in include:
            files |= {p.name: p for p in paths if p.is_file()}
    if "samples" in include and run.samples.is_dir():
        files |= {f"samples/{p.relative_to(run.samples).as_posix()}": p for p in sorted(run.samples.rglob("*"))
                  if p.is_file()}
    if "state" in include and run.states():
        newest = run.states()[-1]
        files |= {f"state/{newest.name}/{p.name}": p for p in sorted(newest.iterdir()) if p.is_file()}
    return files


def _record(run: RunPaths, where: str, files: dict[str, Path], kind: str) -> None:
    """Add to ``uploads.json``: where these files went, with the size and time that identify each version."""
    try:
        data = json.loads(run.uploads.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {"uploads": []}
    data["uploads"].append({"kind": kind, "where": where, "time": time.time(),
                            "files": {name: {"local": str(p), "size": p.stat().st_size,
                                             "mtime": p.stat().st_mtime} for name, p in files.items()}})
    write_text_atomic(run.uploads, json.dumps(data, indent=1))


def uploaded_versions(run: RunPaths) -> dict[str, str]:
    """{local file: where it went} for every file version uploaded to the Hub that is still unchanged here."""
    try:
        data = json.loads(run.uploads.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out = {}
    for entry in data.get("uploads", []):
        if entry["kind"] != "hub":
            continue
        for info in entry["files"].values():
            p = Path(info["local"])
            if p.is_file() and p.stat().st_size == info["size"] and p.stat().st_mtime == info["mtime"]:
                out[str(p)] = entry["where"]
    return out


def upload_run(ws: Workspace, run: RunPaths, repo_id: str, include=DEFAULT_KINDS, *, private: bool = True,
               token: str | None = None, endpoint: str | None = None, echo=print):
    """Upload the run's chosen files (see ``helpers.hub.upload.upload_files``) and record them in the run."""
    from helpers import ledger
    from helpers.hub.upload import upload_files

    files = run_files(ws, run, include)
    if not files:
        raise ResultsError(f"run {run.name} has none of {', '.join(include)} yet: nothing to upload")
    with ledger.stage(ws.root, "upload", detail=repo_id):
        result = upload_files(files, repo_id, private=private, token=token, endpoint=endpoint,
                              message=f"tunebook run {run.name}", echo=echo)
    _record(run, result.url, files, "hub")
    return result


def _zip_files(files: dict[str, Path], tmp: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    total = sum(p.stat().st_size for p in files.values())
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive, \
            tqdm(total=total, unit="B", unit_scale=True, desc="packing", disable=not progress) as bar:
        for name, path in files.items():
            with open(path, "rb") as src, archive.open(zipfile.ZipInfo.from_file(path, name), "w",
                                                       force_zip64=True) as dst:
                for chunk in iter(lambda: src.read(1 << 22), b""):  # noqa: B023  (src is this loop's file)
                    dst.write(chunk)
                    bar.update(len(chunk))


def pack_run(ws: Workspace, run: RunPaths, include=DEFAULT_KINDS, out: Path | None = None,
             progress: bool = True) -> dict:
    """One uncompressed zip of the run's chosen files (models do not compress) in ``exports/``, written whole or
    not at all; returns its path, size and sha256 (also written beside it as ``<zip>.sha256``)."""
    files = run_files(ws, run, include)
    if not files:
        raise ResultsError(f"run {run.name} has none of {', '.join(include)} yet: nothing to pack")
    out = Path(out) if out else ws.exports / f"{run.name}-results.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    need = sum(p.stat().st_size for p in files.values()) + (64 << 20)
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise ResultsError(f"the archive needs {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free: upload to the Hub "
                           "instead (it needs no extra space), or free space (`python -m helpers.cleanup`)")
    tmp = out.with_name(f".{out.name}.part")
    try:
        _zip_files(files, tmp, progress)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    digest = hashlib.sha256()
    with open(out, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    write_text_atomic(out.with_name(out.name + ".sha256"), f"{digest.hexdigest()}  {out.name}\n")
    _record(run, str(out), files, "archive")
    return {"path": str(out), "bytes": out.stat().st_size, "sha256": digest.hexdigest(), "files": len(files)}


def remind(ws: Workspace, echo=print) -> list[str]:
    """The destroy warning, then per run: is its final model on the Hub, packed, or only here?"""
    lines = [DESTROY_WARNING]
    for name in ws.list_runs() if ws.runs.is_dir() else []:
        run = ws.run(name)
        finals = run.final_models()
        if not finals:
            continue
        uploaded = uploaded_versions(run)
        away = [uploaded[str(p)] for p in finals if str(p) in uploaded]
        packed = (ws.exports / f"{name}-results.zip").is_file()
        if len(away) == len(finals):
            lines.append(f"  {name}: final model on the Hub ({away[0]})")
        elif packed:
            lines.append(f"  {name}: packed in exports/{name}-results.zip — download it (right-click, Download) "
                         "before you destroy the instance")
        else:
            lines.append(f"  {name}: final model NOT off this machine yet: `python -m helpers.hub upload {name} "
                         f"--repo NAME` or `python -m helpers.hub pack {name}`")
    for line in lines:
        echo(line)
    return lines


def suggest_upload(ws: Workspace, include=DEFAULT_KINDS) -> UploadConfig:
    """The newest run with a final model (else the newest run) and these kinds; action 'nothing'."""
    runs = [ws.run(n) for n in ws.list_runs()] if ws.runs.is_dir() else []
    runs.sort(key=lambda r: r.root.stat().st_mtime, reverse=True)
    finished = [r for r in runs if r.final_models()]
    chosen = (finished or runs or [None])[0]
    return UploadConfig(run=chosen.name if chosen else "", include=list(include))


def run_results_step(ws: Workspace, cfg: UploadConfig):
    """The notebook cell: upload or pack as chosen (a problem is a message, not a traceback), then the reminder."""
    from helpers.hub.upload import HubUploadError
    from helpers.ui.errors import stage_failed

    done = None
    try:
        if cfg.action == "upload":
            done = upload_run(ws, ws.run(cfg.run), cfg.repo.strip(), cfg.include, private=cfg.private)
            print(done.summary())
        elif cfg.action == "pack":
            done = pack_run(ws, ws.run(cfg.run), cfg.include)
            print(f"{done['path']}: {done['bytes'] / 1e9:.2f} GB, {done['files']} files, sha256 {done['sha256']} "
                  "(Jupyter's file browser: right-click, Download; then `sha256sum -c` the .sha256 file)")
        else:
            print("nothing uploaded or packed: choose an action above")
    except (HubUploadError, ResultsError, ValueError) as exc:
        stage_failed(str(exc), "results")
        done = None
    remind(ws)
    if done is not None and cfg.action == "upload" and cfg.stop_instance_when_done:
        from helpers.instance import stop_instance

        stop_instance("upload finished")
    return done
