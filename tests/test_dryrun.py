"""``python -m helpers.training RUN.toml --dry-run [--json]``: every template, the guide's two configs where the
guide puts them, real parameter counts of the chosen model, measured vs FLOP-model speed, disk, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.config import build_config, save_config
from helpers.training import dryrun
from helpers.training.__main__ import main
from helpers.training.calibration import add_measurement, find_measured_speed, read_table, same_card
from helpers.training.config import TrainConfig

TEMPLATES = sorted((Path(__file__).resolve().parent.parent / "templates").glob("*.toml"))
KEYS = {"vram_gb", "vram_by_part", "fits", "steps", "seconds_per_step", "hours", "cost", "disk_gb", "errors",
        "warnings", "would_start", "speed_source", "model_source", "disk_free_gb", "params"}
SDXL_HUB = "stabilityai/stable-diffusion-xl-base-1.0"  # not on this machine: the real SDXL sizes are used
SD15_HUB = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # likewise: the real SD 1.5 sizes


@pytest.fixture
def ws(workspace, tiny_sdxl_dir, monkeypatch):
    """A workspace with the tiny SDXL and a 4-image dataset (one 2-repeat folder: 5 images per epoch), and
    plenty of disk (the disk checks have their own test)."""
    from tests.test_training_loop import make_dataset

    (workspace.models / "tiny-sdxl").symlink_to(tiny_sdxl_dir)
    make_dataset(workspace.datasets / "mine", n=4)
    monkeypatch.setattr(dryrun, "free_disk_gb", lambda path: 500.0)
    return workspace


def dry_run_json(capsys, config: Path, *args: str) -> tuple[int, dict]:
    code = main([str(config), "--dry-run", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def run_config(ws, template: str | Path, **overrides) -> Path:
    cfg = build_config(TrainConfig, template, overrides={"data": {"dataset": "mine"}, **overrides})
    return save_config(cfg, ws.runs / "r" / "config.toml")


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_dry_run_json_for_every_template(template, ws, capsys):
    code, report = dry_run_json(capsys, template, "--gpu", "A100", "--price", "1.5")  # as shipped: no dataset
    assert KEYS <= set(report) and code == (0 if report["would_start"] else 2)
    assert set(report["fits"]) == {"24", "48", "80"} and report["vram_gb"] == pytest.approx(
        sum(report["vram_by_part"].values()), abs=0.3)
    arch = build_config(TrainConfig, template).model.arch
    base = "tiny-sdxl" if template.stem == "demo_tiny" else SD15_HUB if arch == "sd15" else SDXL_HUB
    code, report = dry_run_json(capsys, run_config(ws, template, model={"base_model": base}), "--gpu", "A100",
                                "--price", "1.5", "--workspace", str(ws.root))
    assert code == 0 and report["would_start"] and not report["errors"], report["errors"]
    assert report["steps"] > 0 and report["hours"] == pytest.approx(report["steps"] * report["seconds_per_step"] / 3600,
                                                                    rel=0.01, abs=0.0006)  # hours: 3 decimals
    assert report["cost"] == pytest.approx(report["hours"] * 1.5, abs=0.01)


@pytest.mark.parametrize("template, gpu, lands", [("sdxl_finetune_a6000", "A6000", (0, 48)),
                                                  ("sdxl_finetune_a100", "A100", (48, 80))])
def test_the_guides_two_configs_land_where_the_guide_says(template, gpu, lands, ws, capsys):
    """A6000 config: within 48 GB; A100 config with EMA: more than 48, within 80 — and the other card says no."""
    config = run_config(ws, template, model={"base_model": SDXL_HUB})
    code, report = dry_run_json(capsys, config, "--gpu", gpu, "--workspace", str(ws.root))
    low, high = lands
    assert low < report["vram_gb"] <= high * 0.95 and code == 0, report
    assert report["fits"] == {"24": False, "48": high == 48, "80": True}
    assert report["params"]["unet"] == 2_567_463_684 and "real SDXL" in report["model_source"]
    assert any("downloaded from the Hub" in w for w in report["warnings"])
    if template == "sdxl_finetune_a100":
        assert report["vram_by_part"]["ema"] > 10  # the guide: EMA is why it needs the A100
        code, on_a6000 = dry_run_json(capsys, config, "--gpu", "A6000", "--workspace", str(ws.root))
        assert code == 2 and any(e.startswith("VRAM") and "ema.device = 'cpu'" in e for e in on_a6000["errors"])


def test_the_estimate_reads_the_real_parameter_count_of_the_model(ws, capsys):
    from helpers.models import open_checkpoint
    from helpers.models.checkpoint import summarize_checkpoint

    config = run_config(ws, "demo_tiny", model={"base_model": "tiny-sdxl"})
    code, report = dry_run_json(capsys, config, "--gpu", "A6000", "--workspace", str(ws.root))
    with open_checkpoint(ws.models / "tiny-sdxl") as ck:
        expected = {c: info["parameters"] for c, info in summarize_checkpoint(ck)["components"].items()}
    assert report["params"] == expected and report["model_source"].startswith("read from tiny-sdxl")
    assert report["vram_gb"] < 2 and report["disk_by_part"]["checkpoints"] < 0.1  # not an SDXL's 38 GB / 7 GB files
    assert report["total_images"] == 5 * build_config(TrainConfig, "demo_tiny").epochs


def test_steps_count_repeats_batches_accumulation_and_gpus():
    assert dryrun.plan_steps(25, epochs=4, batch_size=2, accumulation=3, gpus=1, max_steps=0) == 4 * 5
    assert dryrun.plan_steps(25, epochs=4, batch_size=2, accumulation=3, gpus=2, max_steps=0) == 4 * 3
    assert dryrun.plan_steps(25, epochs=4, batch_size=2, accumulation=1, gpus=1, max_steps=7) == 7


def test_two_gpus_halve_the_time_not_the_memory(ws, capsys):
    config = run_config(ws, "sdxl_finetune_a6000", model={"base_model": SDXL_HUB})
    _, one = dry_run_json(capsys, config, "--gpu", "A6000", "--workspace", str(ws.root))
    _, two = dry_run_json(capsys, config, "--gpu", "A6000", "--gpus", "2", "--workspace", str(ws.root))
    assert two["vram_gb"] == one["vram_gb"] and two["images_per_s"] == pytest.approx(2 * one["images_per_s"], abs=0.01)
    per_epoch = one["total_images"] // 100  # 100 epochs; each GPU takes half of each epoch's batches
    assert two["steps"] == dryrun.plan_steps(per_epoch, 100, 1, 3, 2, 0) < one["steps"]
    assert two["hours"] == pytest.approx(two["steps"] * one["seconds_per_step"] / 3600, rel=0.01)


def test_an_unknown_gpu_is_an_error_naming_the_known_ones(ws, capsys):
    code, report = dry_run_json(capsys, run_config(ws, "demo_tiny", model={"base_model": "tiny-sdxl"}), "--gpu",
                                "Voodoo 5", "--workspace", str(ws.root))
    assert code == 2 and "does not know this GPU" in report["errors"][0] and "A6000" in report["errors"][0]


def test_a_config_that_does_not_load_is_a_json_report_too(tmp_path, capsys):
    bad = tmp_path / "config.toml"
    bad.write_text("format_version = 2\nepochs = 'ten'\nwarp_speed = 9\n")
    code, report = dry_run_json(capsys, bad)
    assert code == 2 and not report["would_start"] and any("warp_speed" in e for e in report["errors"])


def test_disk_too_small_for_the_first_files_is_an_error_and_for_everything_a_warning(ws, capsys, monkeypatch):
    config = run_config(ws, "sdxl_finetune_a6000", model={"base_model": SDXL_HUB})
    monkeypatch.setattr(dryrun, "free_disk_gb", lambda path: 40.0)  # holds the first state + file, not all
    code, report = dry_run_json(capsys, config, "--gpu", "A6000", "--workspace", str(ws.root))
    assert code == 0 and any(w.startswith("disk: the run keeps") for w in report["warnings"])
    assert report["disk_by_part"]["states"] == pytest.approx(2 * 20.5, rel=0.05)  # kept + the one being written
    assert report["disk_by_part"]["checkpoints"] == pytest.approx(4 * 6.94, rel=0.05)  # 3 kept + the final
    monkeypatch.setattr(dryrun, "free_disk_gb", lambda path: 10.0)
    code, report = dry_run_json(capsys, config, "--gpu", "A6000", "--workspace", str(ws.root))
    assert code == 2 and any(e.startswith("disk:") for e in report["errors"])


def test_text_report_says_the_same(ws):
    cfg = build_config(TrainConfig, "sdxl_finetune_a6000", overrides={"data": {"dataset": "mine"},
                                                                      "model": {"base_model": SDXL_HUB}})
    report = dryrun.dry_run_report(cfg, ws, gpu="A6000", price=0.4)
    text = dryrun.format_report(report)
    assert f"VRAM ≈ {report['vram_gb']:.1f} GB" in text and f"≈ {report['hours']:.2f} h" in text
    assert "GB free" in text and text.endswith("it would start")


# ---------------------------------------------------------------- calibration


def test_gpu_names_match_whole_cards_only():
    assert same_card("RTX 4090", "NVIDIA GeForce RTX 4090") and same_card("A100", "NVIDIA A100-SXM4-80GB")
    assert not same_card("RTX 3090", "NVIDIA GeForce RTX 3090 Ti") and same_card("3090 Ti", "NVIDIA GeForce RTX 3090 Ti")
    assert not same_card("A10", "NVIDIA A100-SXM4-80GB")


def test_a_measured_row_wins_over_the_flop_model_and_says_where_it_came_from(ws, capsys, tmp_path, monkeypatch):
    from helpers.training import calibration

    rows = read_table()
    assert rows and all(r.get("source", "").startswith("https://") for r in rows)  # every published figure cited
    run = {"arch": "sdxl", "resolution": 1024, "mode": "full", "batch_size": 1}
    assert find_measured_speed("RTX 4090", {**run, "cached_latents": True}).source.startswith("RTX 4090, OneTrainer")
    assert find_measured_speed("RTX 4090", {**run, "cached_latents": False}) is None  # the row says cached
    config = run_config(ws, "sdxl_finetune_a6000", model={"base_model": SDXL_HUB},
                        data={"dataset": "mine", "random_crop": False, "cache_latents": "disk"},
                        precision={"gradient_checkpointing": False})
    _, flop = dry_run_json(capsys, config, "--gpu", "A6000", "--workspace", str(ws.root))
    assert flop["speed_source"].startswith("FLOP model")
    table = tmp_path / "speeds.toml"
    table.write_text("format_version = 1\n")
    add_measurement({"gpu": "NVIDIA RTX A6000", "arch": "sdxl", "resolution": 1024, "mode": "full", "batch_size": 1,
                     "gradient_checkpointing": False, "s_per_step": 2.5, "source": "bench/train_step.py on test"}, table)
    add_measurement({"gpu": "NVIDIA RTX A6000", "arch": "sdxl", "resolution": 1024, "mode": "full", "batch_size": 1,
                     "gradient_checkpointing": True, "s_per_step": 9.0, "source": "other setting"}, table)
    monkeypatch.setattr(calibration, "TABLE", table)
    _, measured = dry_run_json(capsys, config, "--gpu", "A6000", "--workspace", str(ws.root))
    assert measured["speed_source"] == "measured (NVIDIA RTX A6000, bench/train_step.py on test)"
    assert measured["seconds_per_step"] == pytest.approx(3 * 2.5)  # gradient accumulation 3, batch 1


def test_an_adapter_run_fits_24_gb_and_its_state_is_the_adapters(ws, capsys):
    """SDXL LoRA rank 32 at 1024², batch 1, checkpointing: within 24 GB; its training state holds the adapter
    (~85 M parameters + 8-bit moments), not the 2.6 B U-Net a full fine-tune's state holds."""
    lora = run_config(ws, "sdxl_lora_24gb", model={"base_model": SDXL_HUB}, saving={"keep_last_states": 1})
    code, report = dry_run_json(capsys, lora, "--gpu", "4090", "--workspace", str(ws.root))
    assert code == 0 and report["fits"]["24"] and report["vram_by_part"]["gradients"] < 0.5
    assert report["trains"] == "lora" and 70e6 < report["trained_params"] < 100e6
    assert "trains: a lora adapter, 85.1 M parameters" in dryrun.format_report(report)
    full = run_config(ws, "sdxl_finetune_a6000", model={"base_model": SDXL_HUB})
    _, full_report = dry_run_json(capsys, full, "--gpu", "4090", "--workspace", str(ws.root))
    assert report["disk_by_part"]["states"] < 1.5 < 10 < full_report["disk_by_part"]["states"]
    assert report["seconds_per_step"] < full_report["seconds_per_step"]  # no base weight gradients
