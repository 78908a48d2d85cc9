"""A live view of a detached training run: progress with rate and ETA, the loss curve, the newest samples.

Everything shown is read from the run folder (``status.json``, ``log.jsonl``, ``samples/``), so a reloaded
page or a restarted kernel shows the same run again: make a new monitor on the run and watch. ``watch()``
refreshes in the cell that runs it (interrupting it stops watching, never the training).
"""

from __future__ import annotations

import html
import io
import time

import ipywidgets as w

from helpers import runner
from helpers.workspace import RunPaths


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
    """Progress bar + status line + loss chart + sample thumbnails for one run."""

    def __init__(self, run: RunPaths):
        self.run = run
        self.bar = w.IntProgress(value=0, min=0, max=1, description="step", layout=w.Layout(width="60%"))
        self.line = w.HTML("")
        # hidden until they have a picture: an empty Image renders as a broken-image icon in the browser
        self.chart = w.Image(format="png", layout=w.Layout(max_width="720px", display="none"))
        self.samples = w.Image(format="png", layout=w.Layout(max_width="720px", display="none"))
        self.widget = w.VBox([w.HTML(f"<b>run {html.escape(run.name)}</b>"), self.bar, self.line, self.chart,
                              self.samples])
        self._chart_step = -1
        self._sample_names: tuple[str, ...] = ()

    def refresh(self) -> runner.JobStatus:
        """Read the run folder once and update every widget; returns the status."""
        st = runner.job_status(self.run)
        self.bar.max = max(st.total_steps, 1)
        self.bar.value = min(st.step, self.bar.max)
        self.bar.bar_style = {"finished": "success", "failed": "danger", "died": "danger"}.get(st.state, "info")
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
            text += f"<br><span style='color:#c00'>{html.escape(st.error)}</span>"
        self.line.value = text
        curve = runner.loss_curve(self.run)
        if curve and curve[-1][0] != self._chart_step:
            from helpers.ui.charts import line_chart

            self._chart_step = curve[-1][0]
            self.chart.value = _png(line_chart({"loss": curve}, f"{self.run.name}: loss per step", "step", "loss"))
            self.chart.layout.display = ""
        self._refresh_samples()
        return st

    def _refresh_samples(self) -> None:
        files = sorted(self.run.samples.glob("*.png"), key=lambda p: p.stat().st_mtime)[-8:] \
            if self.run.samples.exists() else []
        names = tuple(p.name for p in files)
        if files and names != self._sample_names:
            from helpers.ui.gallery import thumbnail_grid

            self._sample_names = names
            self.samples.value = _png(thumbnail_grid([(p, p.stem) for p in files], columns=4, size=160,
                                                     title="newest samples"))
            self.samples.layout.display = ""

    def watch(self, timeout: float | None = None, every: float = 1.0) -> runner.JobStatus:
        """Refresh until the run's process ends (or ``timeout`` s); Ctrl-C / interrupt only stops watching."""
        t0 = time.time()
        try:
            while True:
                st = self.refresh()
                if st.done or (timeout is not None and time.time() - t0 > timeout):
                    return self.refresh() if st.done else st
                time.sleep(every)
        except KeyboardInterrupt:
            self.line.value += "<br><i>stopped watching; the run goes on (watch again any time)</i>"
            return runner.job_status(self.run)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        self.refresh()
        display(self.widget)
