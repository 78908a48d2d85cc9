"""What a running training job tells the outside world: ``log.jsonl``, ``status.json`` and a progress bar.

``log.jsonl`` (append-only, one JSON object per line, flushed each line) holds
- step lines: ``{"step", "epoch", "loss", "lr", "lrs", "images_per_s", "s_per_step", "peak_memory_gb", "eta_s",
  "time"}`` (``loss`` is the mean over the step's accumulated batches; ``lrs`` the effective LR per model;
  ``ema_decay`` when EMA is on);
- event lines: ``{"event": "start"|"resume"|"data"|"stage"|"checkpoint"|"state"|"warning"|
  "learning_rate_changed"|"finished"|"failed", ...}``.
A resumed run appends; the last line for a step wins.

``status.json`` (rewritten atomically, at most once a second and at every event) is the one file a monitor
needs: ``{"state": "starting"|"caching"|"training"|"finished"|"failed", "step", "total_steps", "epoch",
"epochs", "loss", "lr", "images_per_s", "eta_s", "peak_memory_gb", "last_checkpoint", "last_state", "error",
"warnings", "pid", "updated"}``. Step records also go to the run's trackers (TensorBoard, W&B).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from helpers.changes import write_text_atomic
from helpers.training.trackers import numeric_metrics


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory allocated by torch, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kilobytes on Linux
    except ImportError:  # Windows
        return 0.0


class RunMonitor:
    """Writes the log and status of one run (only on the main process) and drives the progress bar."""

    def __init__(self, run_root: Path, *, enabled: bool = True, show_bar: bool | None = None):
        self.root, self.enabled = Path(run_root), enabled
        self.log_path, self.status_path = self.root / "log.jsonl", self.root / "status.json"
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
        elif event == "state":
            self.status["last_state"] = fields.get("path")
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


def read_log(path: Path) -> list[dict]:
    """Every parseable line of a ``log.jsonl`` (a torn last line from a kill is ignored)."""
    out = []
    if not Path(path).exists():
        return out
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def step_losses(path: Path) -> dict[int, float]:
    """Loss per step from a log (for a resumed run, the last record of each step)."""
    return {r["step"]: r["loss"] for r in read_log(path) if "step" in r and "loss" in r and "event" not in r}
