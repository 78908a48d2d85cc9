"""Hugging Face Hub repos (datasets and models) into a local folder: revision, include/exclude patterns, the saved
login's token, clear messages for gated, missing and offline cases."""

from __future__ import annotations

import os
from pathlib import Path

from helpers.download.sources import DownloadError, hub_token


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

