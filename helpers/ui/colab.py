"""Google Colab: detect it, make ipywidgets render there, and keep the workspace on Google Drive.

Colab runs its own Python kernel and its own front end. Third-party widget models (ours are plain ipywidgets,
but Colab treats anything beyond its built-in set as "custom") render only after
``google.colab.output.enable_custom_widget_manager()``; ``config_form`` calls ``enable_colab_widgets()`` for
you, so a notebook needs no Colab-only cell. ``/content`` is wiped with the runtime: the workspace belongs on
Drive (``helpers.workspace.default_root`` already prefers ``/content/drive/MyDrive/tunebook`` when Drive is
mounted), and ``drive_hint()`` says how to mount it. Where widgets still do not render, every form has a
plain-cell fallback (``PLAIN_CELL_FALLBACK``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

DRIVE_MOUNT = Path("/content/drive")
DRIVE_WORKSPACE = DRIVE_MOUNT / "MyDrive" / "tunebook"

PLAIN_CELL_FALLBACK = (
    "Widgets not showing? The form still works from a plain cell: its value lives in the kernel, not the browser.\n"
    "  cfg = form.value                                          # the current (validated) values\n"
    "  form.value = dataclasses.replace(cfg, some_field=...)     # change one, then run the next cell\n"
    "or build the config with no form at all:\n"
    "  cfg = helpers.config.build_config(ConfigClass, template='name', overrides={'some_field': ...})"
)

_enabled = False


def is_colab(env: dict[str, str] | None = None, modules: dict | None = None) -> bool:
    """True inside a Google Colab kernel (its own variables, or its ``google.colab`` package already loaded)."""
    env = os.environ if env is None else env
    modules = sys.modules if modules is None else modules
    if "google.colab" in modules:
        return True
    if "COLAB_RELEASE_TAG" in env or "COLAB_GPU" in env:
        return importlib.util.find_spec("google") is not None and importlib.util.find_spec("google.colab") is not None
    return False


def enable_colab_widgets(env: dict[str, str] | None = None) -> bool:
    """On Colab, turn on the custom widget manager (once per kernel); elsewhere do nothing.

    Returns True when the manager is (now) enabled. A Colab without the call shows forms as blank space or
    "Error displaying widget"; JupyterLab and Notebook 7 need nothing (their widget manager comes with
    jupyterlab_widgets, which setup.sh puts into the Jupyter server's environment).
    """
    global _enabled
    if _enabled:
        return True
    if not is_colab(env):
        return False
    from google.colab import output  # only importable on Colab

    output.enable_custom_widget_manager()
    _enabled = True
    return True


def drive_is_mounted(mount: Path = DRIVE_MOUNT) -> bool:
    return (mount / "MyDrive").is_dir()


def drive_hint(workspace: str | os.PathLike | None = None, mount: Path = DRIVE_MOUNT,
               env: dict[str, str] | None = None) -> str:
    """One line for 00_setup on Colab: where the workspace is, and how to keep it when the runtime goes.

    Empty off Colab. ``workspace`` is the root chosen so far (None: not chosen yet).
    """
    if not is_colab(env):
        return ""
    if not drive_is_mounted(mount):
        return ("Colab: Google Drive is not mounted, so the workspace would live on /content and vanish with the "
                "runtime. Mount it first (from google.colab import drive; drive.mount('/content/drive')), then run "
                f"this notebook again: the workspace goes to {DRIVE_WORKSPACE}.")
    if workspace is not None and not str(Path(workspace)).startswith(str(mount)):
        return (f"Colab: Drive is mounted, but the workspace is {workspace}, which Colab wipes with the runtime. "
                f"Leave the workspace field empty (default {DRIVE_WORKSPACE}) or pick a folder under {mount}/MyDrive.")
    return f"Colab: the workspace is on Google Drive ({workspace or DRIVE_WORKSPACE}); it survives the runtime."
