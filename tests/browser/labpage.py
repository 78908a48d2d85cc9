"""A JupyterLab tab driven like a person: open a notebook, use the menus, type into widgets, look at what shows.

Reads the page the way a person would (text on screen, widget placeholders, error boxes) and asks the
JupyterLab app object (``window.jupyterapp``, exposed by the test server) only to know when the kernel is
busy, which a person sees from the kernel indicator.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from pathlib import Path

# What a broken widget looks like on screen (ipywidgets 8 / jupyterlab_widgets 3).
WIDGET_FAILURES = ("Error displaying widget", "model not found", "Failed to load model class",
                   "Could not create a view", "Error rendering output item")
WIDGET_LOADING = ("Loading widget...", "Loading widget…")
TRACEBACK_RE = re.compile(r"Traceback \(most recent call last\)|^\w+(Error|Exception)\b.*Traceback", re.M)
# Console noise that is not ours and not a user-visible failure, each with why.
CONSOLE_IGNORED = (
    # The favicon of a busy kernel is requested before it exists on some versions; cosmetic.
    "favicon",
)

_STATE_JS = """() => {
  const app = window.jupyterapp;
  const w = app && app.shell && app.shell.currentWidget;
  if (!w || !w.sessionContext || !w.content || !w.content.widgets) return null;
  const s = w.sessionContext;
  const kernel = s.session && s.session.kernel;
  const cells = w.content.widgets.filter(c => c.model.type === 'code');
  return {
    ready: s.isReady, kernel: kernel ? kernel.status : null, kernelName: kernel ? kernel.name : null,
    dirty: w.context.model.dirty,
    counts: cells.map(c => c.model.executionCount),
    prompts: cells.map(c => (c.node.querySelector('.jp-InputPrompt') || {}).textContent || ''),
  };
}"""


class LabPage:
    """One browser tab on the test JupyterLab."""

    def __init__(self, page, lab):
        self.page, self.lab = page, lab
        self.console_errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.console_errors.append(f"uncaught: {exc}"))
        page.set_default_timeout(30_000)
        self.workspace = f"t{uuid.uuid4().hex[:8]}"  # a fresh Lab workspace: no tabs restored from earlier tests

    def _on_console(self, msg) -> None:
        if msg.type == "error" and not any(s in msg.text for s in CONSOLE_IGNORED):
            self.console_errors.append(msg.text[:400])

    def console_report(self, most: int = 6) -> str:
        """The first few distinct console errors, for an assertion message."""
        distinct = list(dict.fromkeys(self.console_errors))
        return "\n".join(distinct[:most]) + (f"\n... {len(distinct) - most} more" if len(distinct) > most else "")

    # ---- navigation -----------------------------------------------------------------------------------
    def open(self, name: str) -> None:
        """Open notebooks/<name> and wait until its kernel is up (a 'select kernel' dialog is a failure)."""
        self.name = name
        # Every test starts from the committed notebook (an earlier test may have saved cells or outputs).
        shutil.copy2(Path(__file__).resolve().parents[2] / "notebooks" / name, self.lab.root / "notebooks" / name)
        self.page.goto(f"{self.lab.url}/lab/workspaces/{self.workspace}/tree/notebooks/{name}?token={self.lab.token}")
        self.wait_for_kernel()
        self.page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # the notebook, not the file list

    def reload(self) -> None:
        """Reload the page; the kernel may still be busy (a cell running from before), so only wait for it."""
        self.page.reload()
        self.wait_for_kernel(idle=False)

    def state(self) -> dict | None:
        return self.page.evaluate(_STATE_JS)

    def wait_for_kernel(self, timeout: float = 120, idle: bool = True) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dialog = self.page.locator(".jp-Dialog")
            if dialog.count():
                raise AssertionError(f"a dialog blocks the notebook: {dialog.first.inner_text()[:500]}")
            st = self.state()
            if st and st["ready"] and (st["kernel"] == "idle" or (not idle and st["kernelName"])):
                assert st["kernelName"] == "tunebook", f"notebook opened with kernel {st['kernelName']!r}"
                return st
            time.sleep(0.25)
        raise AssertionError(f"kernel not ready after {timeout:.0f} s (state {self.state()}); server log:\n"
                             f"{self.lab.log_tail()}")

    # ---- running ------------------------------------------------------------------------------------------
    def menu(self, top: str, item: str) -> None:
        """Click a menu bar entry, then an item in it (as a person does)."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{re.escape(top)}$")).click()
        self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^{re.escape(item)}$")).first.click()

    def run_all(self, timeout: float = 300) -> dict:
        self.menu("Run", "Run All Cells")
        return self.wait_idle(timeout)

    def wait_idle(self, timeout: float = 300, settle: float = 1.0) -> dict:
        """Wait until no cell is queued or running and the kernel has stayed idle for ``settle`` seconds."""
        deadline, idle_since = time.monotonic() + timeout, None
        time.sleep(0.3)  # let the click reach the kernel
        while time.monotonic() < deadline:
            st = self.state()
            busy = st is None or st["kernel"] != "idle" or any("*" in p for p in st["prompts"])
            if busy:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= settle:
                return st
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: still running after {timeout:.0f} s: {self.state()}")

    def cell(self, index: int):
        """The index-th code cell (0-based, code cells only)."""
        return self.page.locator(".jp-Notebook .jp-CodeCell").nth(index)

    def run_cell(self, index: int, timeout: float = 300) -> dict:
        """Select a code cell by clicking its prompt, then Shift+Enter."""
        cell = self.cell(index)
        cell.scroll_into_view_if_needed()
        cell.locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Shift+Enter")
        return self.wait_idle(timeout)

    def outputs_text(self, index: int | None = None) -> str:
        scope = self.cell(index) if index is not None else self.page.locator(".jp-Notebook")
        return "\n".join(scope.locator(".jp-OutputArea-output").all_text_contents())

    # ---- looking ------------------------------------------------------------------------------------------
    def scroll_through(self) -> None:
        """Scroll every cell into view once: widgets render when seen, as for a person reading down."""
        count = self.page.locator(".jp-Notebook .jp-Cell").count()
        for i in range(count):
            self.page.evaluate("i => document.querySelectorAll('.jp-Notebook .jp-Cell')[i]?.scrollIntoView()", i)
            self.page.wait_for_timeout(100)

    def widget_problems(self, wait: float = 20) -> list[str]:
        """Widget failures on screen, and widgets still 'Loading…' after ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            text = "\n".join(self.page.locator(".jp-Notebook .jp-OutputArea-output").all_text_contents())
            failures = [s for s in WIDGET_FAILURES if s in text]
            loading = [s for s in WIDGET_LOADING if s in text]
            if failures or not loading or time.monotonic() > deadline:
                return failures + [f"stuck on {s!r}" for s in loading]
            time.sleep(0.5)

    def broken_images(self) -> list[str]:
        """Images in outputs that show the browser's broken-image icon (empty or undecodable data); hidden ones
        (``display: none`` until they have a picture) are not on screen, so they do not count."""
        return self.page.evaluate("""() => [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output img')]
          .filter(img => img.complete && img.naturalWidth === 0 && img.getClientRects().length > 0)
          .map(img => {
            const cell = img.closest('.jp-CodeCell');
            const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
            return `code cell ${cells.indexOf(cell)}: <img src="${(img.getAttribute('src') || '').slice(0, 60)}">`;
          })""")

    def widget_count(self) -> int:
        return self.page.locator(".jp-Notebook .jupyter-widgets.widget-container, "
                                 ".jp-Notebook .jp-OutputArea-output .jupyter-widgets").count()

    def tracebacks(self) -> list[str]:
        found = []
        for i in range(self.page.locator(".jp-Notebook .jp-CodeCell").count()):
            for text in self.cell(i).locator(".jp-OutputArea-output").all_text_contents():
                if "Traceback (most recent call last)" in text or re.search(r"^-{20,}\s*$\s*\w+(Error|Exception)", text, re.M):
                    found.append(f"code cell {i}: {text[-1500:]}")
        return found

    def screenshot(self, path: Path, full: bool = True) -> Path:
        """A picture of the notebook from its top; ``full`` grows the window to the notebook's height first."""
        path.parent.mkdir(parents=True, exist_ok=True)
        size = self.page.viewport_size
        self.page.evaluate(_TOP_JS)
        if full:
            height = self.page.evaluate(_HEIGHT_JS)
            self.page.set_viewport_size({"width": size["width"], "height": int(max(size["height"], min(height + 160, 9000)))})
            self.page.evaluate(_TOP_JS)
            self.page.wait_for_timeout(500)
        self.page.screenshot(path=str(path))
        if full:
            self.page.set_viewport_size(size)
        return path

    def picture_of_cell(self, index: int, path: Path, size=(1200, 860), colors: int = 96) -> Path:
        """A window-sized picture with code cell ``index`` at the top, kept small (palette PNG) for docs."""
        from PIL import Image

        before = self.page.viewport_size
        self.page.set_viewport_size({"width": size[0], "height": size[1]})
        self.page.evaluate("""i => { const c = document.querySelectorAll('.jp-Notebook .jp-CodeCell')[i];
          const s = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer');
          if (c && s) s.scrollTop += c.getBoundingClientRect().top - s.getBoundingClientRect().top - 8; }""", index)
        self.page.wait_for_timeout(500)
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = path.with_suffix(".raw.png")
        self.page.screenshot(path=str(raw))
        self.page.set_viewport_size(before)
        Image.open(raw).convert("RGB").quantize(colors).save(path, optimize=True)
        raw.unlink()
        return path


_TOP_JS = """() => { const s = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer'); if (s) s.scrollTop = 0; }"""
# Cells' total height (the scroll area adds blank space past the end).
_HEIGHT_JS = """() => { const cells = [...document.querySelectorAll('.jp-NotebookPanel .jp-Cell')];
  return cells.reduce((h, c) => h + c.getBoundingClientRect().height, 0); }"""


class FormView:
    """One tunebook config form on screen (found by its 'Save TOML' button), used through its widgets."""

    def __init__(self, tab: LabPage, root):
        self.tab, self.root = tab, root

    @classmethod
    def all_in(cls, tab: LabPage) -> list[FormView]:
        page = tab.page
        roots = page.locator(".jp-Cell-outputArea .jp-OutputArea-output").filter(
            has=page.locator("button", has_text="Save TOML"))
        return [cls(tab, roots.nth(i)) for i in range(roots.count())]

    def row(self, label: str):
        """The field row whose bold label reads ``label`` (units in brackets ignored)."""
        pattern = re.compile(rf"^{re.escape(label)}( \(.*\))?$")
        return self.root.locator(".widget-hbox").filter(
            has=self.tab.page.locator(".widget-html b", has_text=pattern)).first

    def input(self, label: str):
        return self.row(label).locator("input, textarea, select").first

    def fill(self, label: str, text: str) -> None:
        """Type into a field and leave it (number boxes send their value on blur, as in a browser)."""
        box = self.input(label)
        box.scroll_into_view_if_needed()
        box.fill(text)
        box.press("Tab")

    def message(self, label: str) -> str:
        return self.row(label).locator(".widget-html").nth(1).inner_text()

    def click(self, button: str) -> None:
        self.root.locator("button", has_text=button).first.click()

    def text(self) -> str:
        return self.root.inner_text()

    def wait_for_text(self, pattern: str | re.Pattern, timeout: float = 30) -> str:
        """Wait until the form shows ``pattern`` (after a click the kernel answers through the widgets)."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if rx.search(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"the form never showed {rx.pattern!r}; it shows:\n{text[-2000:]}")
            time.sleep(0.2)

    def save_to(self, path: Path) -> str:
        self.root.locator("input[placeholder='path/to/config.toml']").fill(str(path))
        self.click("Save TOML")
        return self.wait_for_text(re.compile(rf"saved {re.escape(str(path))}"))

    def load_from(self, path: Path) -> None:
        self.root.locator("input[placeholder='path/to/config.toml']").fill(str(path))
        self.click("Load TOML")

    def template_picker(self):
        return self.root.locator(".widget-dropdown").filter(has=self.tab.page.locator("label", has_text="template")) \
            .locator("select")

    def checkboxes(self):
        return self.root.locator(".widget-checkbox input[type=checkbox]")

    def visible_checkbox(self):
        """A checkbox a person can see, opening collapsed sections (nested ones too) that hold one if need be."""
        page = self.tab.page
        for _ in range(6):
            shown = self.checkboxes().filter(visible=True)
            if shown.count():
                return shown.first
            headers = self.root.locator(".jupyter-widget-Collapse").filter(has=page.locator(".widget-checkbox")) \
                .locator("> .jupyter-widget-Collapse-header").filter(visible=True)
            if not headers.count():
                return None
            headers.last.click()  # the innermost visible section on the way to a checkbox
            page.wait_for_timeout(300)
        return None
