"""Uploads to the Hugging Face Hub: the one place files leave this machine for a Hub repo (runs, LoRAs, later the
evaluation's model card), private by default, resumable, with errors a person can act on.

``upload_files({path_in_repo: local file}, repo_id)`` checks first what would fail late: a token that can only
read, a repo in a namespace that is not yours (nor one of your organisations'), an existing public repo when you
asked for a private one. Then it commits large files one per commit (a 7 GB model that lands stays landed) and the
small ones together; a file already on the Hub with the same content (size, then sha256 or git blob id) is
skipped, so running the same upload again after a failure sends only what is missing — and the Hub keeps the
bytes of a large file whose commit failed (LFS objects; chunks with Xet), so those are not sent twice either.
The token is never printed or saved here: every message goes through ``redact``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from helpers.hub import redact

LARGE_BYTES = 10 * 2**20  # the Hub stores files above this as LFS/Xet objects: one commit each


class HubUploadError(RuntimeError):
    """An upload could not start or stopped; the message says what to do (and what is already on the Hub)."""


@dataclass
class UploadResult:
    repo_id: str
    url: str
    private: bool
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already on the Hub with the same content
    sha256: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.url} ({'private' if self.private else 'public'}): {len(self.uploaded)} file(s) uploaded, "
                f"{len(self.skipped)} already there")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def git_blob_id(path: Path) -> str:
    """The git object id of a file (what the Hub reports for files stored in git, not LFS)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def explain(exc: Exception, repo_id: str, token: str | None) -> str:
    """A Hub or network error as a sentence with the fix (the token never in it)."""
    status, url, cause = None, "", exc
    while cause is not None and status is None:  # huggingface_hub wraps an LFS upload's HTTP error
        response = getattr(cause, "response", None)
        status = getattr(response, "status_code", None)
        url = str(getattr(getattr(response, "request", None), "url", "") or "")
        cause = cause.__cause__ or cause.__context__
    said = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, token)
    if status is not None and url and "/api/" not in url and ".git/info/lfs" not in url:
        return (f"the file storage refused the bytes ({status}; an upload link expires after a while, or the "
                f"connection broke): {said}")
    if status == 401:
        return f"the Hub refused the token (expired or revoked?): log in again in 00_setup ({said})"
    if status == 403:
        return (f"this token may not write to {repo_id}: a 'read' token, or a fine-grained one without write access "
                f"to {repo_id.split('/')[0]} — make a 'write' token at https://huggingface.co/settings/tokens ({said})")
    if status == 404:
        return f"{repo_id} was not found on the Hub (deleted while uploading?) ({said})"
    if status is not None:
        return f"the Hub answered {status}: {said}"
    return f"could not reach the Hub ({type(exc).__name__}: {said}): check this machine's connection"


def _identity(api, token: str) -> tuple[str, set[str], str | None]:
    """(user, namespaces the user may write to, token role) from the Hub's whoami."""
    info = api.whoami(token=token)
    role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
    user = str(info.get("name"))
    return user, {user} | {str(o.get("name")) for o in info.get("orgs") or []}, role


def prepare_repo(api, repo_id: str, token: str, private: bool) -> tuple[str, bool]:
    """Check the token and the namespace, create the repo (private by default) or check the one there; returns
    (full repo id, whether it is private). Raises ``HubUploadError`` before a byte is sent."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        user, namespaces, role = _identity(api, token)
    except Exception as exc:
        raise HubUploadError("cannot upload: " + explain(exc, repo_id, token)) from None
    if role == "read":
        raise HubUploadError("this token can only read: make a 'write' token at https://huggingface.co/settings/tokens "
                             "and log in with it (00_setup, or HF_TOKEN); nothing was uploaded")
    repo_id = repo_id if "/" in repo_id else f"{user}/{repo_id}"
    owner = repo_id.split("/")[0]
    if owner not in namespaces:
        raise HubUploadError(f"{repo_id} belongs to '{owner}', and this token is {user}'s (organisations: "
                             f"{', '.join(sorted(namespaces - {user})) or 'none'}): upload to {user}/"
                             f"{repo_id.split('/')[1]} instead; nothing was uploaded")
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        is_private = bool(api.repo_info(repo_id, token=token).private)
    except HfHubHTTPError as exc:
        raise HubUploadError("cannot upload: " + explain(exc, repo_id, token)) from None
    if private and not is_private:
        raise HubUploadError(f"{repo_id} already exists and is public: what you upload would be public. Upload "
                             "with private=False (--public) if you mean it, or choose another repo name")
    return repo_id, is_private


def remote_files(api, repo_id: str, token: str) -> dict[str, object]:
    """{path: RepoFile} of what the repo holds now (empty for a new repo)."""
    return {f.path: f for f in api.list_repo_tree(repo_id, recursive=True, token=token) if hasattr(f, "blob_id")}


def already_there(local: Path, remote) -> tuple[bool, str | None]:
    """(same content on the Hub, the local sha256 when it had to be computed)."""
    if remote is None or remote.size != local.stat().st_size:
        return False, None
    if remote.lfs is not None:
        digest = sha256_of(local)
        return digest == remote.lfs.sha256, digest
    return git_blob_id(local) == remote.blob_id, None


def upload_files(files: dict[str, Path], repo_id: str, *, private: bool = True, token: str | None = None,
                 endpoint: str | None = None, message: str = "tunebook upload",
                 echo: Callable[[str], None] = print) -> UploadResult:
    """Upload ``files`` (path in the repo -> local file) to ``repo_id`` (``name`` = under your user); see the
    module docstring. Raises ``HubUploadError`` saying what is on the Hub and that running it again resumes."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise HubUploadError("not logged in to the Hub: paste a 'write' token in 00_setup (or set HF_TOKEN)")
    missing = [str(p) for p in files.values() if not Path(p).is_file()]
    if missing:
        raise HubUploadError(f"not found: {', '.join(missing[:5])}; nothing was uploaded")
    api = HfApi(endpoint=endpoint)
    repo_id, is_private = prepare_repo(api, repo_id, token, private)
    result = UploadResult(repo_id, f"{api.endpoint}/{repo_id}", is_private)
    try:
        there = remote_files(api, repo_id, token)
    except Exception as exc:
        raise HubUploadError("cannot list the repo: " + explain(exc, repo_id, token)) from None
    pending = []
    for path_in_repo, local in files.items():
        same, digest = already_there(Path(local), there.get(path_in_repo))
        if digest:
            result.sha256[path_in_repo] = digest
        (result.skipped if same else pending).append(path_in_repo)
    large = [p for p in pending if Path(files[p]).stat().st_size > LARGE_BYTES]
    batches = [[p] for p in large] + ([[p for p in pending if p not in large]] if len(pending) > len(large) else [])
    for batch in batches:
        echo(f"uploading {', '.join(batch[:3])}{' ...' if len(batch) > 3 else ''} to {repo_id}")
        try:
            api.create_commit(repo_id, [CommitOperationAdd(p, str(files[p])) for p in batch],
                              commit_message=f"{message}: {', '.join(batch[:3])}", token=token)
        except Exception as exc:
            done = len(result.uploaded) + len(result.skipped)
            raise HubUploadError(
                f"upload stopped at {batch[0]}: {explain(exc, repo_id, token).rstrip('.')}. {done} of {len(files)} file(s) are "
                f"on the Hub ({result.url}); run the same upload again to send the rest (what is there is skipped)"
            ) from None
        result.uploaded += batch
    return result
