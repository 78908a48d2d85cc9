"""ruff over the library, tests, benches and notebooks (the repo's one lint configuration, pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is missing: it comes with requirements-test.txt (./setup.sh --test installs it)"
    out = subprocess.run([ruff, "check", "--output-format", "concise", "helpers", "tests", "bench", "notebooks"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
