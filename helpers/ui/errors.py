"""How a notebook stage says it could not do its job: plainly for the person, and marked for a machine.

A stage wrapper in a ``notebook.py`` glue module catches the errors a person can fix (a missing file, a
model that cannot be fetched, a bad field) and reports them with ``stage_failed(message)`` instead of letting
a traceback out, so a notebook run top to bottom never stops half way. The message shows as red text, and
the output carries ``metadata["tunebook"]["stage_error"]``; any error text a widget shows (a form's status, the
training monitor) is wrapped by ``error_html``, which carries the CSS class ``ERROR_CLASS``. The notebook tests
fail on either mark, so a stage that printed an error instead of producing its output never passes.
"""

from __future__ import annotations

import html
import sys

ERROR_CLASS = "tunebook-error"
METADATA_KEY = "tunebook"


def error_html(text: str, icon: bool = False) -> str:
    """``text`` (one problem per line) as red HTML, marked with ``ERROR_CLASS``; ``icon`` puts a ⚠ first."""
    lines = "<br>".join(html.escape(line) for line in (text or "error").splitlines())
    return f"<span class='{ERROR_CLASS}' style='color:#c00'>{'&#9888; ' if icon else ''}{lines}</span>"


def stage_failed(message: str, stage: str = "") -> None:
    """Show that a stage did not produce its output, and why (the message says what to fix).

    In a notebook: a red block whose output metadata marks it as a stage error. Elsewhere: one line on stderr.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        shell = None
    else:
        shell = get_ipython()
    if shell is None or not getattr(shell, "kernel", None):
        print(message, file=sys.stderr)
        return
    from IPython.display import display

    bundle = {"text/plain": message, "text/html": f"<div>{error_html(message, icon=True)}</div>"}
    display(bundle, raw=True, metadata={METADATA_KEY: {"stage_error": message, "stage": stage}})

