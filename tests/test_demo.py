"""``python -m helpers demo``: every stage in pipeline order, ending with the evaluation of the demo run, whose
report path it prints."""

from __future__ import annotations

import json
import shutil

from helpers.demo import STAGES, run_demo


def test_the_demo_ends_with_an_evaluation_report_of_its_run(demo_workspace, tmp_path):
    labels = [label for label, _ in STAGES]
    assert labels[-1] == "evaluation" and labels.index("training") < labels.index("lora") < labels.index("evaluation")
    report = demo_workspace / "runs" / "demo" / "evaluation" / "report.html"
    assert report.is_file(), "the demo left no evaluation report of its run"  # the whole demo ran once for the fixture
    metrics = json.loads((report.parent / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["run"] == "demo" and metrics["recommendation"]["sentence"]

    root = shutil.copytree(demo_workspace, tmp_path / "ws", symlinks=True)  # the shared one stays as it was
    printed: list[str] = []
    outputs = run_demo(root, stages=["evaluation"], echo=printed.append)
    again = root / "runs" / "demo" / "evaluation" / "report.html"
    assert outputs["evaluation report"] == str(again) and again.is_file()
    assert f"    evaluation report: {again}" in printed, printed
    assert any(line.startswith("    recommendation: epoch") for line in printed), printed
