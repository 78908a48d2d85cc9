"""What a person does in a notebook, step by step in the browser, where a notebook needs more than run-all.

00_setup: type a workspace (the form answers as you type), paste a token, save, run; the typed values reach
the config and the report, and the token never appears on screen, in a saved TOML or in the saved notebook.
04_train: type an invalid value and see it marked; launch a run, see live progress while the kernel stays free
(another cell runs meanwhile), reload the page mid-run and see progress again (the training is a detached process;
the monitor refreshes from a background thread, and the Watch cell re-attaches to the run).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import tomllib
from conftest import OUT, ROOT
from labpage import FormView

FAKE_TOKEN = "hf_" + "BrowserTestNotARealToken" + "x" * 12


@pytest.fixture
def short_tmp():
    """A short temp folder: its paths show in the README screenshot."""
    folder = Path(tempfile.mkdtemp(prefix="tb-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_setup_form_like_a_person(page, lab, short_tmp):
    page.open("00_setup.ipynb")
    page.run_all()
    forms = FormView.all_in(page)
    assert len(forms) == 2, f"00_setup should show the setup form and the clean-up form, found {len(forms)}"
    form = forms[0]  # the setup form comes first; the clean-up form is near the end
    typed = short_tmp / "my-project"
    form.fill("workspace", str(typed))
    form.wait_for_text("path does not exist \\(yet\\)")  # answered by the kernel while typing
    form.fill("HF token", FAKE_TOKEN)
    saved = short_tmp / "setup.toml"
    form.save_to(saved)
    data = tomllib.loads(saved.read_text())
    assert data["workspace"] == str(typed), f"the typed workspace did not reach the config: {data}"
    assert FAKE_TOKEN not in saved.read_text(), "the token was written into a saved config"

    page.run_cell(2)  # Run: opens the typed workspace, tries the token (offline: refused, redacted)
    page.run_cell(3)  # Inspect
    out = page.outputs_text()
    assert str(typed) in out, f"the report does not show the typed workspace:\n{out[-1500:]}"
    assert typed.is_dir(), "running 00_setup did not create the typed workspace"
    assert not page.tracebacks(), "\n".join(page.tracebacks())
    assert FAKE_TOKEN not in page.page.content(), "the token is visible in the page"

    page.page.keyboard.press("Control+s")  # a person saves the notebook; widget state must not carry the token
    deadline = time.monotonic() + 20
    while page.state()["dirty"] and time.monotonic() < deadline:
        time.sleep(0.3)
    saved_nb = (lab.root / "notebooks" / "00_setup.ipynb").read_text()
    assert FAKE_TOKEN not in saved_nb, "the saved notebook contains the token"
    assert not page.console_errors, page.console_report()
    page.screenshot(OUT / "00_setup-typed.png")
    # The README's picture: the form as typed and the report below it. Refreshed in docs/ on request only,
    # so an ordinary run leaves the tree clean.
    docs = ROOT / "docs" / "screenshots" if os.environ.get("TUNEBOOK_UPDATE_DOCS") == "1" else OUT
    shot = page.picture_of_cell(1, docs / "00_setup.png")
    assert shot.stat().st_size < 300_000, f"{shot} is {shot.stat().st_size} bytes: too big for the README"


def _monitor_step(page) -> tuple[int, int] | None:
    """The step the training monitor shows ('step 12/240'), or None when no monitor is on screen."""
    text = "\n".join(page.page.locator(".jp-Notebook .widget-html-content").all_text_contents())
    found = re.findall(r"step (\d+)/(\d+)", text)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def _wait_for_progress(page, after: int, timeout: float = 120) -> tuple[int, int]:
    """Wait until the monitor shows a step beyond ``after`` (it updates by itself: nobody clicks)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = _monitor_step(page)
        if last and last[0] > after:
            return last
        time.sleep(0.5)
    raise AssertionError(f"the monitor did not move past step {after} in {timeout:.0f} s (shows {last})")


