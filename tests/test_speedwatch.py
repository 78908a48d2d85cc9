"""The speed watch and the last safe point: measured speed against the pre-flight, a likely cause when far below,
and how old the newest resumable state is — as the notebook monitor shows them from a run folder."""

from __future__ import annotations

import json
import time

from helpers.training.progress import RunMonitor
from helpers.training.speedwatch import assess_speed
from helpers.ui.monitor import TrainingMonitor
from helpers.workspace import RunPaths

PREFLIGHT = {"images_per_s": 2.0, "gpu_vram_gb": 48.0, "speed_source": "FLOP model: 155 TFLOPS peak at 35% use",
             "errors": [], "warnings": ["disk: the run keeps ≈ 90.0 GB at its fullest, 60.0 GB free: ..."]}


def steps(n: int, ips: float, s: float, data_s: float = 0.0, peak: float = 30.0, start: int = 1) -> list[dict]:
    return [{"step": i, "images_per_s": ips, "s_per_step": s, "data_s": data_s, "peak_memory_gb": peak}
            for i in range(start, start + n)]


def test_on_target_says_nothing_and_waits_for_enough_steps():
    assert assess_speed(steps(8, 2.0, 1.5), PREFLIGHT) is None  # the first 5 are warm-up: 3 left
    verdict = assess_speed(steps(20, 1.9, 1.58), PREFLIGHT)
    assert verdict.cause is None and verdict.ratio == 0.95


def test_a_starved_loader_is_named_with_the_setting_to_change():
    verdict = assess_speed(steps(20, 2.0, 1.5, data_s=1.5), PREFLIGHT, num_workers=2)
    assert "waits for data 50 %" in verdict.cause and "data.num_workers (now 2)" in verdict.cause
    assert verdict.measured == 1.0  # what the run really gets: half the GPU's pace


def test_far_below_with_full_memory_points_at_spilling_and_with_room_at_the_machine():
    full = assess_speed(steps(20, 0.3, 10.0, peak=46.5), PREFLIGHT)
    assert "spilling into shared memory" in full.cause and "gradient_checkpointing" in full.cause
    room = assess_speed(steps(20, 0.3, 10.0, peak=20.0), PREFLIGHT)
    assert "another process on the GPU" in room.cause and "15 % of the estimate" in room.cause
    assert assess_speed(steps(20, 0.3, 10.0), {}).cause is None  # no estimate: nothing to compare with


def test_the_monitor_shows_the_last_safe_point_speed_and_preflight_warnings(tmp_path):
    run = RunPaths(tmp_path / "r").create()
    run.preflight.write_text(json.dumps(PREFLIGHT))
    writer = RunMonitor(run, show_bar=False)
    writer.update(force=True, state="training", total_steps=100, step=0)
    for record in steps(20, 0.3, 10.0, peak=46.5):
        writer.step({**record, "epoch": 1, "loss": 0.1, "lr": 1e-6})
    monitor = TrainingMonitor(run)
    monitor.refresh()
    assert "no safe point yet" not in monitor.watch_line.value  # the writer is not a live process
    writer.event("state", path=str(run.state / "step-00000020"), step=20)
    status = json.loads(run.status.read_text())
    status["last_state_at"] = time.time() - 12 * 60  # as if written 12 minutes ago
    run.status.write_text(json.dumps(status))
    monitor.refresh()
    line = monitor.watch_line.value
    assert "last safe point: 12 min ago (step 20)" in line
    assert "speed 0.30 img/s (estimate 2.00)" in line and "spilling into shared memory" in line
    assert "pre-flight: disk: the run keeps" in line
