"""The demo's "dataset in" step: the synthetic dataset zipped, brought in by ``download_dataset`` like a real
upload, then checked; the report JSON is kept beside it for the notebooks."""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

from helpers.changes import write_text_atomic
from helpers.dataset.check import check_dataset
from helpers.dataset.demo import make_demo_dataset
from helpers.dataset.files import list_images
from helpers.dataset.report import REPORT_NAME, dataset_report
from helpers.download.datasets import download_dataset


def run_demo(ws) -> dict[str, str]:
    """Synthetic images -> local zip -> ``download_dataset`` -> check; returns where everything went."""
    target = ws.dataset("demo")
    if not (target.exists() and list_images(target)):
        with tempfile.TemporaryDirectory(dir=ws.cache) as tmp:
            src = make_demo_dataset(Path(tmp) / "demo")
            archive = Path(tmp) / "demo.zip"
            with zipfile.ZipFile(archive, "w") as zf:
                for p in sorted(src.iterdir()):
                    zf.write(p, f"demo/{p.name}")
            download_dataset(str(archive), target, progress=False)
    check = check_dataset(target, progress=False)
    report = dataset_report(check, resolution=512)
    report_path = target / REPORT_NAME
    write_text_atomic(report_path, json.dumps({"report": report, "check": check.to_dict()}, indent=1))
    return {"dataset": str(target), "dataset report": str(report_path),
            "dataset check": f"{report['trained_images']} of {report['images']} images trained, "
                             f"{len(report['below_resolution'])} below 512 px"}
