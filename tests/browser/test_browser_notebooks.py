"""Every notebook in notebooks/, in order, run in JupyterLab in headless Chromium: what a person would see.

A notebook added to notebooks/ joins automatically (same glob as the nbclient harness). Each one must open
with the `tunebook` kernel, run all cells, and leave: every widget rendered (no "Error displaying widget",
no "model not found", nothing stuck on "Loading widget…"), no error in the browser console, no Python
traceback in any output. Then every config form it shows is used like a person would: pick a template
(when it offers some), change a field and save (the change must reach the TOML), load a file with a wrong
key (the form must name it). A screenshot of each notebook lands in test-output/browser/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from conftest import OUT, ROOT
from labpage import FormView

# notebooks whose own browser test runs them in full and calls ``check_notebook`` (run once, not twice)
OWN_TEST = {"06_evaluate": "test_browser_evaluate.py"}
NOTEBOOKS = [p for p in sorted((ROOT / "notebooks").glob("*.ipynb")) if p.stem not in OWN_TEST]


def assert_clean(page, name: str, shot: Path) -> None:
    """What a person must not see after running: tracebacks, broken widgets, console errors."""
    tracebacks = page.tracebacks()
    assert not tracebacks, f"{name}: Python traceback(s) in the outputs (see {shot}):\n" + "\n".join(tracebacks)
    problems = page.widget_problems()
    assert not problems, f"{name}: widgets did not render: {problems} (see {shot})"
    broken = page.broken_images()
    assert not broken, f"{name}: images that show as broken (an empty Image widget?) (see {shot}): {broken}"
    assert not page.console_errors, f"{name}: browser console errors:\n{page.console_report()}"


def drive_form(form: FormView, folder: Path, tag: str) -> None:
    """Save, pick a template, change a field, save again, load a bad file: each with its visible answer."""
    first = folder / f"{tag}-a.toml"
    form.save_to(first)
    saved = tomllib.loads(first.read_text())
    assert saved.get("format_version"), f"{tag}: saved TOML has no format_version: {saved}"
    picker = form.template_picker()
    if picker.count():
        options = [o for o in picker.locator("option").all_inner_texts() if o != "(defaults)"]
        assert options, f"{tag}: the template dropdown offers no template"
        picker.select_option(label=options[0])
        form.wait_for_text(re.compile(rf"template {re.escape(options[0])} applied"))
    box = form.visible_checkbox()
    if box is not None:
        before = (folder / f"{tag}-b.toml")
        form.save_to(before)
        box.scroll_into_view_if_needed()
        box.click()
        after = folder / f"{tag}-c.toml"
        form.save_to(after)
        assert before.read_text() != after.read_text(), f"{tag}: ticking a checkbox did not reach the saved config"
    bad = folder / f"{tag}-bad.toml"
    bad.write_text("format_version = 1\nno_such_field = 3\n")
    form.load_from(bad)
    shown = form.wait_for_text("no_such_field")
    assert "Traceback" not in shown, f"{tag}: a wrong key in a file shows a traceback, not just the message"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_in_browser(path: Path, page, tmp_path):
    page.open(path.name)
    st = page.run_all()
    check_notebook(page, path, st, tmp_path)


def check_notebook(page, path: Path, st: dict, tmp_path: Path) -> None:
    """After run-all: every cell ran, nothing broken on screen, and every form used as a person would."""
    page.scroll_through()
    shot = page.screenshot(OUT / f"{path.stem}.png")
    assert all(c is not None for c in st["counts"]), \
        f"{path.name}: cells left unrun (a cell failed?) {st['counts']}; see {shot}\n" + "\n".join(page.tracebacks())
    assert_clean(page, path.name, shot)
    forms = FormView.all_in(page)
    for i, form in enumerate(forms):
        drive_form(form, tmp_path, f"{path.stem}-form{i}")
    page.screenshot(OUT / f"{path.stem}-forms.png")
    problems = page.widget_problems(wait=5)
    assert not problems, f"{path.name}: widgets broke while using the forms: {problems}"
    assert not page.console_errors, f"{path.name}: browser console errors while using the forms:\n{page.console_report()}"


def test_every_notebook_is_checked_in_the_browser():
    """A notebook left out of the loop above must have its own browser test that calls check_notebook."""
    here = Path(__file__).parent
    for stem, test_file in OWN_TEST.items():
        assert (ROOT / "notebooks" / f"{stem}.ipynb").is_file(), stem
        assert "check_notebook(" in (here / test_file).read_text(), f"{test_file} does not check {stem} fully"
