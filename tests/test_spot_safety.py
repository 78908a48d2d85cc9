"""Spot safety: a kill -9 at any moment of a state save keeps a complete state; SIGTERM saves state and exits 0;
a disk that cannot hold the next state is reported and skipped while training goes on, the previous state intact.

The kills are real (``SIGKILL`` to a child process) and land inside ``save_training_state`` at a known point: the
child slows one file operation down and says where it is through a marker file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers.training import checkpoints as ckpt
from helpers.training.progress import read_log, step_losses

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}

# the child saves step 1, then a second save in which one operation stops for the kill
CHILD = textwrap.dedent("""
    import os, shutil, sys, time
    from pathlib import Path
    import torch
    from helpers.training import checkpoints as ckpt

    folder, marker, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    trainer = {"step": 1, "epoch": 0, "batch_in_epoch": 1, "config": {}, "scheduler": {}, "scaler": None,
               "rng": ckpt.capture_rng_states()}
    ckpt.save_training_state(folder, 1, weights={"w": torch.full((4096,), 1.0)}, optimizer_state={"m": 1},
                             trainer=trainer)

    def stop_here():
        marker.touch()
        time.sleep(120)

    if point == "writing":  # half of the new state's files written
        real_save = torch.save
        torch.save = lambda obj, f, *a, **k: (real_save(obj, f, *a, **k), stop_here())
    elif point == "replacing":  # a state for the same step moved aside, the new one not yet in its place
        real_replace, calls = os.replace, []
        def replace(a, b):
            calls.append(a)
            if len(calls) == 2:
                stop_here()
            real_replace(a, b)
        os.replace = replace
    elif point == "pruning":  # the new state complete, the old one being deleted
        real_rmtree = shutil.rmtree
        def rmtree(path, *a, **k):
            if Path(path).name.startswith(".old-"):
                stop_here()
            real_rmtree(path, *a, **k)
        shutil.rmtree = rmtree
    step = 1 if point == "replacing" else 2
    ckpt.save_training_state(folder, step, weights={"w": torch.full((4096,), 2.0)}, optimizer_state={"m": 2},
                             trainer={**trainer, "step": step})
""")


def kill_inside_save(folder: Path, point: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(marker), point], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the child ended before the kill point: {proc.stdout.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "the child never reached the kill point"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("point, survivor", [("writing", 1.0), ("replacing", 1.0), ("pruning", 2.0)])
def test_kill_9_during_a_state_save_never_loses_the_previous_state(tmp_path, point, survivor):
    folder = tmp_path / "state"
    kill_inside_save(folder, point, tmp_path)
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert leftovers, "the kill did not land inside the save"
    latest = ckpt.find_latest_state(folder)
    assert latest is not None, f"no complete state after a kill while {point}: {sorted(os.listdir(folder))}"
    state = ckpt.load_training_state(latest)
    assert torch.equal(state["weights"]["w"], torch.full((4096,), survivor)), f"wrong state survived ({point})"
    # the next save tidies up what the killed one left and keeps one complete state
    ckpt.save_training_state(folder, 3, weights={"w": torch.zeros(4096)}, optimizer_state={}, trainer={
        "step": 3, "config": {}, "scheduler": {}, "scaler": None, "rng": ckpt.capture_rng_states()})
    assert sorted(os.listdir(folder)) == ["step-00000003"]


def test_a_save_in_progress_elsewhere_is_left_alone(tmp_path):
    """Tidying never deletes another live process's half-written state (the monitor or a second rank)."""
    folder = tmp_path / "state"
    busy = folder / f".tmp-step-00000009-{os.getppid()}"  # a live process that is not this one
    busy.mkdir(parents=True)
    dead = folder / ".tmp-step-00000008-999999999"
    dead.mkdir()
    ckpt.clear_interrupted_saves(folder)
    assert busy.exists() and not dead.exists()


def test_disk_short_for_a_state_says_so_before_writing_and_keeps_the_previous(tmp_path, monkeypatch):
    import shutil

    trainer = {"step": 1, "config": {}, "scheduler": {}, "scaler": None, "rng": ckpt.capture_rng_states()}
    first = ckpt.save_training_state(tmp_path / "state", 1, weights={"w": torch.ones(1000)}, optimizer_state={},
                                     trainer=trainer)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(ckpt.DiskSpaceShort, match=r"needs 0\.00 GB.*Nothing was written.*previous state is intact"):
        ckpt.save_training_state(tmp_path / "state", 2, weights={"w": torch.ones(1000)}, optimizer_state={},
                                 trainer=trainer)
    assert sorted(os.listdir(tmp_path / "state")) == [first.name]
    warnings = ckpt.state_save_warnings(tmp_path / "state", 10**9, 400.0, 15.0)
    assert "will not fit" in warnings[0] and "helpers.cleanup" in warnings[0]
    assert "raise it" in warnings[1]  # 400 s is more than a tenth of 15 minutes


