"""The real-browser stage: JupyterLab 4 from its own Python env, the `tunebook` kernel, headless Chromium.

Set up the way a Vast.ai/RunPod box is: the Jupyter server runs from an environment that is NOT our .venv
(``test-output/jupyter-server-env``, built by ``tests/browser/install.sh`` with jupyterlab only); our
kernel is a registered kernelspec; the widget front end reaches the server only through
``helpers.environment.fix_widgets`` (proved here on every run: it is removed first). The kernel sees a demo
workspace (``helpers.demo.run_demo``) through TUNEBOOK_WORKSPACE. Nothing here touches the user's own
kernels, Jupyter settings or workspace: every Jupyter directory points into a temp folder, and the
notebooks run from copies (JupyterLab autosaves).

Missing Chromium/Playwright/server env is a FAILURE with the fix, never a skip: CI must not go green
without a browser. Deselect with ``-m "not browser"`` to leave this stage out on purpose.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "test-output" / "browser"
SERVER_ENV = Path(os.environ.get("TUNEBOOK_BROWSER_SERVER_ENV", ROOT / "test-output" / "jupyter-server-env"))
CHROMIUM = "/usr/bin/chromium"
# Flags that work on a closed-network, GPU-less, root machine (no background calls home, fresh profile).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
INSTALL_HINT = "run `bash tests/browser/install.sh` (./setup.sh --test does)"
# JupyterLab settings a fresh user would not change, set so the run is quiet and offline: no news or update
# checks (they call out to the internet), no LSP nagging.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension:notification": {"checkForUpdates": False, "fetchNews": "false"},
}


def pytest_collection_modifyitems(items):
    for item in items:  # everything that needs the server or the browser is a browser test
        if {"lab", "page", "browser"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.browser)


def _fail(msg: str) -> None:
    pytest.fail(msg, pytrace=False)


def _pkg_version(python: Path | str, name: str) -> str:
    res = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
                         capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else ""


@pytest.fixture(scope="session")
def server_python() -> Path:
    """The Jupyter server's interpreter (a separate env, as on rented-GPU images), held for this session.

    Two test sessions at once would remove and reinstall the widget front end under each other's running
    server (seen: ChunkLoadError 404s mid-run), so a second session waits for the first.
    """
    py = SERVER_ENV / "bin" / "python"
    if not py.exists() or not _pkg_version(py, "jupyterlab"):
        _fail(f"no JupyterLab server env at {SERVER_ENV}: {INSTALL_HINT}")
    if Path(sys.prefix).resolve() == SERVER_ENV.resolve():
        _fail("the browser tests must run from .venv, not from the Jupyter server env")
    with open(SERVER_ENV / ".browser-tests.lock", "w") as lock:
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    _fail(f"another browser-test session has held {SERVER_ENV} for 15 min; is one stuck?")
                time.sleep(2)
        yield py


@pytest.fixture(scope="session")
def widgets_fixed(server_python) -> str:
    """Remove jupyterlab_widgets from the server env, then let setup's fix put the matching one back."""
    from helpers.environment import fix_widgets

    if _pkg_version(server_python, "jupyterlab_widgets"):
        subprocess.run([str(server_python), "-m", "pip", "uninstall", "-y", "-q", "jupyterlab_widgets"], check=True)
    assert not _pkg_version(server_python, "jupyterlab_widgets"), "could not remove jupyterlab_widgets to start clean"
    note = fix_widgets(str(server_python), our_python=sys.executable)
    want, have = _pkg_version(sys.executable, "jupyterlab_widgets"), _pkg_version(server_python, "jupyterlab_widgets")
    assert want and have == want, f"fix_widgets left jupyterlab_widgets {have!r} in the server env, .venv has {want!r}: {note}"
    return note


@pytest.fixture(scope="session")
def browser_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="session")
def demo_workspace(browser_root) -> Path:
    from helpers.demo import run_demo

    root = browser_root / "workspace-demo"
    run_demo(root, echo=lambda *_: None)
    return root


