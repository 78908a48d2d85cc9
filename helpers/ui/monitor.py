"""A live view of a detached training run: progress with rate and ETA, the loss curve, the newest samples, the
last safe point (how old the newest resumable state is: what a spot pause would cost) and the speed watch
(measured images/s against the pre-flight's estimate, with the likely cause when far below).

Everything shown is read from the run folder (``RunPaths``: status, log, samples), so a reloaded page or a
restarted kernel shows the same run again: make a new monitor on the run and watch. ``watch()`` refreshes from
a background thread and returns at once, so the kernel stays free: the stop and inspect cells run while the
monitor keeps moving. ``stop()`` stops watching (never the training); ``wait()`` blocks until the run ends.
"""

from __future__ import annotations

import collections
import html
import io
import threading
import time
from pathlib import Path

import ipywidgets as w

from helpers import runner
from helpers.training.progress import add_step_losses, add_validation_losses, read_log_since
from helpers.training.speedwatch import SpeedVerdict, assess_speed
from helpers.ui.errors import error_html
from helpers.workspace import RunPaths

# One watcher per run folder in this kernel: watching again (a re-run cell) replaces the old one.
_WATCHERS: dict[Path, TrainingMonitor] = {}
_WATCHERS_LOCK = threading.Lock()


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class TrainingMonitor:
    """Progress bar + status line + loss chart + samples (a row per prompt over time) for one run."""

    def __init__(self, run: RunPaths):
        self.run = run
        self.bar = w.IntProgress(value=0, min=0, max=1, description="step", layout=w.Layout(width="60%"))
        self.line = w.HTML("")
        self.watch_line = w.HTML("")  # last safe point and the speed watch
        # hidden until they have a picture: an empty Image renders as a broken-image icon in the browser
        self.chart = w.Image(format="png", layout=w.Layout(max_width="720px", display="none"))
        self.samples = w.Image(format="png", layout=w.Layout(max_width="720px", display="none"))
        self.widget = w.VBox([w.HTML(f"<b>run {html.escape(run.name)}</b>"), self.bar, self.line, self.watch_line,
                              self.chart, self.samples])
        self.status: runner.JobStatus | None = None
        self._losses: dict[int, float] = {}
        self._validation: dict[int, float] = {}  # step -> held-out loss (``training.validation``), when on
        self._recent: collections.deque[dict] = collections.deque(maxlen=60)  # step records for the speed watch
        self._preflight: dict = {}
        self.verdict: SpeedVerdict | None = None
        self._log_offset = 0
        self._chart_step: tuple[int, int] = (-1, 0)
        self._sample_rounds: dict[int, dict] = {}  # step -> the log's samples event
        self._refresh_lock = threading.Lock()  # the watcher thread and a cell may refresh at once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> runner.JobStatus:
        """Read the run folder once and update every widget; returns the status."""
        with self._refresh_lock:
            records = self._new_records()  # before the status: the status is at least as new as the log read
            add_validation_losses(records, self._validation)
            st = runner.job_status(self.run)
            self.bar.max = max(st.total_steps, 1)
            self.bar.value = min(st.step, self.bar.max)
            self.bar.bar_style = {"finished": "success", "failed": "danger", "died": "danger"}.get(st.state, "info")
            self.line.value = _status_line(st) + _validation_note(self._validation)
            self._refresh_chart(records)
            self.verdict = assess_speed(list(self._recent), self._read_preflight())
            self.watch_line.value = _watch_line(st, self.verdict, self._preflight, time.time())
            self._refresh_samples(records)
            self.status = st
            return st

    def _new_records(self) -> list[dict]:
        """The log lines written since the last refresh."""
        if self.run.log.exists() and self.run.log.stat().st_size < self._log_offset:  # the run was started afresh
            self._losses, self._validation, self._sample_rounds, self._log_offset = {}, {}, {}, 0
            self._recent.clear()
        records, self._log_offset = read_log_since(self.run.log, self._log_offset)  # only what is new
        return records

    def _refresh_chart(self, records: list[dict]) -> None:
        add_step_losses(records, self._losses)
        self._recent.extend(r for r in records if "event" not in r)
        last = (max(self._losses, default=-1), len(self._validation))
        if last[0] >= 0 and last != self._chart_step:
            self._chart_step = last
            self.chart.value = _png(loss_chart(self.run.name, self._losses, self._validation))
            self.chart.layout.display = ""

    def _read_preflight(self) -> dict:
        """The estimate the trainer started with (``preflight.json``), read once it is there."""
        if not self._preflight:
            self._preflight = runner.read_json(self.run.preflight)
        return self._preflight

    def _refresh_samples(self, records: list[dict]) -> None:
        """A row per prompt, a column per sampling round (the log's ``samples`` events), newest rounds last."""
        from helpers.generation.training_samples import add_sample_rounds, samples_over_time

        if add_sample_rounds(records, self._sample_rounds):
            self.samples.value = _png(samples_over_time(self.run.samples, self._sample_rounds))
            self.samples.layout.display = ""

    # -- watching in the background -------------------------------------------------------------------
    @property
    def watching(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def watch(self, timeout: float | None = None, every: float = 1.0) -> None:
        """Refresh every ``every`` s from a background thread until the run's process ends (or ``timeout`` s).

        Returns at once: the kernel stays free for the next cells. Watching the same run again (a re-run cell,
        a new monitor after a page reload) stops the earlier watcher, so only one thread polls a run.
        """
        with _WATCHERS_LOCK:
            earlier = _WATCHERS.get(self.run.root)
            if earlier is not None and earlier is not self:
                earlier.stop()
            _WATCHERS[self.run.root] = self
        self.stop()
        self._stop.clear()
        self.refresh()
        self._thread = threading.Thread(target=self._watch_loop, args=(every, timeout), daemon=True,
                                        name=f"watch {self.run.name}")
        self._thread.start()

    def _watch_loop(self, every: float, timeout: float | None) -> None:
        t0 = time.monotonic()
        try:
            while not self._stop.wait(every):
                st = self.refresh()
                if st.done or (timeout is not None and time.monotonic() - t0 > timeout):
                    return
        except Exception as exc:  # nothing fails silently: the reason shows where the progress was
            self.line.value += "<br>" + error_html(f"the monitor stopped: {type(exc).__name__}: {exc} (the run "
                                                   "goes on; watch again)")

    def stop(self) -> None:
        """Stop watching (the training goes on); the widgets keep showing the last refresh."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def wait(self, timeout: float | None = None) -> runner.JobStatus:
        """Block until the run's process ends (or ``timeout`` s), watching meanwhile; returns the final status."""
        if not self.watching:
            self.watch()
        self._thread.join(timeout)
        return self.refresh()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        self.refresh()
        display(self.widget)


def loss_chart(name: str, losses: dict[int, float], validation: dict[int, float]):
    """The training loss per step, with the validation loss beside it when the run computes one."""
    from helpers.ui.charts import line_chart

    if not validation:
        return line_chart({"loss": sorted(losses.items())}, f"{name}: loss per step", "step", "loss")
    return line_chart({"training loss": sorted(losses.items()), "validation loss (held-out images)":
                       sorted(validation.items())}, f"{name}: training and validation loss", "step", "loss")


def _validation_note(validation: dict[int, float]) -> str:
    """`` · validation loss 0.1234 (step N)`` when the run computes one, else nothing."""
    if not validation:
        return ""
    step = max(validation)
    return f" · validation loss {validation[step]:.4f} (step {step})"


def _status_line(st: runner.JobStatus) -> str:
    bits = [f"<b>{st.state}</b>", f"step {st.step}/{st.total_steps or '?'}", f"epoch {st.epoch}"]
    if st.loss is not None:
        bits.append(f"loss {st.loss:.4f}")
    if st.images_per_s:
        bits.append(f"{st.images_per_s:.2f} img/s")
    bits.append(f"ETA {_fmt_eta(st.eta_s)}")
    if st.peak_memory_gb:
        bits.append(f"peak mem {st.peak_memory_gb:.1f} GB")
    text = " · ".join(bits)
    for warning in st.warnings[-3:]:
        text += f"<br><span style='color:#b60'>&#9888; {html.escape(warning)}</span>"
    if st.error:
        text += "<br>" + error_html(st.error)
    return text


def _ago(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def _watch_line(st: runner.JobStatus, verdict: SpeedVerdict | None, preflight: dict, now: float) -> str:
    """Last safe point (red when it is old: a pause now loses that much), the speed against the estimate, and
    the pre-flight's warnings the run started with (a disk that will not hold everything, ...)."""
    bits = []
    if st.state in ("training", "stopped", "died", "failed") or st.last_state_at:
        if st.last_state_at:
            age = now - st.last_state_at
            text = f"last safe point: {_ago(age)} ago (step {st.last_state_step})"
            bits.append(f"<span style='color:#c00'>{text}</span>" if age > 45 * 60 and st.alive else text)
        elif st.alive:
            bits.append("no safe point yet (the first resumable state comes with saving.state_every_n_*)")
    if verdict is not None:
        estimate = f" (estimate {verdict.expected:.2f})" if verdict.expected else ""
        bits.append(f"speed {verdict.measured:.2f} img/s{estimate}")
    text = " · ".join(html.escape(b) if not b.startswith("<span") else b for b in bits)
    if verdict is not None and verdict.cause:
        text += f"<br><span style='color:#b60'>&#9888; slow: {html.escape(verdict.cause)}</span>"
    noted = (preflight.get("errors") or []) + [m for m in preflight.get("warnings") or [] if m.startswith("disk")]
    for message in noted:
        text += f"<br><span style='color:#b60'>&#9888; pre-flight: {html.escape(message)}</span>"
    return text
