"""Hugging Face Hub account: log in without ever echoing or writing the token anywhere but HF's token file.

Uploads live beside this in ``helpers.hub.upload`` (the one uploader: runs, LoRAs, evaluation results), and the
command line in ``python -m helpers.hub`` (upload, pack, remind).

The token comes from a password field or ``HF_TOKEN``; it is checked with the Hub, stored where
``huggingface_hub`` keeps it (``$HF_HOME/token``, inside the workspace after setup.sh), and never printed,
logged, saved into a notebook or a config. Every error message passes through ``redact``.
"""

from __future__ import annotations

import os
import re

TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{6,}")


class HubLoginError(RuntimeError):
    pass


def redact(text: str, token: str | None = None) -> str:
    """Text with any Hugging Face token (and the given token) replaced by ``hf_***``."""
    if token:
        text = text.replace(token, "hf_***")
    return TOKEN_RE.sub("hf_***", text)


def login(token: str | None = None) -> str:
    """Check the token with the Hub and store it for huggingface_hub; returns the user name.

    ``token`` None -> ``HF_TOKEN`` from the environment. Raises ``HubLoginError`` with a redacted message.
    """
    import huggingface_hub
    from huggingface_hub import hf_api

    token = (token or os.environ.get("HF_TOKEN") or "").strip()
    if not token:
        raise HubLoginError("no token: paste a token from https://huggingface.co/settings/tokens "
                            "(a 'read' token is enough to download; 'write' to upload) or set HF_TOKEN")
    if not token.startswith("hf_"):
        raise HubLoginError("that does not look like a Hugging Face token (they start with 'hf_')")
    try:
        info = hf_api.whoami(token)
        huggingface_hub.login(token=token, add_to_git_credential=False, skip_if_logged_in=False)
    except Exception as exc:  # network down, 401, ...: say which, never echo the token
        raise HubLoginError("login failed: " + redact(str(exc), token) +
                            " (check the token, and that this machine can reach huggingface.co)") from None
    return str(info.get("name", "?"))


def current_user() -> str | None:
    """The logged-in user name, or None (no token saved, or the Hub is unreachable)."""
    from huggingface_hub import get_token, hf_api

    token = get_token()
    if not token:
        return None
    try:
        return str(hf_api.whoami(token).get("name"))
    except Exception:
        return None


def login_message(token: str) -> str:
    """Log in when a token was given (00_setup's form); a one-line outcome either way, never the token."""
    if not token.strip():
        user = current_user() if os.environ.get("HF_HUB_OFFLINE") != "1" else None
        return f"logged in to the Hub as {user}" if user else "no Hugging Face token given (only public repos)"
    try:
        return f"logged in to the Hub as {login(token)}"
    except HubLoginError as exc:
        return str(exc)
