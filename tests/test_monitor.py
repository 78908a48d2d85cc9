"""The run folder as the trainer writes it and the monitor reads it: one set of names, one log reader, and a
monitor that refreshes in the background while the caller (the notebook kernel) stays free.

The job here is a small child process that writes through the trainer's own ``RunMonitor`` (status and log,
one step every ``pause`` seconds), so these tests take seconds; a real detached training run is watched in
``test_runner.py`` and in notebook 04's tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import runner
from helpers.training.progress import RunMonitor, read_log, read_log_since, step_losses
from helpers.ui.monitor import TrainingMonitor
from helpers.workspace import RunPaths
from tests.pictures import LINE, assert_picture

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from helpers.training.progress import RunMonitor
    from helpers.workspace import RunPaths

    run, steps, pause = RunPaths(Path(sys.argv[1])), int(sys.argv[2]), float(sys.argv[3])
    monitor = RunMonitor(run, show_bar=False)
    monitor.update(force=True, state="training", total_steps=steps, epochs=1, step=0)
    for step in range(1, steps + 1):
        time.sleep(pause)
        monitor.step({"step": step, "epoch": 1, "loss": 1.0 / step, "lr": 1e-4, "images_per_s": 2.0,
                      "eta_s": pause * (steps - step)})
        monitor.update(force=True)
    monitor.event("finished", step=steps)
    monitor.update(force=True, state="finished")
""")


def start_writer(run: RunPaths, steps: int, pause: float) -> subprocess.Popen:
    """A child that writes status and log like the trainer; its pid goes where the runner records it."""
    run.create()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(run.root), str(steps), str(pause)], env=env,
                            start_new_session=True)
    run.job.write_text(json.dumps({"pid": proc.pid}))
    return proc


def wait_for(condition, timeout: float = 30.0, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"not true within {timeout} s")


def test_run_paths_name_every_file(tmp_path):
    run = RunPaths(tmp_path / "runs" / "r1").create()
    names = {p.relative_to(run.root).as_posix() for p in (run.config, run.job, run.stdout, run.status, run.log,
                                                          run.checkpoints, run.samples, run.state)}
    assert names == {"config.toml", "job.json", "stdout.log", "status.json", "log.jsonl", "checkpoints",
                     "samples", "state"}
    assert run.checkpoints.is_dir() and run.samples.is_dir() and run.state.is_dir()
    assert RunPaths.of_checkpoint(run.checkpoints / "r1-e0001.safetensors") == run


def test_the_trainer_writes_where_run_paths_say(tmp_path):
    run = RunPaths(tmp_path / "r")
    monitor = RunMonitor(run, show_bar=False)
    monitor.step({"step": 1, "epoch": 1, "loss": 0.5})
    monitor.event("checkpoint", path="x.safetensors")
    assert json.loads(run.status.read_text())["last_checkpoint"] == "x.safetensors"
    assert [r.get("event") for r in read_log(run.log)] == [None, "checkpoint"]
    assert sorted(p.name for p in run.root.iterdir()) == ["log.jsonl", "status.json"]


def test_log_reader_continues_from_an_offset_and_waits_for_partial_lines(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"event": "state"}\n{"step": 2, "lo')
    records, offset = read_log_since(log)
    assert records == [{"step": 1, "loss": 2.0}, {"event": "state"}]
    with open(log, "a") as fh:
        fh.write('ss": 1.5}\nnot json\n{"step": 1, "loss": 1.75}\n')  # a resumed run re-logs step 1
    more, offset = read_log_since(log, offset)
    assert more == [{"step": 2, "loss": 1.5}, {"step": 1, "loss": 1.75}]  # the torn line skipped
    assert read_log_since(log, offset) == ([], offset)
    assert step_losses(log) == {1: 1.75, 2: 1.5}  # the last line for a step wins
    assert read_log_since(tmp_path / "missing.jsonl") == ([], 0)


def test_watch_returns_at_once_and_the_widgets_keep_moving(tmp_path):
    run = RunPaths(tmp_path / "run")
    proc = start_writer(run, steps=8, pause=0.4)
    try:
        wait_for(lambda: runner.job_status(run).state == "training")
        monitor = TrainingMonitor(run)
        started = time.monotonic()
        monitor.watch(every=0.1)
        assert time.monotonic() - started < 1.0, "watch() blocked its caller"
        assert monitor.watching and runner.job_status(run).alive
        first = monitor.bar.value
        # nobody calls refresh(): the background watcher moves the bar, the status line and the chart
        wait_for(lambda: monitor.bar.value >= first + 2)
        assert monitor.bar.max == 8 and f"step {monitor.bar.value}/8" in monitor.line.value
        proc.wait(timeout=30)
        wait_for(lambda: not monitor.watching)  # the watcher ends by itself with the run
        assert monitor.status.state == "finished" and monitor.bar.value == 8 and monitor.bar.bar_style == "success"
        assert_picture(monitor.chart.value, size=(700, 360), colour=LINE)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_watching_again_replaces_the_earlier_watcher_and_stop_leaves_the_run(tmp_path):
    run = RunPaths(tmp_path / "run")
    proc = start_writer(run, steps=40, pause=0.25)
    try:
        wait_for(lambda: runner.job_status(run).state == "training")
        old, new = TrainingMonitor(run), TrainingMonitor(run)  # e.g. the Watch cell run again after a reload
        old.watch(every=0.1)
        new.watch(every=0.1)
        assert not old.watching and new.watching
        new.stop()
        assert not new.watching
        assert proc.poll() is None, "stopping the monitor stopped the training"
        step = new.bar.value
        time.sleep(0.8)
        assert new.bar.value == step, "a stopped monitor still refreshes"
        assert new.wait(timeout=0.3).alive  # wait() watches again, and gives up after its timeout
    finally:
        proc.kill()
        proc.wait()


def test_a_failing_run_shows_its_error_marked(tmp_path):
    from helpers.ui.errors import ERROR_CLASS

    run = RunPaths(tmp_path / "run").create()
    run.status.write_text(json.dumps({"state": "failed", "step": 3, "total_steps": 10,
                                      "error": "DataError: no images in <dataset>"}))
    run.job.write_text(json.dumps({"pid": 0}))
    monitor = TrainingMonitor(run)
    st = monitor.refresh()
    assert st.state == "failed" and monitor.bar.bar_style == "danger"
    assert ERROR_CLASS in monitor.line.value and "no images in &lt;dataset&gt;" in monitor.line.value


@pytest.mark.parametrize("bad", ["", "not json"])
def test_refresh_copes_with_a_run_folder_being_written(tmp_path, bad):
    run = RunPaths(tmp_path / "run").create()
    run.status.write_text(bad)  # e.g. a status.json truncated by a full disk
    st = TrainingMonitor(run).refresh()
    assert st.state == "not started" and not st.alive
