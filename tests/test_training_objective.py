"""The objective against hand-computed values (and against diffusers' scheduler, as a second opinion)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.training import objective as obj


def test_schedule_first_and_last_values_by_hand():
    abar = obj.scaled_linear_alphas_cumprod()
    assert abar.shape == (1000,)
    assert abar[0].item() == pytest.approx(1 - 0.00085, rel=1e-6)
    # second step: (1 - β0)(1 - β1) with β1 = (√β0 + (√β_end − √β0)/999)²
    b1 = (0.00085 ** 0.5 + (0.012 ** 0.5 - 0.00085 ** 0.5) / 999) ** 2
    assert abar[1].item() == pytest.approx((1 - 0.00085) * (1 - b1), rel=1e-6)
    assert 0.004 < abar[-1].item() < 0.005  # the well-known SD schedule ends at ᾱ ≈ 0.0047


def test_schedule_matches_diffusers_ddpm():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, clip_sample=False)
    assert torch.allclose(obj.scaled_linear_alphas_cumprod(), sched.alphas_cumprod, rtol=1e-6, atol=0)


def test_timesteps_uniform_within_range_and_reproducible():
    g = torch.Generator().manual_seed(0)
    t = obj.sample_timesteps(10_000, g, 200, 300)
    assert t.dtype == torch.int64 and t.min() >= 200 and t.max() <= 299
    assert len(t.unique()) == 100  # every value of the range shows up
    assert abs(t.float().mean().item() - 249.5) < 1.5
    again = obj.sample_timesteps(10_000, torch.Generator().manual_seed(0), 200, 300)
    assert torch.equal(t, again)


def test_noise_offset_adds_one_constant_per_channel():
    lat = torch.zeros(2, 4, 8, 8)
    plain = obj.sample_noise(lat, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    offset = obj.sample_noise(lat, g, noise_offset=0.1)
    diff = offset - plain
    # the difference is constant over H, W for each (sample, channel), and 0.1 × a standard normal
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff), atol=1e-6)
    g2 = torch.Generator().manual_seed(1)
    torch.randn(lat.shape, generator=g2)
    expected = 0.1 * torch.randn((2, 4, 1, 1), generator=g2)
    assert torch.allclose(diff[:, :, :1, :1], expected, atol=1e-7)


def test_add_noise_and_targets_by_hand():
    abar = torch.tensor([0.64, 0.36])  # √ᾱ = 0.8 / 0.6, √(1−ᾱ) = 0.6 / 0.8
    x0 = torch.full((2, 1, 1, 1), 2.0)
    eps = torch.full((2, 1, 1, 1), 1.0)
    t = torch.tensor([0, 1])
    xt = obj.add_noise(x0, eps, t, abar)
    assert xt.flatten().tolist() == pytest.approx([0.8 * 2 + 0.6 * 1, 0.6 * 2 + 0.8 * 1])
    assert torch.equal(obj.compute_target("epsilon", x0, eps, t, abar), eps)
    v = obj.compute_target("v_prediction", x0, eps, t, abar)
    assert v.flatten().tolist() == pytest.approx([0.8 * 1 - 0.6 * 2, 0.6 * 1 - 0.8 * 2])
    with pytest.raises(ValueError, match="prediction"):
        obj.compute_target("sample", x0, eps, t, abar)


def test_velocity_matches_diffusers():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          prediction_type="v_prediction")
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    abar = obj.scaled_linear_alphas_cumprod()
    assert torch.allclose(obj.add_noise(x0, eps, t, abar), sched.add_noise(x0, eps, t), atol=1e-5)
    assert torch.allclose(obj.compute_target("v_prediction", x0, eps, t, abar), sched.get_velocity(x0, eps, t),
                          atol=1e-5)


def test_snr_and_min_snr_weights_by_hand():
    abar = torch.tensor([0.9, 0.5, 0.2])
    snr = obj.compute_snr(torch.tensor([0, 1, 2]), abar)
    assert snr.tolist() == pytest.approx([9.0, 1.0, 0.25], rel=1e-6)
    # γ = 5: ε → min(snr, 5)/snr ; v → min(snr, 5)/(snr + 1)
    assert obj.min_snr_weights(snr, 5.0, "epsilon").tolist() == pytest.approx([5 / 9, 1.0, 1.0])
    assert obj.min_snr_weights(snr, 5.0, "v_prediction").tolist() == pytest.approx([5 / 10, 0.5, 0.25 / 1.25])


def test_loss_is_weighted_mean_of_per_sample_mse():
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 3.0)])
    assert obj.diffusion_loss(pred, target).item() == pytest.approx((1 + 9) / 2)
    w = torch.tensor([2.0, 0.5])
    assert obj.diffusion_loss(pred, target, w).item() == pytest.approx((2 * 1 + 0.5 * 9) / 2)
    assert obj.diffusion_loss(pred.half(), target.half()).dtype == torch.float32
    assert math.isfinite(obj.diffusion_loss(pred, target).item())
