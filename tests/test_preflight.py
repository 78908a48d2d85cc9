"""Pre-flight estimates: the guide's A6000 recipe fits 48 GB only with its memory savers; time and cost scale."""

from __future__ import annotations

import pytest

from helpers.training.preflight import estimate_config, estimate_run, gpu_peak_tflops

GUIDE = dict(arch="sdxl", resolution=1024, batch_size=1, total_images=12_000, optimizer="AdamW8bit", train_te1=True,
             train_te2=True, mixed_precision="fp16", full_half=False, vae_fp32=True, cached_latents=False)


def test_a6000_fits_with_checkpointing_only():
    ok = estimate_run(**GUIDE, gradient_checkpointing=True, gpu_name="NVIDIA RTX A6000", vram_gb=47.5)
    too_big = estimate_run(**GUIDE, gradient_checkpointing=False, gpu_name="NVIDIA RTX A6000", vram_gb=47.5)
    assert ok.fits and not too_big.fits
    assert "gradient checkpointing" in too_big.notes[0] and "AdamW8bit" not in too_big.notes[0]
    assert too_big.vram_gb - ok.vram_gb == pytest.approx(11.0, abs=0.2)


def test_adamw_state_costs_about_four_times_8bit():
    eight = estimate_run(**GUIDE, gradient_checkpointing=True)
    full = estimate_run(**{**GUIDE, "optimizer": "AdamW"}, gradient_checkpointing=True)
    assert full.vram_parts["optimizer"] / eight.vram_parts["optimizer"] == pytest.approx(8 / 2.05, rel=0.02)


def test_time_and_cost_scale_with_gpu_and_price():
    a6000 = estimate_run(**GUIDE, gradient_checkpointing=True, gpu_name="NVIDIA RTX A6000", price_per_hour=0.4)
    a100 = estimate_run(**GUIDE, gradient_checkpointing=True, gpu_name="NVIDIA A100-SXM4-80GB", price_per_hour=1.2)
    assert a100.images_per_s / a6000.images_per_s == pytest.approx(312 / 155)
    assert a6000.cost == pytest.approx(a6000.hours * 0.4) and a6000.hours == pytest.approx(12_000 / a6000.images_per_s / 3600)
    unknown = estimate_run(**GUIDE, gradient_checkpointing=True, gpu_name="Mystery GPU")
    assert unknown.hours is None and "no peak-FLOPs" in unknown.notes[0]
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989


def test_estimate_for_a_workspace_config(demo_workspace):
    from helpers import runner
    from helpers.workspace import Workspace

    ws = Workspace.open(demo_workspace)
    cfg = runner.suggest_train_config(ws, "demo_tiny")
    est = estimate_config(cfg, ws, gpu_name="NVIDIA A100-SXM4-80GB", vram_gb=80.0, price_per_hour=1.0)
    assert est.total_images == 12 * cfg.epochs  # 12 demo images, 1 repeat
    assert est.fits and est.cost is not None and "VRAM" in est.summary()


def test_new_optimizers_and_ema_change_the_memory_estimate():
    parts = {name: estimate_run(**{**GUIDE, "optimizer": name}, gradient_checkpointing=True).vram_parts["optimizer"]
             for name in ("AdamW", "Lion", "Lion8bit", "Prodigy")}
    assert parts["Lion"] == pytest.approx(parts["AdamW"] / 2, rel=0.05)  # one moment instead of two
    assert parts["Lion8bit"] < parts["Lion"] / 3 and parts["Prodigy"] == pytest.approx(2 * parts["AdamW"], rel=0.05)
    plain = estimate_run(**GUIDE, gradient_checkpointing=True)
    ema = estimate_run(**GUIDE, gradient_checkpointing=True, ema_on_gpu=True, vram_gb=47.5)
    assert ema.vram_gb - plain.vram_gb == pytest.approx(ema.vram_parts["ema"]) and ema.vram_parts["ema"] > 10
    assert not ema.fits and "ema.device = 'cpu'" in ema.notes[0]  # the guide: EMA needs the A100
