"""The cost ledger: paid time per stage and idle time, per instance session, from the first setup on; a stage
killed with its process ends at its last heartbeat; $ at the price entered."""

from __future__ import annotations

import json
import time

import pytest

from helpers import ledger


@pytest.fixture
def clock(monkeypatch):
    """Controlled instance and time: ``clock.instance`` is this process's instance, ``clock.at(t)`` writes."""

    class Clock:
        instance = "box@1000"

        def at(self, root, t, **record):
            ledger._append(root, {**record, "time": t})

    c = Clock()
    monkeypatch.setattr(ledger, "instance_id", lambda: c.instance)
    return c


def test_stages_idle_and_cost_from_the_first_setup(workspace, clock):
    root, t0 = workspace.root, 100_000.0
    clock.at(root, t0 - 50, event="start", stage="downloads", id="early")  # before setup: not counted
    clock.at(root, t0, event="setup", instance_started=t0 - 600)  # the instance ran 10 min before setup
    clock.at(root, t0 + 1, event="price", per_hour=0.4)
    clock.at(root, t0 + 100, event="start", stage="downloads", id="a")
    clock.at(root, t0 + 700, event="end", id="a", ok=True)
    clock.at(root, t0 + 800, event="start", stage="training", id="b")
    clock.at(root, t0 + 4400, event="end", id="b", ok=True)
    summary = ledger.cost_summary(root, now=t0 + 5000)
    assert summary["paid_hours"] == pytest.approx(5600 / 3600, abs=1e-3)
    assert summary["stages"] == {"setup": pytest.approx(600 / 3600, abs=1e-3),
                                 "downloads": pytest.approx(600 / 3600, abs=1e-3), "training": 1.0}
    assert summary["idle_hours"] == pytest.approx(800 / 3600, abs=1e-3)
    assert summary["total_cost"] == pytest.approx(5600 / 3600 * 0.4, abs=0.01)
    assert summary["cost"]["training"] == 0.4
    text = ledger.format_summary(summary)
    assert "1.56 h in 1 instance session(s), ≈ 0.62 at 0.4/h" in text and "idle" in text


def test_a_killed_stage_ends_at_its_heartbeat_and_a_stopped_instance_does_not_bill(workspace, clock):
    root, t0 = workspace.root, 200_000.0
    clock.instance = "box@1"
    clock.at(root, t0, event="setup")
    clock.at(root, t0 + 10, event="start", stage="training", id="t")  # a spot pause kills it: no end
    beats = json.loads((root / ledger.HEARTBEAT).read_text())
    beats["box@1"] = t0 + 1810  # its last heartbeat
    (root / ledger.HEARTBEAT).write_text(json.dumps(beats))
    clock.instance = "box@2"  # the instance started again an hour later: a new session
    clock.at(root, t0 + 5410, event="start", stage="training", id="r")
    clock.at(root, t0 + 7210, event="end", id="r", ok=True)
    summary = ledger.cost_summary(root, now=t0 + 7210)
    assert summary["sessions"] == 2
    assert summary["stages"]["training"] == pytest.approx((1800 + 1800) / 3600, abs=1e-3)
    assert summary["paid_hours"] == pytest.approx((1810 + 1800) / 3600, abs=1e-3)  # the hour stopped: not paid


def test_stage_records_start_and_end_inside_a_workspace_and_nothing_outside(workspace, tmp_path):
    with ledger.stage(workspace.runs / "r1" / "config.toml", "training", detail="r1"):
        pass
    with pytest.raises(RuntimeError), ledger.stage(workspace.exports, "extraction"):
        raise RuntimeError("boom")
    records = ledger.read_ledger(workspace.root)
    assert [(r["event"], r.get("stage"), r.get("ok")) for r in records] == [
        ("start", "training", None), ("end", None, True), ("start", "extraction", None), ("end", None, False)]
    assert records[0]["detail"] == "r1" and records[0]["instance"] == ledger.instance_id()
    with ledger.stage(tmp_path / "elsewhere", "training"):
        pass
    assert not (tmp_path / ledger.LEDGER).exists()
    assert ledger.cost_summary(workspace.root)["since"] is None  # no setup yet: nothing counted


def test_the_instance_start_is_read_from_proc():
    started = ledger.instance_started()
    assert started is not None and started <= time.time()
    assert ledger.instance_id().endswith(f"@{int(started)}")


def test_run_cost_line_quotes_the_run_and_the_job(workspace, clock):
    clock.at(workspace.root, time.time() - 7200, event="setup")
    ledger.set_price(workspace.root, 0.5)
    line = ledger.run_cost_line(workspace.runs, 1.5)
    assert line.startswith("trained in 1.50 h (≈ 0.75 at 0.5/h); the whole job so far 2.00 h")