def _shown_images(page) -> list[tuple[int, int]]:
    """(width, height) of every decoded picture on screen in the outputs (the monitor's chart and samples)."""
    return [tuple(s) for s in page.page.evaluate("""() => [...document.querySelectorAll(
        '.jp-Notebook .jp-OutputArea-output img')].filter(img => img.complete && img.naturalWidth > 0
        && img.getClientRects().length > 0).map(img => [img.naturalWidth, img.naturalHeight])""")]


def _wait_for_pictures(page, count: int, timeout: float = 90.0) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = _shown_images(page)
        if len(shown) >= count:
            return shown
        page.page.wait_for_timeout(500)
    raise AssertionError(f"the monitor shows {len(_shown_images(page))} pictures after {timeout:.0f} s, expected "
                         f"{count} (loss chart and samples)")


@pytest.mark.skipif(not (ROOT / "notebooks" / "04_train.ipynb").exists(), reason="no training notebook yet")
def test_training_progress_survives_reload(page, lab):
    page.open("04_train.ipynb")
    page.run_cell(0)  # imports
    page.run_cell(1)  # the form
    (form,) = FormView.all_in(page)
    form.fill("epochs", "0")  # invalid (min 1): pre-flight must refuse it and mark the field
    page.run_cell(2)
    assert "\u26a0" in form.message("epochs"), f"no warning next to 'epochs' for 0: {form.text()[-800:]}"
    assert "problem" in form.text(), "the form does not say that a field needs fixing"
    form.fill("epochs", "40")  # long enough to reload mid-run on a CPU
    page.run_cell(2)  # pre-flight, now clean
    assert not page.tracebacks(), "\n".join(page.tracebacks())
    page.run_cell(3)  # launch (detached)
    page.run_cell(4, timeout=30)  # watch: returns at once, the kernel stays free (a blocking watch times out here)
    first = _wait_for_progress(page, after=0)  # the monitor moves with no cell running
    page.run_cell(5, timeout=30)  # a later cell (what the run wrote so far) runs while the training goes on
    assert "checkpoints" in page.outputs_text(5), page.outputs_text(5)
    second = _wait_for_progress(page, after=first[0])
    assert second[1] >= 40, f"the run does not have the typed 40 epochs' steps: {second}"
    # the samples panel: the template's prompts drawn at step 0 (and every epoch), a row per prompt over time
    assert len(_wait_for_pictures(page, 2)) >= 2

    page.page.on("dialog", lambda d: d.accept())  # "leave with unsaved changes?" -> yes, as a person would
    page.reload()
    page.page.wait_for_timeout(3000)
    if _monitor_step(page) is None:  # not restored by itself: the notebook's way is to re-run Watch
        page.wait_for_kernel(timeout=60)  # idle: nothing runs in the kernel while the monitor watches
        page.run_cell(4, timeout=30)
    again = _wait_for_progress(page, after=second[0])
    later = _wait_for_progress(page, after=again[0])
    assert later[0] > second[0], "progress after the reload does not continue the run"
    page.screenshot(OUT / "04_train-after-reload.png")
    assert not page.tracebacks(), "\n".join(page.tracebacks())
    assert not page.broken_images(), f"broken images in the monitor: {page.broken_images()}"
    assert not page.console_errors, page.console_report()
    # Stop it like a person: the notebook's stop call in a new cell (the kernel is free; no interrupt needed).
    page.page.evaluate("() => window.jupyterapp.commands.execute('notebook:insert-cell-below')")
    page.page.locator(".jp-Notebook .jp-Cell.jp-mod-active .cm-content").click()  # type into it, not shortcuts
    page.page.keyboard.type("runner.stop_job(run)")
    page.page.keyboard.press("Shift+Enter")
    page.wait_idle(120)
    assert re.search(r"JobStatus\(state='(stopped|finished)'", page.outputs_text()), page.outputs_text()[-1500:]
