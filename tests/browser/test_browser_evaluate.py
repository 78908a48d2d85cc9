"""06_evaluate as a person uses it: run all in JupyterLab, then open the report it wrote in Chromium.

The report is the file a person downloads and opens anywhere, offline: every picture in it must show (an
``<img>`` that loaded, ``naturalWidth > 0``) and opening it must ask nothing of the network.
"""

from __future__ import annotations

import re
from pathlib import Path

from conftest import OUT
from test_browser_notebooks import check_notebook


def test_evaluate_notebook_writes_a_report_whose_images_all_show(page, lab, demo_workspace, tmp_path):
    page.open("06_evaluate.ipynb")
    st = page.run_all(timeout=600)
    shot = page.screenshot(OUT / "06_evaluate-run.png")
    assert all(c is not None for c in st["counts"]), \
        f"cells left unrun (a cell failed?) {st['counts']}; see {shot}\n" + "\n".join(page.tracebacks())
    assert not page.tracebacks(), "\n".join(page.tracebacks())
    out = page.outputs_text()  # read before the forms are used (the generic check below drives them)
    assert "recommended: " in out, f"no recommendation shown:\n{out[-1500:]}"
    found = re.search(r"report: (\S+report\.html)", out)
    assert found, f"the notebook does not say where the report is:\n{out[-1500:]}"
    report = Path(found.group(1))
    assert report.is_file() and report.is_relative_to(Path(demo_workspace) / "runs"), report

    tab = page.page.context.new_page()
    asked = []
    tab.on("request", lambda r: asked.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
    tab.goto(report.as_uri())
    tab.wait_for_load_state("load")
    images = tab.evaluate("() => [...document.images].map(i => [i.alt, i.complete, i.naturalWidth])")
    tab.screenshot(path=str(OUT / "06_evaluate-report.png"), full_page=False)
    assert len(images) >= 5, f"the report shows only {len(images)} images"
    broken = [alt for alt, complete, width in images if not complete or width <= 0]
    assert not broken, f"{len(broken)} of {len(images)} images in {report} do not show: {broken[:5]}"
    assert "Recommended" in tab.content()
    assert not asked, f"opening the report asked the network for {asked[:3]}"
    tab.close()
    # what every notebook gets in test_browser_notebooks.py (06 runs once, here): clean screen, forms used
    check_notebook(page, Path("06_evaluate.ipynb"), st, tmp_path)
