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
    assert est.fits and est.hours > 0 and est.cost == pytest.approx(est.hours * 1.0)  # hours x price per hour
    assert f"≈ {est.cost:.2f} at your price" in est.summary() and "VRAM" in est.summary()


def test_new_optimizers_and_ema_change_the_memory_estimate():
    parts = {name: estimate_run(**{**GUIDE, "optimizer": name}, gradient_checkpointing=True).vram_parts["optimizer"]
             for name in ("AdamW", "Lion", "Lion8bit", "Prodigy")}
    assert parts["Lion"] == pytest.approx(parts["AdamW"] / 2, rel=0.05)  # one moment instead of two
    assert parts["Lion8bit"] < parts["Lion"] / 3 and parts["Prodigy"] == pytest.approx(2 * parts["AdamW"], rel=0.05)
    plain = estimate_run(**GUIDE, gradient_checkpointing=True)
    ema = estimate_run(**GUIDE, gradient_checkpointing=True, ema_on_gpu=True, vram_gb=47.5)
    assert ema.vram_gb - plain.vram_gb == pytest.approx(ema.vram_parts["ema"]) and ema.vram_parts["ema"] > 10
    assert not ema.fits and "ema.device = 'cpu'" in ema.notes[0]  # the guide: EMA needs the A100


# ---------------------------------------------------------------- adapters (LoRA / LyCORIS)

def _adapter(name: str):
    from helpers.config import build_config
    from helpers.training.config import TrainConfig
    from helpers.training.preflight import adapter_plan

    cfg = build_config(TrainConfig, name)
    return cfg, adapter_plan(cfg, cfg.model.arch)


def test_an_sdxl_lora_step_skips_the_base_weight_gradients():
    """14.2 of 20.2 TFLOP per 1024² image (counted with the weights frozen), no gradients or optimizer state for
    the frozen fp16 base: SDXL LoRA rank 32, batch 1, checkpointing fits 24 GB; a full fine-tune does not."""
    from helpers.training.preflight import AdapterPlan

    lora = dict(GUIDE, cached_latents=True, train_te1=False, train_te2=False, gpu_name="RTX 4090", vram_gb=24.0)
    cfg, plan = _adapter("sdxl_lora_24gb")
    assert 70e6 < plan.params < 100e6 and plan.algo == "lora" and plan.base_bytes == 2  # rank 32, attn + MLP
    est = estimate_run(**lora, gradient_checkpointing=False, adapter=plan)
    full = estimate_run(**lora, gradient_checkpointing=False)
    assert est.images_per_s / full.images_per_s == pytest.approx(20.2 / 14.2, rel=0.01)
    assert est.trained_params == plan.params and est.vram_parts["gradients"] == pytest.approx(plan.params * 4 / 1e9, abs=0.06)
    fits = estimate_run(**lora, gradient_checkpointing=True, adapter=plan)
    assert fits.fits and fits.vram_gb < 20 and not estimate_run(**lora, gradient_checkpointing=True).fits
    int8 = estimate_run(**lora, gradient_checkpointing=True, adapter=AdapterPlan(plan.params, "lora", 2, True))
    assert fits.vram_parts["weights"] - int8.vram_parts["weights"] == pytest.approx(2.57, abs=0.1)  # 1 byte less
    # DoRA (and the full delta) rebuild the weight each step: its gradient costs what a full fine-tune's does
    dora = estimate_run(**lora, gradient_checkpointing=False, adapter=AdapterPlan(plan.params, "lokr", 2, False, True))
    assert dora.images_per_s == pytest.approx(full.images_per_s)
    too_big = estimate_run(**{**lora, "batch_size": 8}, gradient_checkpointing=False, adapter=plan)
    assert not too_big.fits and "gradient checkpointing" in too_big.notes[0] and "base_int8" in too_big.notes[0]


def test_the_frozen_flop_count_is_below_the_trained_one(tiny_sdxl_dir):
    import json

    from helpers.training.preflight import count_unet_train_flops

    config = json.loads((tiny_sdxl_dir / "unet" / "config.json").read_text())
    trained, frozen = count_unet_train_flops(config, 64), count_unet_train_flops(config, 64, frozen=True)
    assert 0.55 < frozen / trained < 0.85  # SDXL at 1024²: 14.2 / 20.2 = 0.70


def test_adapter_sizes_follow_rank_preset_factor_and_text_encoders():
    from helpers.training.adapter_size import adapter_parameter_count
    from helpers.training.network import ModuleRule, NetworkConfig

    count = lambda **kw: sum(adapter_parameter_count(NetworkConfig(**kw), "sdxl").values())  # noqa: E731
    r32 = count(algo="lora", dim=32)
    assert count(algo="lora", dim=64) == pytest.approx(2 * r32, rel=0.001)  # LoRA: dim x (in + out) per layer
    assert count(algo="lora", dim=32, preset="attn-only") < r32 < count(algo="locon", dim=32, preset="full-unet",
                                                                         conv_dim=16)
    te = adapter_parameter_count(NetworkConfig(algo="lora", dim=32, train_text_encoder=True), "sdxl")
    assert set(te) == {"unet", "te1", "te2"} and te["te2"] > te["te1"] > 0
    lokr8 = count(algo="lokr", factor=8, full_matrix=True, dim=100000, alpha=1)
    lokr4_attn = count(algo="lokr", factor=8, full_matrix=True, dim=100000, alpha=1,
                       module_rules=[ModuleRule(match="Attention", factor=4)])
    assert lokr4_attn > lokr8  # a smaller factor: a bigger full second Kronecker factor
    _cfg, kohaku = _adapter("kohaku_xl_lokr")
    assert kohaku.params * 2 < 800e6  # card: the LoKr file is under 800 MB (fp16)
