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


# ---------------------------------------------------------------- zero terminal SNR


def test_zero_terminal_snr_matches_diffusers_rescale():
    from diffusers import DDPMScheduler
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    expected = torch.cumprod(1.0 - rescale_zero_terminal_snr(betas), dim=0)
    ours = obj.rescale_zero_terminal_snr(obj.scaled_linear_alphas_cumprod())
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-7)
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          rescale_betas_zero_snr=True)
    assert torch.allclose(ours, sched.alphas_cumprod, rtol=1e-5, atol=1e-7)
    assert ours[-1].item() == 0.0 and ours[0].item() == pytest.approx(1 - 0.00085, rel=1e-6)
    assert obj.compute_snr(torch.tensor([999]), ours).item() == 0.0
    assert bool((ours[1:] < ours[:-1]).all())  # still strictly decreasing


# ---------------------------------------------------------------- timesteps and noise


def test_logit_normal_timesteps_favour_the_middle_and_respect_the_range():
    g = torch.Generator().manual_seed(0)
    t = obj.sample_timesteps(20_000, g, 100, 900, "logit_normal", 0.0, 1.0)
    assert t.min() >= 100 and t.max() <= 899
    middle = ((t >= 400) & (t < 600)).float().mean().item()
    assert middle > 0.3  # uniform would put 25% there
    shifted = obj.sample_timesteps(20_000, torch.Generator().manual_seed(0), 0, 1000, "logit_normal", -1.0, 1.0)
    assert shifted.float().mean() < 350  # a negative mean leans towards less noise
    with pytest.raises(ValueError, match="distribution"):
        obj.sample_timesteps(2, g, 0, 1000, "cosmap")


def test_noise_offset_random_strength_and_adaptive_scale():
    lat = torch.zeros(2, 4, 8, 8)
    lat[:, 1] = 3.0  # channel 1 has mean 3: the adaptive scale adds 0.5·3 there
    g = torch.Generator().manual_seed(2)
    fixed = obj.offset_strength(lat, g, 0.1)
    assert torch.equal(fixed, torch.full((2, 4, 1, 1), 0.1))
    strengths = [obj.offset_strength(lat, torch.Generator().manual_seed(s), 0.1, random_strength=True)
                 for s in range(20)]
    values = sorted({round(s[0, 0, 0, 0].item(), 6) for s in strengths})
    assert len(values) == 20 and 0.0 <= values[0] and values[-1] <= 0.1  # one U(0, 0.1) draw per batch
    adaptive = obj.offset_strength(lat, torch.Generator().manual_seed(2), 0.1, adaptive_scale=0.5)
    assert adaptive[0, :, 0, 0].tolist() == pytest.approx([0.1, 1.6, 0.1, 0.1])
    # sample_noise uses it: the per-channel constant is strength × N(0, 1)
    plain = obj.sample_noise(lat, torch.Generator().manual_seed(4))
    ada = obj.sample_noise(lat, torch.Generator().manual_seed(4), 0.1, adaptive_noise_scale=0.5)
    diff = (ada - plain)[:, :, 0, 0]
    g = torch.Generator().manual_seed(4)
    torch.randn(lat.shape, generator=g)
    assert torch.allclose(diff, (adaptive * torch.randn((2, 4, 1, 1), generator=g))[:, :, 0, 0], atol=1e-6)


def test_pyramid_noise_adds_low_frequencies_and_keeps_unit_std():
    lat = torch.zeros(8, 4, 64, 64)
    plain = obj.sample_noise(lat, torch.Generator().manual_seed(0))
    pyr = obj.sample_noise(lat, torch.Generator().manual_seed(0), multires_iterations=6, multires_discount=0.4)
    assert pyr.std().item() == pytest.approx(1.0, abs=1e-4)
    # low-frequency energy: the variance of 16×16 block means is well above white noise's 1/256
    def block_var(x):
        return torch.nn.functional.avg_pool2d(x, 16).var().item()
    assert block_var(plain) < 0.005 and block_var(pyr) > 0.01
    weak = obj.sample_noise(lat, torch.Generator().manual_seed(0), multires_iterations=6, multires_discount=0.1)
    assert block_var(weak) < block_var(pyr)  # the discount sets how much the coarse levels weigh


