"""Every notebook in notebooks/, in order, run in JupyterLab in headless Chromium: what a person would see.

A notebook added to notebooks/ joins automatically (same glob as the nbclient harness). Each one must open
with the `tunebook` kernel, run all cells, and leave: every widget rendered (no "Error displaying widget",
no "model not found", nothing stuck on "Loading widget…"), no error in the browser console, no Python
traceback in any output. A screenshot of each lands in test-output/browser/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import OUT, ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_in_browser(path: Path, page):
    page.open(path.name)
    st = page.run_all()
    page.scroll_through()
    problems = page.widget_problems()
    shot = page.screenshot(OUT / f"{path.stem}.png")
    assert all(c is not None for c in st["counts"]), \
        f"{path.name}: cells left unrun (a cell failed?) {st['counts']}; see {shot}\n" + "\n".join(page.tracebacks())
    assert not page.tracebacks(), f"{path.name}: Python traceback(s) in the outputs (see {shot}):\n" + \
        "\n".join(page.tracebacks())
    assert not problems, f"{path.name}: widgets did not render: {problems} (see {shot})"
    assert not page.console_errors, f"{path.name}: browser console errors: {page.console_errors}"
