"""``upload_evaluated``: the evaluated run to a Hub repo through ``helpers.hub.upload`` (private by default,
resumable, the token never printed): the recommended checkpoint, its LoRA, the model card with its samples, the
evaluation's numbers, and ``tunebook.json`` naming the run (so a repo of another run is never overwritten
unless asked)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers.changes import write_text_atomic
from helpers.evaluation.settings import EvaluationError
from helpers.workspace import Workspace

MARKER = "tunebook.json"


def evaluated_files(ws: Workspace, run_name: str) -> dict[str, Path]:
    """{path in the repo: local file}: README.md + samples, model, LoRA, metrics, and the marker."""
    from helpers.evaluation.card import CARD_NAMES, SAMPLES_DIR, write_model_card
    from helpers.evaluation.run import EVAL_DIR, load_evaluation

    data = load_evaluation(ws, run_name)
    folder = ws.run(run_name).root / EVAL_DIR
    if not (folder / CARD_NAMES["hub"]).is_file():
        write_model_card(ws, run_name, None, target="hub")
    files = {"README.md": folder / CARD_NAMES["hub"], "evaluation/metrics.json": folder / "metrics.json"}
    files |= {f"{SAMPLES_DIR}/{p.name}": p for p in sorted((folder / SAMPLES_DIR).glob("*.png"))}
    rec = data.get("recommendation")
    if rec:
        checkpoint = next(c for c in data["checkpoints"] if c["label"] == rec["checkpoint"])
        files[Path(checkpoint["file"]).name] = Path(checkpoint["file"])
        if rec.get("lora"):
            files[f"loras/{Path(rec['lora']).name}"] = Path(rec["lora"])
    else:
        final = data["checkpoints"][-1]["file"]
        files[Path(final).name] = Path(final)
    # the marker names the run only, so its git blob id identifies the run's repo across re-evaluations
    files[MARKER] = write_text_atomic(folder / MARKER, json.dumps({"run": run_name, "tool": "tunebook"}, indent=1))
    return files


def _other_run_name(api, repo_id: str, token: str) -> str | None:
    """The run named by the repo's marker (best effort: None when it cannot be read)."""
    from huggingface_hub.utils import build_hf_headers, get_session

    try:
        response = get_session().get(f"{api.endpoint}/{repo_id}/resolve/main/{MARKER}",
                                     headers=build_hf_headers(token=token), follow_redirects=True, timeout=30)
        return str(json.loads(response.content).get("run")) if response.status_code == 200 else None
    except Exception:
        return None


def check_repo_owner(api, repo_id: str, run_name: str, files: dict[str, Path], token: str, overwrite: bool) -> None:
    """Refuse a repo that holds something else: its marker names another run, or (no marker: an upload stopped
    before it landed, or not a tunebook repo) it holds files this upload does not have."""
    from helpers.hub.upload import git_blob_id

    try:
        there = {f.path: f for f in api.list_repo_tree(repo_id, recursive=True, token=token) if hasattr(f, "blob_id")}
    except Exception:  # not there yet (or not visible: prepare_repo says why)
        return
    if not there or overwrite:
        return
    marker = there.get(MARKER)
    if marker is not None:
        if marker.blob_id == git_blob_id(files[MARKER]):
            return  # this run's repo: upload again / resume
        other = _other_run_name(api, repo_id, token)
        what = f"run {other!r}" if other else "another run (its tunebook.json names a different run)"
    else:
        foreign = sorted(set(there) - set(files) - {".gitattributes"})
        if not foreign:
            return  # an earlier upload of this run that stopped halfway
        what = f"other files ({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''})"
    raise EvaluationError(f"{repo_id} already holds {what}: choose another repo name, or pass overwrite=True "
                          "(--overwrite) to upload this run into it anyway; nothing was uploaded")


def upload_evaluated(workspace, run_name: str, repo_id: str, *, token: str | None = None, private: bool = True,
                     overwrite: bool = False, progress=None, endpoint: str | None = None, echo=print):
    """Upload the evaluated run (see the module docstring); recorded in the run's ``uploads.json`` only when
    every file is on the Hub. A failure says what is there and that running it again sends the rest."""
    from huggingface_hub import HfApi, get_token

    from helpers import ledger
    from helpers.hub.upload import HubUploadError, prepare_repo, upload_files
    from helpers.results import _record

    del progress  # huggingface_hub draws its own bars for large files
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace, create=False)
    if not repo_id or not repo_id.strip():
        raise EvaluationError("repo_id: name the Hub repo (owner/name, or name under your user)")
    files = evaluated_files(ws, run_name)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise EvaluationError(f"not found: {', '.join(missing[:4])}: evaluate again (files were moved); nothing "
                              "was uploaded")
    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise HubUploadError("not logged in to the Hub: paste a 'write' token in 00_setup (or set HF_TOKEN)")
    api = HfApi(endpoint=endpoint)
    full_id, _ = prepare_repo(api, repo_id.strip(), token, private)  # token rights and namespace, before a byte
    check_repo_owner(api, full_id, run_name, files, token, overwrite)
    with ledger.stage(ws.root, "upload", detail=full_id):
        result = upload_files(files, full_id, private=private, token=token, endpoint=endpoint,
                              message=f"tunebook evaluated run {run_name}", echo=echo)
    _record(ws.run(run_name), result.url, files, "hub")
    return result
