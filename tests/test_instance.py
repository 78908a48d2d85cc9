"""Stopping the rented machine when the work is done: off by default, through a fake ``vastai`` / ``runpodctl``
on PATH that records how it was called; the key never shown; after training (the real CLI) and after an upload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import instance

REPO = Path(__file__).resolve().parent.parent
KEY = "vastkey0123456789abcdef"


def fake_cli(folder: Path, name: str, code: int = 0) -> Path:
    """A ``name`` executable that appends its arguments and API-key variables to ``calls.jsonl``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        with open({str(folder / 'calls.jsonl')!r}, "a") as fh:
            fh.write(json.dumps({{"cli": {name!r}, "args": sys.argv[1:],
                                 "keys": {{k: v for k, v in os.environ.items() if k.endswith("API_KEY")}}}}) + "\\n")
        print("stopping instance" if {code} == 0 else "error: instance not found (key {KEY})")
        sys.exit({code})
        """))
    script.chmod(0o755)
    return folder


def calls(folder: Path) -> list[dict]:
    path = folder / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def env_for(bin_dir: Path, tmp_path: Path, **extra) -> dict[str, str]:
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path / "home"), **extra}


def test_vast_is_stopped_with_its_instance_key_never_shown(tmp_path):
    bin_dir = fake_cli(tmp_path / "bin", "vastai")
    said = []
    env = env_for(bin_dir, tmp_path, CONTAINER_ID="12345", CONTAINER_API_KEY=KEY)
    assert instance.stop_instance("training finished", env=env, echo=said.append)
    assert calls(bin_dir)[0]["args"] == ["stop", "instance", "12345", "--api-key", KEY]
    assert "vastai stop instance 12345 --api-key ***" in said[0] and not any(KEY in s for s in said)


def test_runpod_is_stopped_with_runpodctl(tmp_path):
    bin_dir = fake_cli(tmp_path / "bin", "runpodctl")
    env = env_for(bin_dir, tmp_path, RUNPOD_POD_ID="abc123", RUNPOD_API_KEY="rpkey")
    assert instance.stop_instance("upload finished", env=env, echo=lambda _: None)
    assert calls(bin_dir)[0]["args"] == ["stop", "pod", "abc123"] and calls(bin_dir)[0]["keys"]["RUNPOD_API_KEY"]


@pytest.mark.parametrize("env, problem", [
    ({"VAST_CONTAINERLABEL": "C.777"}, "`vastai` has no API key"),
    ({"RUNPOD_POD_ID": "p"}, "has no API key"),
    ({}, "not a Vast.ai or RunPod machine"),
])
def test_what_cannot_stop_says_why_and_runs_nothing(tmp_path, env, problem):
    bin_dir = fake_cli(fake_cli(tmp_path / "bin", "vastai"), "runpodctl")
    said = []
    assert not instance.stop_instance("training finished", env=env_for(bin_dir, tmp_path, **env), echo=said.append)
    assert problem in said[0] and not calls(bin_dir)
    missing = env_for(tmp_path / "empty", tmp_path, CONTAINER_ID="1", CONTAINER_API_KEY=KEY)
    assert "not installed" in instance.plan_stop(missing).problem


def test_a_refusal_is_reported_with_the_key_hidden(tmp_path):
    bin_dir = fake_cli(tmp_path / "bin", "vastai", code=1)
    said = []
    env = env_for(bin_dir, tmp_path, CONTAINER_ID="9", VAST_API_KEY=KEY)
    assert not instance.stop_instance("training finished", env=env, echo=said.append)
    assert "refused to stop the machine (exit 1)" in said[-1] and KEY not in said[-1]


def test_training_stops_the_machine_only_when_asked(tiny_sdxl_dir, tmp_path):
    from tests.test_spot_safety import _run_config

    _, run = _run_config(tmp_path, tiny_sdxl_dir, state_every_n_steps=0, state_every_n_minutes=0.0)
    config = run / "config.toml"
    config.write_text(config.read_text().replace("epochs = 40", "epochs = 1"))
    bin_dir = fake_cli(tmp_path / "bin", "vastai")
    env = {**os.environ, **env_for(bin_dir, tmp_path, CONTAINER_ID="4242", CONTAINER_API_KEY=KEY),
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "helpers.training", str(config), "--progress", "off"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and not calls(bin_dir), out.stdout + out.stderr  # off by default
    out = subprocess.run([*cmd[:-2], "--run-dir", str(tmp_path / "runs" / "r2"), "--stop-instance-when-done",
                          "--progress", "off"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert calls(bin_dir)[0]["args"][:3] == ["stop", "instance", "4242"]
    assert "training finished: stopping this machine" in out.stdout and KEY not in out.stdout + out.stderr
