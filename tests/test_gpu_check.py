"""``bench/gpu_check.sh``: its CPU dry path starts, runs every section's smoke version and writes one valid JSON;
one section's failure, hang or missing bench costs only that section."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


def test_a_section_that_hangs_is_stopped_at_its_budget_and_one_that_fails_says_why():
    env = dict(os.environ)
    hang = gpu_check.run_section([sys.executable, "-c", "import time; time.sleep(60)"], 1.0, env)
    assert hang["status"] == "timeout" and hang["seconds"] < 10 and "within 1 s" in hang["error"]
    oom = gpu_check.run_section([sys.executable, "-c", "raise SystemExit('CUDA out of memory. Tried to allocate')"],
                                30, env)
    assert oom["status"] == "failed" and oom["error"].startswith("out of memory: ")
    noisy = gpu_check.run_section([sys.executable, "-c", "print('step 1/2'); print('{\"a\": 1}')"], 30, env)
    assert noisy["status"] == "ok" and noisy["result"] == {"a": 1}
    silent = gpu_check.run_section([sys.executable, "-c", "print('no json')"], 30, env)
    assert silent["status"] == "failed" and "printed no JSON" in silent["error"]


def test_training_figures_are_compared_with_the_estimate():
    record = {"status": "ok", "result": {"runs": [{
        "images_per_s": 2.0, "peak_memory_gb": 40.0, "mfu": 0.3, "vs_estimate": {"images_per_s": 1.17},
        "estimate": {"images_per_s": 1.71, "vram_gb": 38.9, "vram_by_part": {"context": 1.5}}}]}}
    cmp = gpu_check.compare("sdxl_full_a6000", record)
    assert cmp["estimated_images_per_s"] == 1.71 and cmp["vs_estimate"] == {"images_per_s": 1.17}
    assert "2.00 img/s (estimate 1.71)" in gpu_check.headline("sdxl_full_a6000", {**record, "comparison": cmp})


@pytest.mark.slow
def test_dry_run_writes_one_valid_json_with_every_section(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    files = list(tmp_path.glob("gpu_check-dry-run-*.json"))
    assert len(files) == 1 and not list(tmp_path.glob("gpu-check-*")), "one JSON, no scratch left behind"
    report = json.loads(files[0].read_text())
    assert list(report["sections"]) == [s.name for s in gpu_check.SECTIONS]
    assert "[1/10] environment" in out.stdout and "done in" in out.stdout  # progress as it goes
    statuses = {name: r["status"] for name, r in report["sections"].items()}
    assert set(statuses.values()) <= {"ok", "failed", "timeout", "skipped"}
    for name in ("environment", "sdxl_full_a6000", "sdxl_full_a100_ema", "sd15_512", "state_save", "upscale",
                 "tagger", "lora_extract"):
        assert statuses[name] == "ok", f"{name}: {report['sections'][name].get('error')}"
    assert report["sections"]["sdxl_full_a6000"]["result"]["template"] == "sdxl_finetune_a6000"
    assert report["sections"]["state_save"]["comparison"]["sdxl_finetune_a6000"]["state_gb"] == pytest.approx(20.5)
    lora = report["sections"]["sdxl_lora"]  # train_step.py's adapter mode with sdxl_lora_24gb's [network]
    assert lora["status"] == "ok", lora.get("error")
    assert lora["result"]["mode"] == "lora" and lora["result"]["runs"][0]["trained_params"] > 0
    assert report["counts"]["ok"] >= 8 and report["seconds"] < 470
