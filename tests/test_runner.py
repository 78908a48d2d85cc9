"""The detached training job as the notebook drives it: start, watch, kill, resume, stop."""

from __future__ import annotations

import os
import signal
import time

import pytest

from helpers import runner
from helpers.training.progress import step_losses
from helpers.workspace import Workspace
from tests.pictures import LINE, assert_picture


def test_suggest_template_by_vram():
    assert runner.suggest_template(None) == "demo_tiny"
    assert runner.suggest_template(23.6) == "sdxl_lora_24gb"  # under 40 GB: an adapter (a 4090 reports 23.6 GiB)
    assert runner.suggest_template(11.7) == "sd15_lora"
    assert runner.suggest_template(47.5) == "sdxl_finetune_a6000"
    assert runner.suggest_template(79.3) == "sdxl_finetune_a100"


def test_training_command_single_and_multi_gpu(tmp_path):
    cfg = tmp_path / "config.toml"
    single = runner.training_command(cfg, resume="latest", workspace=tmp_path, python="py")
    assert single == ["py", "-m", "helpers.training", str(cfg), "--workspace", str(tmp_path), "--resume", "latest"]
    multi = runner.training_command(cfg, num_gpus=4, python="py")
    assert multi == ["py", "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "4",
                     "-m", "helpers.training", str(cfg)]


def test_status_of_a_run_never_started(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    st = runner.job_status(ws.run("nothing"))
    assert st.state == "not started" and not st.alive and not st.done
    with pytest.raises(FileNotFoundError, match="no config.toml"):
        runner.start_job(ws.run("nothing"))


@pytest.mark.slow
def test_job_killed_then_resumed_then_stopped(demo_workspace):
    from helpers.ui.monitor import TrainingMonitor

    ws = Workspace.open(demo_workspace)
    cfg = runner.suggest_train_config(ws, "demo_tiny")
    run = ws.run("runner-test")
    runner.start_job(run, cfg)
    with pytest.raises(RuntimeError, match="already running"):
        runner.start_job(run, cfg)
    # kill -9 as a spot-instance pause would, once some state is on disk
    deadline = time.time() + 240
    while time.time() < deadline and not runner.run_outputs(run)["states"]:
        time.sleep(0.3)
    assert runner.run_outputs(run)["states"], "no training state was saved"
    os.killpg(runner.read_json(run.job)["pid"], signal.SIGKILL)
    st = runner.wait_job(run, timeout=30)
    assert st.state in ("died", "finished")
    if st.state == "died":
        assert "resume" in st.error
        with pytest.raises(FileExistsError, match="resume"):
            runner.start_job(run, cfg)  # a fresh start would clobber the state: refused
        runner.start_job(run, resume="latest")
        st = runner.wait_job(run, timeout=300)
    assert st.state == "finished", open(run.stdout).read()[-2000:]
    assert st.step == st.total_steps > 0
    assert sorted(step_losses(run.log)) == list(range(1, st.total_steps + 1))  # one loss per step, resumed or not
    assert runner.run_outputs(run)["checkpoints"]
    monitor = TrainingMonitor(run)
    final = monitor.refresh()
    assert final.state == "finished" and monitor.bar.value == monitor.bar.max == st.total_steps
    assert "finished" in monitor.line.value
    assert_picture(monitor.chart.value, size=(700, 360), colour=LINE)  # the loss curve is drawn
    assert runner.stop_job(run).state == "finished"  # stopping a finished run changes nothing


def test_kill_tree_reaches_workers_in_sessions_of_their_own(tmp_path):
    """A several-GPU job's launcher starts its workers in new sessions: a forced stop must end them too."""
    import subprocess
    import sys

    import psutil

    from helpers.runner import kill_tree

    pid_file = tmp_path / "worker.pid"
    launcher = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(w.pid))\n"
        "time.sleep(120)\n")], start_new_session=True)
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = psutil.Process(int(pid_file.read_text()))
    assert worker.pid != launcher.pid and os.getsid(worker.pid) != os.getsid(launcher.pid)
    kill_tree(launcher.pid)
    launcher.wait(timeout=10)
    gone, alive = psutil.wait_procs([worker], timeout=10)
    assert not alive, "the worker in its own session outlived the forced stop"
