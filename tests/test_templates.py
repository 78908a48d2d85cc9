"""Every shipped template is a recipe that runs: valid as written, and a few training steps on the tiny model of
its architecture with every one of its options on (only the device-bound settings — size, precision, device —
are shrunk to what a CPU runs)."""

from __future__ import annotations

import math
import re

import pytest

from helpers.config import build_config, from_dict, to_dict, validate
from helpers.templates import TEMPLATES_DIR, list_templates, template_path
from helpers.training.config import TrainConfig
from tests.test_training_loop import make_dataset

RECIPES = [t for t in list_templates() if t != "demo_tiny"]  # the demo template trains in every demo run
NEEDS_A_CHOICE = {"model.base_model", "data.dataset"}  # what a template leaves to the user


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("name", list_templates())
def test_template_is_valid_and_every_key_says_why(name):
    cfg = build_config(TrainConfig, name)
    problems = {k: v for k, v in validate(cfg).items() if k not in NEEDS_A_CHOICE}
    assert not problems, problems
    text = template_path(name).read_text(encoding="utf-8")
    assert text.startswith("#"), "a template starts with a comment saying what it is for"
    assert re.search(r"^format_version = \d+", text, re.M)
    for line in text.splitlines():
        key_line = re.match(r"^\s*[A-Za-z_0-9]+\s*=", line) and not line.startswith("format_version")
        assert not key_line or "#" in line, f"{name}: '{line.strip()}' has no reason comment"


def _tiny_version(cfg: TrainConfig, model_dir, dataset) -> TrainConfig:
    """The template on the tiny model: resolution (and stage resolutions) scaled to 64 px, CPU precision."""
    data = to_dict(cfg)
    scale = 64 / cfg.data.resolution
    data["model"] = {**data["model"], "base_model": str(model_dir)}
    data["data"] = {**data["data"], "dataset": str(dataset), "resolution": 64, "min_bucket_side": 32,
                    "max_bucket_side": 128, "bucket_step": 32, "num_workers": 0}
    for stage in data.get("stages", []):
        if stage.get("resolution"):
            stage["resolution"] = max(32, int(math.floor(stage["resolution"] * scale / 32)) * 32)
    data["precision"] = {**data["precision"], "mixed_precision": "no", "full_half_precision": False}
    data["device"], data["max_steps"], data["batch_size"] = "cpu", 2, 1
    return from_dict(TrainConfig, data)


@pytest.mark.parametrize("name", RECIPES)
def test_template_trains_on_the_tiny_model(name, tiny_sdxl_dir, tiny_sd15_dir, tmp_path):
    from helpers.training.loop import train
    from helpers.training.progress import step_losses

    cfg = build_config(TrainConfig, name)
    model_dir = tiny_sd15_dir if cfg.model.arch == "sd15" else tiny_sdxl_dir
    tiny = _tiny_version(cfg, model_dir, make_dataset(tmp_path / "data", n=3))
    assert validate(tiny) == {}, validate(tiny)
    result = train(tiny, tmp_path / "run", cache_dir=tmp_path / "cache", show_progress=False)
    losses = step_losses(tmp_path / "run" / "log.jsonl")
    assert result["steps"] >= 1 and sorted(losses) == list(range(1, result["steps"] + 1))  # (Kohaku: 1 step/epoch)
    assert all(math.isfinite(v) for v in losses.values())
    assert (tmp_path / "run" / "checkpoints").exists() and result["final"].endswith(".safetensors")


def test_templates_folder_holds_only_templates():
    assert {p.stem for p in TEMPLATES_DIR.glob("*.toml")} == set(list_templates())
