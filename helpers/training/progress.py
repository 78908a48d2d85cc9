"""What a running training job tells the outside world: ``log.jsonl``, ``status.json`` and a progress bar.

This module owns both formats: the trainer writes them (``RunMonitor``) and every reader (the runner, the
notebook monitor, the tests) reads the log through ``read_log`` / ``read_log_since`` / ``step_losses``. The
file names come from ``helpers.workspace.RunPaths``.

``log.jsonl`` (append-only, one JSON object per line, flushed each line) holds
- step lines: ``{"step", "epoch", "loss", "lr", "lrs", "images_per_s", "s_per_step", "data_s", "peak_memory_gb",
  "eta_s", "time"}`` (``loss`` is the mean over the step's accumulated batches; ``lrs`` the effective LR per model;
  ``images_per_s`` and ``s_per_step`` the GPU's work, ``data_s`` the wait for the loader before it; ``ema_decay``
  when EMA is on);
- event lines: ``{"event": "start"|"resume"|"data"|"stage"|"checkpoint"|"state"|"state_skipped"|"warning"|
  "learning_rate_changed"|"validation"|"stopped"|"finished"|"failed", ...}`` (``state`` with ``seconds`` and
  ``bytes``; ``validation`` with ``step``, ``loss``, ``images``, ``timesteps``, ``by_timestep``, ``seconds``: the
  held-out loss of ``training.validation``).
A resumed run appends; the last line for a step wins.

``status.json`` (rewritten atomically, at most once a second and at every event) is the one file a monitor
needs: ``{"state": "starting"|"caching"|"training"|"finished"|"failed", "step", "total_steps", "epoch",
"epochs", "loss", "lr", "images_per_s", "eta_s", "peak_memory_gb", "last_checkpoint", "last_state",
"last_state_at", "last_state_step", "error", "warnings", "pid", "updated"}`` (``state`` also "stopped";
``validation_loss`` when the run computes one). Step records also go to the run's trackers (TensorBoard, W&B).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from helpers.changes import write_text_atomic
from helpers.training.trackers import numeric_metrics
from helpers.workspace import RunPaths


def peak_memory_gb(device) -> float:
    """Peak accelerator memory allocated by torch, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        import torch  # here, not at the top: the notebook kernel reads logs without loading torch

        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kilobytes on Linux
    except ImportError:  # Windows
        return 0.0


class RunMonitor:
    """Writes the log and status of one run (only on the main process) and drives the progress bar."""

    def __init__(self, run: RunPaths, *, enabled: bool = True, show_bar: bool | None = None):
        self.root, self.enabled = run.root, enabled
        self.log_path, self.status_path = run.log, run.status
        self.status: dict = {"state": "starting", "pid": os.getpid(), "error": None}
        self.show_bar = enabled and (sys.stderr.isatty() if show_bar is None else show_bar)
        self.bar = None
        self.trackers: list = []  # TensorBoard / W&B (``training.trackers``), fed every step record
        self._last_status = 0.0
        if enabled:
            self.root.mkdir(parents=True, exist_ok=True)

    def event(self, event: str, **fields) -> None:
        """Append an event line; some events also change the status."""
        if not self.enabled:
            return
        self._append({"event": event, "time": time.time(), **fields})
        if event == "checkpoint":
            self.status["last_checkpoint"] = fields.get("path")
        elif event == "state":  # the last safe point: what a spot pause or a kill would fall back to
            self.status.update(last_state=fields.get("path"), last_state_at=time.time(),
                               last_state_step=fields.get("step"))
        elif event == "warning":  # kept in the status so a notebook monitor shows every one of them
            self.status.setdefault("warnings", []).append(fields.get("message", ""))
        self.update(force=True)

    def start_bar(self, total: int, initial: int) -> None:
        if self.show_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def step(self, record: dict) -> None:
        """Log one optimizer step and refresh the status (and bar)."""
        if not self.enabled:
            return
        self._append({**record, "time": time.time()})
        for tracker in self.trackers:
            tracker.log(record["step"], numeric_metrics(record))
        self.status.update({k: record[k] for k in ("step", "epoch", "loss", "lr", "images_per_s", "eta_s",
                                                   "peak_memory_gb") if k in record})
        self.status["state"] = "training"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", epoch=record["epoch"])
        self.update()

    def validation(self, step: int, loss: float, **fields) -> None:
        """Log a validation loss (``training.validation``): a log event, the status, and the trackers."""
        if not self.enabled:
            return
        for tracker in self.trackers:
            tracker.log(step, {"validation/loss": float(loss)})
        self.status["validation_loss"] = loss
        self.event("validation", step=step, loss=loss, **fields)

    def update(self, force: bool = False, **fields) -> None:
        """Merge ``fields`` into the status and rewrite ``status.json`` (throttled unless ``force``)."""
        if not self.enabled:
            return
        self.status.update(fields)
        now = time.monotonic()
        if force or now - self._last_status >= 1.0:
            self.status["updated"] = time.time()
            write_text_atomic(self.status_path, json.dumps(self.status, indent=1, default=str))
            self._last_status = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    def _append(self, record: dict) -> None:
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")


def read_log_since(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """The complete lines of a ``log.jsonl`` after byte ``offset``, and the offset to continue from.

    A last line without its newline is being written (or was torn by a kill): it is left for the next call.
    Unparseable lines are skipped. A missing file reads as empty.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records, offset + end


def read_log(path: Path) -> list[dict]:
    """Every complete, parseable line of a ``log.jsonl``."""
    return read_log_since(path)[0]


def add_step_losses(records: list[dict], losses: dict[int, float]) -> dict[int, float]:
    """Fold the step lines of ``records`` into ``losses`` (step -> loss; after a resume the last line wins)."""
    for rec in records:
        if "event" not in rec and "step" in rec and rec.get("loss") is not None:
            losses[int(rec["step"])] = float(rec["loss"])
    return losses


def add_validation_losses(records: list[dict], losses: dict[int, float]) -> dict[int, float]:
    """Fold the ``validation`` events of ``records`` into ``losses`` (step -> held-out loss; the last wins)."""
    for rec in records:
        if rec.get("event") == "validation" and rec.get("loss") is not None:
            losses[int(rec["step"])] = float(rec["loss"])
    return losses


def step_losses(path: Path) -> dict[int, float]:
    """Loss per step from a log (for a resumed run, the last record of each step)."""
    return add_step_losses(read_log(path), {})
