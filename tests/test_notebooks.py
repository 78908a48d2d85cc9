"""Every notebook in notebooks/: hygiene (thin, stripped, one shape) and a headless run on the demo workspace.

A notebook added later joins both automatically. The run uses nbclient with the venv's kernel, on a demo
workspace made by ``python -m helpers demo`` (so each notebook finds what the earlier stages wrote), in
order; executed copies are kept under ``test-output/notebooks/`` for a look.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
OUT = ROOT / "test-output" / "notebooks"
MAX_CELL_LINES = 12


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ is empty"
    assert NOTEBOOKS[0].name.startswith("00_setup")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_hygiene(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "tunebook", "kernelspec must be 'tunebook'"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), "start with a markdown title"
    assert "Reads" in first.source and "Writes" in first.source, "the title cell says what it reads and writes"
    cells = code_cells(nb)
    assert cells, "no code cells"
    import_cells = []
    for i, cell in enumerate(cells):
        assert not cell.outputs and cell.execution_count is None, f"code cell {i} has outputs: strip them"
        lines = [ln for ln in cell.source.splitlines() if ln.strip()]
        assert len(lines) <= MAX_CELL_LINES, f"code cell {i} has {len(lines)} lines (max {MAX_CELL_LINES})"
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"code cell {i} defines a function/class: move it into helpers/"
            assert not isinstance(node, ast.Global), f"code cell {i} uses `global`"
        if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body):
            import_cells.append(i)
    assert import_cells == [0], f"exactly one import cell, the first code cell (imports found in cells {import_cells})"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, demo_workspace, monkeypatch):
    import nbclient

    monkeypatch.setenv("TUNEBOOK_WORKSPACE", str(demo_workspace))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(ROOT)}})
    try:
        client.execute()
    finally:
        OUT.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, OUT / path.name)
    for i, cell in enumerate(code_cells(nb)):
        for out in cell.outputs:
            text = out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
            assert out.get("output_type") != "error", f"cell {i} raised"
            assert "Traceback (most recent call last)" not in text, f"cell {i} printed a traceback:\n{text[-2000:]}"
    assert os.environ.get("TUNEBOOK_WORKSPACE") == str(demo_workspace)
