"""Environment report with faked probes, workspace layout, Hub login that never leaks the token."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import environment, hub
from helpers.environment import GPU, check_environment, detect_platform, probe_environment
from helpers.workspace import Workspace, choose_workspace, default_root

ROOT = Path(__file__).resolve().parent.parent
GOOD = {"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.23.0", "safetensors": "0.8.0",
        "bitsandbytes": "0.50.2", "onnxruntime": "1.31.1"}


@pytest.mark.parametrize("env, paths, expected", [
    ({"COLAB_RELEASE_TAG": "x"}, set(), "colab"),
    ({"RUNPOD_POD_ID": "abc"}, set(), "runpod"),
    ({"VAST_CONTAINERLABEL": "C.1"}, set(), "vast"),
    ({}, {"/content/sample_data"}, "colab"),
    ({}, set(), "local"),
])
def test_detect_platform(env, paths, expected):
    assert detect_platform(env, exists=lambda p: p in paths) == expected


def test_report_a6000_is_clean(tmp_path):
    a6000 = ([GPU("NVIDIA RTX A6000", 47.5, "8.6", True)], "550.54", "12.4")
    report = probe_environment(tmp_path, gpus=a6000, packages=GOOD)
    assert [p.what for p in report.problems if p.severity == "error"] == []
    text = environment.format_report(report)
    assert "RTX A6000" in text and "47.5 GB" in text and "compute 8.6" in text


def test_old_bitsandbytes_is_an_error_with_fix(tmp_path):
    report = probe_environment(tmp_path, gpus=([GPU("A100", 80.0, "8.0", True)], "550", "12.4"),
                               packages={**GOOD, "bitsandbytes": "0.41.1"})
    errors = [p for p in report.problems if p.severity == "error"]
    assert len(errors) == 1 and "0.41.1" in errors[0].what and "upgrade" in errors[0].fix


def test_small_gpu_no_bf16_cpu_only_and_disk(tmp_path):
    t4 = environment.EnvironmentReport("colab", "3.11", gpus=[GPU("Tesla T4", 15.0, "7.5", False)],
                                       packages=GOOD, workspace="/content/ws", free_disk_gb=20.0)
    whats = " | ".join(p.what for p in check_environment(t4))
    assert "15.0 GB" in whats and "no bf16" in whats and "20.0 GB free" in whats and "/content" in whats
    cpu = environment.EnvironmentReport("local", "3.11", packages=GOOD, workspace=str(tmp_path), free_disk_gb=500)
    assert any("no CUDA GPU" in p.what for p in check_environment(cpu))
    old_torch = environment.EnvironmentReport("local", "3.11", packages={**GOOD, "torch": "2.1.2+cu121"})
    assert any(p.severity == "error" and "2.1.2" in p.what for p in check_environment(old_torch))


@pytest.mark.parametrize("gpu, template", [(GPU("NVIDIA GeForce RTX 4090", 23.6, "8.9", True), "sdxl_lora_24gb"),
                                           (GPU("NVIDIA GeForce RTX 3060", 11.7, "8.6", True), "sd15_lora")])
def test_a_card_under_40_gb_is_told_which_adapter_template(gpu, template):
    from helpers.templates import list_templates

    report = environment.EnvironmentReport("vast", "3.11", gpus=[gpu], packages=GOOD, free_disk_gb=500)
    small = next(p for p in check_environment(report) if "full fine-tune needs" in p.what)
    assert f"template {template}" in small.fix and template in list_templates()


def test_environment_cli_json():
    out = subprocess.run([sys.executable, "-m", "helpers.environment", "report", "--json"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"platform"' in out.stdout and '"packages"' in out.stdout


def test_workspace_layout_and_names(tmp_path):
    ws = Workspace.open(tmp_path / "w")
    for d in (ws.datasets, ws.models, ws.runs, ws.exports, ws.cache):
        assert d.is_dir()
    run = ws.run("first-run").create()
    assert run.config.name == "config.toml" and run.checkpoints.is_dir() and run.state.is_dir()
    assert ws.list_runs() == ["first-run"]
    with pytest.raises(ValueError, match="not usable as a folder name"):
        ws.dataset("../escape")
    with pytest.raises(FileNotFoundError, match="setup.sh"):
        Workspace.open(tmp_path / "nothing", create=False)


def test_workspace_choice_is_remembered(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNEBOOK_WORKSPACE", raising=False)
    monkeypatch.setattr("helpers.workspace.pointer_file", lambda: tmp_path / "pointer.txt")
    ws = choose_workspace(tmp_path / "chosen")
    assert default_root() == ws.root
    monkeypatch.setenv("TUNEBOOK_WORKSPACE", str(tmp_path / "env"))
    assert default_root() == tmp_path / "env"


def test_login_checks_token_and_never_leaks_it(monkeypatch, capsys, tmp_path):
    import huggingface_hub
    from huggingface_hub import hf_api

    secret = "hf_" + "A1b2C3d4E5f6G7h8"
    saved = {}
    monkeypatch.setattr(hf_api, "whoami", lambda token: {"name": "alice"} if token == secret else
                        (_ for _ in ()).throw(RuntimeError(f"401 Unauthorized for token {token}")))
    monkeypatch.setattr(huggingface_hub, "login", lambda token, **kw: saved.update(token=token))
    assert hub.login(secret) == "alice" and saved["token"] == secret
    bad = "hf_" + "Zz9Yy8Xx7Ww6Vv5"
    message = hub.login_message(bad)
    assert "login failed" in message and bad not in message and "hf_***" in message
    assert "no Hugging Face token" in hub.login_message("")
    with pytest.raises(hub.HubLoginError, match="start with 'hf_'"):
        hub.login("not-a-token")
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err and bad not in captured.out + captured.err


def test_register_kernel_writes_kernelspec(tmp_path):
    path = environment.register_kernel(str(tmp_path / "ws"), prefix=str(tmp_path / "prefix"))
    spec = (path / "kernel.json").read_text()
    assert sys.executable in spec and "HF_HOME" in spec


def test_fix_widgets_installs_only_when_needed(monkeypatch):
    calls = []

    def fake_run(cmd, capture_output=True, text=True):
        calls.append(cmd)
        class R:  # noqa: N801 - a tiny stand-in for CompletedProcess
            returncode = 0
            stderr = ""
            stdout = "3.0.17" if cmd[0] == "/our/python" or len(calls) > 2 else "3.0.10"
        return R()

    monkeypatch.setattr(environment.subprocess, "run", fake_run)
    note = environment.fix_widgets("/server/python", our_python="/our/python")
    assert "REFRESH" in note and any("jupyterlab_widgets==3.0.17" in " ".join(c) for c in calls)
    assert "no separate Jupyter server" in environment.fix_widgets(None)


@pytest.mark.slow
def test_second_setup_run_is_fast_and_changes_nothing(tmp_path):
    """setup.sh on an installed venv: skips pip, keeps torch, finishes in seconds."""
    if not (ROOT / ".venv" / "bin" / "python").exists() or Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("runs only inside the repo's .venv made by setup.sh (CI and `./setup.sh --test` do)")
    import torch

    env = {**os.environ, "TUNEBOOK_WORKSPACE": str(tmp_path / "ws"), "TUNEBOOK_SKIP_JUPYTER": "1"}
    env.pop("PYTHONPATH", None)
    pointer = Path(sys.prefix) / "tunebook-workspace.txt"
    before = pointer.read_text() if pointer.exists() else None
    t0 = time.perf_counter()
    try:
        out = subprocess.run(["bash", str(ROOT / "setup.sh")], capture_output=True, text=True, env=env, timeout=300)
    finally:
        if before is None:
            pointer.unlink(missing_ok=True)
        else:
            pointer.write_text(before)
    took = time.perf_counter() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    assert "packages up to date" in out.stdout and "setup done" in out.stdout
    assert f"torch {torch.__version__}" in out.stdout
    assert took < 120, f"second setup took {took:.0f} s"