def _run_config(tmp_path, model_dir, **saving):
    from helpers.config import from_dict, save_config
    from helpers.training.config import TrainConfig
    from tests.test_training_loop import make_dataset

    cfg = from_dict(TrainConfig, {
        "model": {"base_model": str(model_dir)},
        "data": {"dataset": str(make_dataset(tmp_path / "ds", n=3)), "resolution": 64, "min_bucket_side": 32,
                 "max_bucket_side": 128, "bucket_step": 32},
        "optimizer": {"learning_rate": 1e-3},
        "saving": {"save_every_n_epochs": 0, "save_precision": "fp32", **saving},
        "epochs": 40, "batch_size": 1, "seed": 1, "device": "cpu"})
    run = tmp_path / "runs" / "r"
    save_config(cfg, run / "config.toml")
    return cfg, run


def test_disk_full_skips_the_state_save_and_training_goes_on(tiny_sdxl_dir, tmp_path, monkeypatch):
    import shutil

    from accelerate.state import AcceleratorState

    from helpers.training.loop import train

    cfg, run = _run_config(tmp_path, tiny_sdxl_dir, state_every_n_steps=2, state_every_n_minutes=0.0)
    cfg.epochs = 1
    real = shutil.disk_usage
    short = lambda p: real(p)._replace(free=1000) if "state" in Path(p).parts else real(p)  # noqa: E731
    monkeypatch.setattr(shutil, "disk_usage", short)
    AcceleratorState._reset_state(True)
    result = train(cfg, run, show_progress=False)
    assert Path(result["final"]).exists() and result["steps"] == 4
    log = read_log(run / "log.jsonl")
    skipped = [r["step"] for r in log if r.get("event") == "state_skipped"]
    assert skipped == [2, 4] and not list((run / "state").glob("step-*"))
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and any("Nothing was written" in w for w in status["warnings"])


def _start(run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "helpers.training", str(run / "config.toml"), "--progress", "off",
                             *extra], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"trainer ended before {what}: {proc.stdout.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, f"trainer too slow to reach {what}"
        time.sleep(0.02)


def test_sigterm_saves_state_and_exits_0_then_resume_continues(tiny_sdxl_dir, tmp_path):
    from helpers import runner
    from helpers.workspace import RunPaths

    _, run = _run_config(tmp_path, tiny_sdxl_dir, state_every_n_steps=0, state_every_n_minutes=0.0)
    proc = _start(run)
    _wait_for(lambda: max(step_losses(run / "log.jsonl"), default=0) >= 3, proc, "step 3")
    proc.send_signal(signal.SIGTERM)  # what runner.stop_job and a RunPod stop send
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()[-3000:]
    last = max(step_losses(run / "log.jsonl"))
    states = RunPaths(run).states()
    assert [p.name for p in states] == [f"step-{last:08d}"], "the state is not at the step the run stopped on"
    assert f"stopped by SIGTERM at step {last}" in out.decode()
    stopped = [r for r in read_log(run / "log.jsonl") if r.get("event") == "stopped"]
    assert stopped and stopped[-1]["step"] == last and stopped[-1]["signal"] == "SIGTERM"
    assert runner.job_status(RunPaths(run)).state == "stopped"
    # the saved state is a real one: the resumed run continues from the next step
    proc = _start(run, "--resume", "latest")
    _wait_for(lambda: any(r.get("event") == "resume" for r in read_log(run / "log.jsonl")), proc, "the resume")
    resumed = [r for r in read_log(run / "log.jsonl") if r.get("event") == "resume"][0]
    assert resumed["step"] == last
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 0


def test_sigterm_before_the_first_step_exits_0_with_nothing_saved(tiny_sdxl_dir, tmp_path):
    _, run = _run_config(tmp_path, tiny_sdxl_dir)
    proc = _start(run)
    status = run / "status.json"
    _wait_for(lambda: status.exists() and json.loads(status.read_text() or "{}").get("state") in ("loading", "caching"),
              proc, "loading")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "nothing was trained" in out.decode(), out.decode()[-2000:]
    assert not list(run.glob("state/step-*"))
    assert json.loads(status.read_text())["state"] == "stopped"