def test_input_perturbation_changes_only_the_noise_that_goes_in():
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(5)
    perturbed = obj.perturb_noise(noise, g, 0.1)
    xi = torch.randn(noise.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(perturbed, noise + 0.1 * xi, atol=1e-7)
    assert obj.perturb_noise(noise, g, 0.0) is noise
    g = torch.Generator().manual_seed(5)
    u = torch.rand(1, generator=torch.Generator().manual_seed(5)).item()
    random = obj.perturb_noise(noise, g, 0.1, random_strength=True)
    g2 = torch.Generator().manual_seed(5)
    torch.rand(1, generator=g2)
    assert torch.allclose(random, noise + 0.1 * u * torch.randn(noise.shape, generator=g2), atol=1e-7)


# ---------------------------------------------------------------- weights and losses


def test_soft_min_snr_and_debiased_weights_by_hand():
    snr = torch.tensor([9.0, 1.0, 0.25, 0.0])
    # soft: x0 weight SNR·γ/(SNR+γ); ε = γ/(SNR+γ); v = SNR·γ/((SNR+γ)(SNR+1))
    assert obj.soft_min_snr_weights(snr, 5.0, "epsilon").tolist() == pytest.approx([5 / 14, 5 / 6, 5 / 5.25, 1.0])
    assert obj.soft_min_snr_weights(snr, 5.0, "v_prediction").tolist() == pytest.approx(
        [45 / (14 * 10), 5 / (6 * 2), 1.25 / (5.25 * 1.25), 0.0])
    assert obj.debiased_weights(snr, "epsilon").tolist() == pytest.approx([1 / 3, 1.0, 2.0, 1 / 0.001 ** 0.5])
    assert obj.debiased_weights(snr, "v_prediction").tolist() == pytest.approx([0.1, 0.5, 0.8, 1 / 1.001])
    # zero terminal SNR: min-SNR's ε weight is its limit 1 (not NaN), v weight 0
    assert obj.min_snr_weights(snr, 5.0, "epsilon").tolist() == pytest.approx([5 / 9, 1.0, 1.0, 1.0])
    assert obj.min_snr_weights(snr, 5.0, "v_prediction")[-1].item() == 0.0


def test_loss_weights_combine_as_sd_scripts_does():
    snr = torch.tensor([9.0, 0.25])
    assert obj.loss_weights(snr, "epsilon") is None
    both = obj.loss_weights(snr, "epsilon", min_snr_gamma=5.0, debiased=True)
    assert torch.allclose(both, obj.min_snr_weights(snr, 5.0, "epsilon") * obj.debiased_weights(snr, "epsilon"))
    soft = obj.loss_weights(snr, "v_prediction", min_snr_gamma=5.0, soft_min_snr=True)
    assert torch.allclose(soft, obj.soft_min_snr_weights(snr, 5.0, "v_prediction"))


def test_huber_thresholds_by_hand():
    abar = torch.tensor([0.8, 0.5, 0.0])  # σ = 0.5, 1, inf
    t = torch.tensor([0, 1, 2])
    snr_c = obj.huber_thresholds(t, abar, "snr", 0.1)
    assert snr_c.tolist() == pytest.approx([0.9 / 2.25 + 0.1, 0.9 / 4 + 0.1, 0.1])
    exp_c = obj.huber_thresholds(torch.tensor([0, 500, 1000]), abar, "exponential", 0.1, huber_scale=2.0)
    assert exp_c.tolist() == pytest.approx([2.0, 2.0 * 0.1 ** 0.5, 0.2])
    assert obj.huber_thresholds(t, abar, "constant", 0.1, 3.0).tolist() == pytest.approx([0.3] * 3)


def test_elementwise_losses_by_hand_and_limits():
    pred, target = torch.tensor([[3.0]]), torch.tensor([[0.0]])
    c = torch.tensor([4.0])
    assert obj.elementwise_loss(pred, target, "l2").item() == 9.0
    assert obj.elementwise_loss(pred, target, "l1").item() == 3.0
    assert obj.elementwise_loss(pred, target, "huber", c).item() == pytest.approx(2 * 4 * (5 - 4))
    assert obj.elementwise_loss(pred, target, "smooth_l1", c).item() == pytest.approx(2 * (5 - 4))
    assert obj.elementwise_loss(pred, target, "huber", torch.tensor([1e4])).item() == pytest.approx(9.0, rel=1e-3)
    assert obj.elementwise_loss(pred, target, "smooth_l1", torch.tensor([1e-4])).item() == pytest.approx(6.0, 1e-3)
    with pytest.raises(ValueError, match="huber_c"):
        obj.elementwise_loss(pred, target, "huber")


def test_masked_loss_ignores_masked_out_pixels():
    target = torch.zeros(2, 4, 8, 8)
    pred = target.clone()
    pred[:, :, :, 4:] = 5.0  # wrong only on the right half
    pixel_mask = torch.zeros(2, 1, 64, 64)
    pixel_mask[:, :, :, :32] = 1.0  # train only the left half
    mask = obj.latent_mask(pixel_mask, (8, 8))
    assert mask.shape == (2, 1, 8, 8) and mask.sum().item() == 2 * 32
    assert obj.diffusion_loss(pred, target, mask=mask).item() == 0.0
    assert obj.diffusion_loss(pred, target).item() == pytest.approx(12.5)
    flipped = obj.latent_mask(1 - pixel_mask, (8, 8))
    assert obj.diffusion_loss(pred, target, mask=flipped).item() == pytest.approx(12.5)  # mean over all pixels
    l1 = obj.diffusion_loss(pred, target, loss_type="l1")
    assert l1.item() == pytest.approx(2.5)
