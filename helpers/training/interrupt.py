"""A polite stop: SIGTERM (``runner.stop_job``, RunPod's stop, ``kill``) or Ctrl-C asks the trainer to end cleanly.

Before the first optimizer step (loading, latent caching) there is nothing to save: the signal ends the process
at once (``StopRequested``). Once steps run, the signal only raises a flag: the loop finishes the step it is on,
writes resumable state (atomic: a kill -9 during it leaves the previous state) and exits 0. A second signal
does not wait. Installed by the command line only (``install``), so ``train()`` called in-process keeps the
caller's handlers. Vast.ai's spot pause sends no signal at all: there only the periodic state saves help.
"""

from __future__ import annotations

import signal

_state = {"installed": False, "stepping": False, "requested": None}


class StopRequested(BaseException):
    """A stop signal arrived before training stepped: nothing to save (BaseException, like KeyboardInterrupt)."""


def _handle(signum, frame) -> None:
    if _state["requested"] is not None:  # asked twice: stop now
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
        return
    _state["requested"] = signal.Signals(signum).name
    if not _state["stepping"]:
        raise StopRequested(f"{_state['requested']} before the first training step")


def install() -> None:
    """Handle SIGTERM and SIGINT in this (main) thread's process; loader workers forked later inherit the
    handler and so keep working until the main process shuts them down."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _handle)
    _state.update(installed=True, stepping=False, requested=None)


def begin_steps() -> None:
    """From now on a signal is a request the loop honours between steps."""
    _state["stepping"] = True


def stop_requested(accelerator=None) -> str | None:
    """The signal's name when a stop was asked (on any GPU process: they must all stop at the same step)."""
    if not _state["installed"]:
        return None
    if accelerator is not None and accelerator.num_processes > 1:
        import torch

        flag = torch.tensor([1.0 if _state["requested"] else 0.0], device=accelerator.device)
        asked = accelerator.reduce(flag, "sum").item() > 0
        return (_state["requested"] or "SIGTERM") if asked else None
    return _state["requested"]


def uninstall() -> None:
    """Back to the default handlers (tests; a process that trains twice)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)
    _state.update(installed=False, stepping=False, requested=None)