@pytest.fixture(scope="session")
def kernel_prefix(browser_root, demo_workspace) -> Path:
    """The `tunebook` kernelspec, registered by the same function setup.sh uses, in a private prefix."""
    from helpers.environment import register_kernel

    prefix = browser_root / "kernel-prefix"
    spec_dir = register_kernel(str(demo_workspace), prefix=str(prefix))
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert Path(spec["argv"][0]).is_relative_to(sys.prefix), f"kernel would not run .venv's python: {spec['argv']}"
    return prefix


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running JupyterLab: its URL, token, the folder it serves, and a log."""

    def __init__(self, url: str, token: str, root: Path, log: Path, proc: subprocess.Popen):
        self.url, self.token, self.root, self.log, self.proc = url, token, root, log, proc

    def api(self, path: str, method: str = "GET", data: dict | None = None):
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     data=None if data is None else json.dumps(data).encode(),
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


@pytest.fixture(scope="session")
def lab(server_python, widgets_fixed, kernel_prefix, demo_workspace, browser_root):
    """JupyterLab on 127.0.0.1 (free port, token auth) serving copies of notebooks/ next to a copy-free repo."""
    jupyter = browser_root / "jupyter"
    for d in ("config", "data", "runtime", "workspaces", "settings"):
        (jupyter / d).mkdir(parents=True, exist_ok=True)
    # Settings overrides belong to the server's app dir; the env is ours (test-output), so writing there is fine.
    overrides = SERVER_ENV / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    overrides.parent.mkdir(parents=True, exist_ok=True)
    overrides.write_text(json.dumps(LAB_SETTINGS, indent=1))
    serve = browser_root / "serve"
    (serve / "notebooks").mkdir(parents=True, exist_ok=True)
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy2(nb, serve / "notebooks" / nb.name)
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "jupyter-server.log"
    port, token = _free_port(), secrets.token_hex(16)
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "JUPYTER_PATH")}
    env.update({
        # The server sees the user's world minus our venv: PATH without .venv/bin, as on a rented box.
        "PATH": os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin),
        "JUPYTER_PATH": str(kernel_prefix / "share" / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
        "JUPYTER_DATA_DIR": str(jupyter / "data"),
        "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(jupyter / "workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(jupyter / "settings"),
        "TUNEBOOK_WORKSPACE": str(demo_workspace),
        "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
    })
    cmd = [str(SERVER_ENV / "bin" / "jupyter-lab"), "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={serve}",
           "--KernelSpecManager.ensure_native_kernel=False",  # as Vast's image: only registered kernels
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=False"]
    if os.geteuid() == 0:  # CI and rented boxes run as root
        cmd.append("--allow-root")
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=serve, env=env, stdout=fh, stderr=subprocess.STDOUT)
    server = Lab(f"http://127.0.0.1:{port}", token, serve, log, proc)
    deadline = time.monotonic() + 90
    while True:
        try:
            server.api("/api/status")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                _fail(f"JupyterLab did not start (exit {proc.poll()}):\n{server.log_tail()}")
            time.sleep(0.5)
    specs = server.api("/api/kernelspecs")["kernelspecs"]
    assert "tunebook" in specs, f"the server does not see the tunebook kernel: {list(specs)}"
    yield server
    try:
        server.api("/api/shutdown", method="POST")
        proc.wait(timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        _fail(f"{CHROMIUM} is missing: {INSTALL_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _fail(f"playwright is not installed in .venv: {INSTALL_HINT}")
    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    except Exception as exc:  # the message says what Chromium printed
        pw.stop()
        _fail(f"Chromium did not start: {exc}")
    yield chromium
    chromium.close()
    pw.stop()


@pytest.fixture
def page(browser, lab, demo_workspace):
    """A fresh browser tab, recording console errors and uncaught page errors."""
    from labpage import LabPage

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = LabPage(context.new_page(), lab)
    yield tab
    context.close()
    for session in lab.api("/api/sessions") or []:  # one kernel per notebook is plenty on 2 cores
        lab.api(f"/api/sessions/{session['id']}", method="DELETE")
    _stop_training_jobs(demo_workspace)


def _stop_training_jobs(root: Path) -> None:
    """A test that failed mid-run must not leave a detached training eating the CPU."""
    try:
        from helpers import runner
        from helpers.workspace import Workspace
    except ImportError:  # no runner yet: nothing can have been started
        return
    ws = Workspace.open(root)
    for name in ws.list_runs():
        run = ws.run(name)
        if not runner.job_status(run).done:
            runner.stop_job(run, timeout=30)


@pytest.fixture(scope="session", autouse=True)
def _keep_workspace_pointer():
    """00_setup remembers the chosen workspace inside the venv; put the user's choice back afterwards."""
    from helpers.workspace import pointer_file

    path = pointer_file()
    before = path.read_bytes() if path.exists() else None
    yield
    if before is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(before)
