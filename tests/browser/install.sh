#!/usr/bin/env bash
# What the browser tests need, installed idempotently (./setup.sh --test calls this before pytest):
#   1. Debian's chromium at /usr/bin/chromium (never a browser download: Playwright drives the system one);
#   2. Playwright for Python in .venv (the driver only; PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD keeps it that way);
#   3. a SEPARATE Python env for the Jupyter server, as on Vast.ai/RunPod images: jupyterlab only, no
#      jupyterlab_widgets (the suite proves that helpers.environment.fix_widgets brings the matching one).
# Knobs: TUNEBOOK_PYTHON (python that builds the server env, default python3),
#        TUNEBOOK_BROWSER_SERVER_ENV (where the server env lives, default test-output/jupyter-server-env).
set -euo pipefail

PLAYWRIGHT_PIN="playwright==1.65.2"   # Python driver; launched with executable_path=/usr/bin/chromium
JUPYTERLAB_PIN="jupyterlab==4.6.6"    # the server version our requirements.txt also pins
CHROMIUM=/usr/bin/chromium

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
vpy="$repo/.venv/bin/python"
server_env="${TUNEBOOK_BROWSER_SERVER_ENV:-$repo/test-output/jupyter-server-env}"
py_boot="${TUNEBOOK_PYTHON:-python3}"

say() { printf '\033[1m[browser-tests]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[browser-tests] error:\033[0m %s\n' "$*" >&2; exit 1; }

[ -x "$vpy" ] || die "no $vpy: run bash setup.sh first (it creates .venv)."

# ---- 1. chromium from Debian -------------------------------------------------------------------------
if [ ! -x "$CHROMIUM" ]; then
  command -v apt-get >/dev/null || die "$CHROMIUM is missing and there is no apt-get: install Chromium at $CHROMIUM."
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "$CHROMIUM is missing and we are not root: run 'apt-get install chromium' as root."
    sudo=(sudo)
  fi
  say "installing Debian's chromium (apt-get)"
  "${sudo[@]}" apt-get update -qq || die "apt-get update failed; the browser tests need Debian's chromium."
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium \
    || die "apt-get install chromium failed; the browser tests cannot run without it."
fi
"$CHROMIUM" --version >/dev/null 2>&1 || die "$CHROMIUM is there but does not run ('$CHROMIUM --version' failed)."

# ---- 2. Playwright (driver only) in .venv --------------------------------------------------------------
want="${PLAYWRIGHT_PIN#*==}"
have="$("$vpy" -c 'import importlib.metadata as m; print(m.version("playwright"))' 2>/dev/null || true)"
if [ "$have" != "$want" ]; then
  say "installing $PLAYWRIGHT_PIN into .venv (no browser download)"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$vpy" -m pip install -q --disable-pip-version-check "$PLAYWRIGHT_PIN"
fi

# ---- 3. the Jupyter server's own env -------------------------------------------------------------------
want="${JUPYTERLAB_PIN#*==}"
have="$("$server_env/bin/python" -c 'import importlib.metadata as m; print(m.version("jupyterlab"))' 2>/dev/null || true)"
if [ "$have" != "$want" ]; then
  say "building the Jupyter server env at $server_env ($JUPYTERLAB_PIN, no widgets front end)"
  rm -rf "$server_env"
  "$py_boot" -m venv "$server_env" || die "'$py_boot -m venv' failed (Debian: apt-get install python3-venv)."
  "$server_env/bin/python" -m pip install -q --disable-pip-version-check "$JUPYTERLAB_PIN"
fi
say "ready: $("$CHROMIUM" --version 2>/dev/null | head -1); playwright $("$vpy" -c 'import importlib.metadata as m; print(m.version("playwright"))'); server env $server_env"
