"""The diffusion training objective: schedule, timesteps, noise, noisy latents, targets, loss weights, loss.

Pure tensor functions with no model or config in sight; the loop calls them in this order:
``sample_timesteps`` -> ``sample_noise`` (offset, pyramid) -> ``perturb_noise`` (input perturbation) ->
``add_noise`` -> (U-Net) -> ``compute_target`` -> ``loss_weights`` (min-SNR, soft min-SNR, debiased) ->
``huber_thresholds`` -> ``diffusion_loss`` (L2/L1/Huber/smooth-L1, optional mask). The schedule is the one SD 1.5
and SDXL were trained with (``scaled_linear_alphas_cumprod``), optionally rescaled to zero terminal SNR
(``rescale_zero_terminal_snr``). Every random draw comes from the generator passed in, in a fixed order, so a
batch's noise depends only on its seed. Sources are named on each function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- schedule


def scaled_linear_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> torch.Tensor:
    """ᾱ_t for the "scaled_linear" schedule: β = linspace(√β₀, √β₁, T)², ᾱ_t = Π(1 − β).

    Source: LDM/SGM configs (linear_start 0.00085, linear_end 0.012) and diffusers ``DDPMScheduler``.
    """
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """ᾱ_t rescaled so the last timestep is pure noise (SNR_T = 0) and the first keeps its value.

    Source: Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", arXiv:2305.08891,
    Algorithm 1: √ᾱ ← (√ᾱ − √ᾱ_T) · √ᾱ_0 / (√ᾱ_0 − √ᾱ_T). Equal to diffusers' ``rescale_zero_terminal_snr``
    (which works on betas). Only a v-prediction model can learn t = T: there the ε target equals the input.
    """
    root = alphas_cumprod.double().sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return (root ** 2).to(alphas_cumprod.dtype)


def compute_snr(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """SNR_t = ᾱ_t / (1 − ᾱ_t) per sample (Kingma et al. 2021, "Variational Diffusion Models").

    Computed from the schedule the batch was noised with: after a zero-terminal-SNR rescale that is the
    rescaled ᾱ (SNR_T = 0), not the original one (see ``loss_weights`` for why).
    """
    abar = alphas_cumprod.to(timesteps.device)[timesteps].double()
    return (abar / (1 - abar)).float()


# ---------------------------------------------------------------- timesteps and noise


def sample_timesteps(batch_size: int, generator: torch.Generator, min_timestep: int = 0, max_timestep: int = 1000,
                     distribution: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
    """Integer timesteps in [min_timestep, max_timestep) (upper bound exclusive).

    ``uniform``: every timestep equally likely (sd-scripts ``--min/max_timestep``, DDPM). ``logit_normal``:
    u = sigmoid(N(mean, std)) mapped onto the range, which favours the middle timesteps (Esser et al. 2024,
    "Scaling Rectified Flow Transformers", arXiv:2403.03206, §3.1; mean < 0 leans towards less noise).
    """
    device = generator.device
    if distribution == "uniform":
        return torch.randint(min_timestep, max_timestep, (batch_size,), generator=generator, device=device)
    if distribution == "logit_normal":
        u = torch.sigmoid(logit_mean + logit_std * torch.randn(batch_size, generator=generator, device=device))
        t = min_timestep + (u * (max_timestep - min_timestep)).long()
        return t.clamp_(min_timestep, max_timestep - 1)
    raise ValueError(f"timestep distribution must be 'uniform' or 'logit_normal', got {distribution!r}")


def offset_strength(latents: torch.Tensor, generator: torch.Generator, noise_offset: float,
                    random_strength: bool = False, adaptive_scale: float = 0.0) -> torch.Tensor:
    """The offset-noise strength per (sample, channel), shape (B, C, 1, 1).

    Random strength draws one o ~ U(0, noise_offset) per batch; the adaptive scale adds a·|mean_hw(latent)|
    per channel, clamped at 0. Source: sd-scripts ``apply_noise_offset`` (``--noise_offset_random_strength``,
    ``--adaptive_noise_scale``).
    """
    b, c = latents.shape[:2]
    strength = torch.full((b, c, 1, 1), float(noise_offset), device=generator.device)
    if random_strength:
        strength = strength * torch.rand(1, generator=generator, device=generator.device)
    if adaptive_scale:
        mean = latents.float().mean(dim=(2, 3), keepdim=True).abs().to(generator.device)
        strength = (strength + adaptive_scale * mean).clamp(min=0.0)
    return strength


def pyramid_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int,
                  discount: float) -> torch.Tensor:
    """Multi-resolution ("pyramid") noise: noise + Σ_i discountⁱ · upsample(randn at 1/rⁱ size), r ~ U(2, 4),
    stopping at 1×1, then scaled back to unit standard deviation over the batch.

    Source: Whitaker 2023, "Multi-Resolution Noise for Diffusion Model Training" (wandb report), as in
    sd-scripts ``pyramid_noise_like`` (whose first level, r⁰ = 1, is a full-size draw with weight 1).
    """
    b, c, h, w = noise.shape
    device = generator.device
    out = noise.float().to(device)
    for i in range(iterations):
        r = 2.0 + 2.0 * torch.rand(1, generator=generator, device=device).item()
        hn, wn = max(1, int(h / r ** i)), max(1, int(w / r ** i))
        level = torch.randn((b, c, hn, wn), generator=generator, device=device)
        out = out + F.interpolate(level, size=(h, w), mode="bilinear") * discount ** i
        if hn == 1 or wn == 1:
            break
    return out / out.std()


def sample_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0, *,
                 offset_random_strength: bool = False, adaptive_noise_scale: float = 0.0,
                 multires_iterations: int = 0, multires_discount: float = 0.3) -> torch.Tensor:
    """Gaussian noise like ``latents``, plus offset noise (a constant per sample and channel), then pyramid noise.

    Offset: https://www.crosslabs.org//blog/diffusion-with-offset-noise (sd-scripts ``apply_noise_offset``);
    offset first, pyramid second (which renormalises the sum), the order sd-scripts applies them in.
    """
    noise = torch.randn(latents.shape, generator=generator, device=generator.device)
    if noise_offset:
        strength = offset_strength(latents, generator, noise_offset, offset_random_strength, adaptive_noise_scale)
        noise = noise + strength * torch.randn(strength.shape, generator=generator, device=generator.device)
    if multires_iterations:
        noise = pyramid_noise(noise, generator, multires_iterations, multires_discount)
    return noise.to(device=latents.device, dtype=latents.dtype)


def perturb_noise(noise: torch.Tensor, generator: torch.Generator, gamma: float,
                  random_strength: bool = False) -> torch.Tensor:
    """Input perturbation: the noise that goes INTO x_t is ε + γ·ξ while the target keeps ε.

    Source: Ning et al. 2023, "Input Perturbation Reduces Exposure Bias in Diffusion Models", arXiv:2301.11706
    (γ ≈ 0.1); sd-scripts ``--ip_noise_gamma`` (``--ip_noise_gamma_random_strength``: γ ~ U(0, γ) per batch).
    """
    if not gamma:
        return noise
    device = generator.device
    strength = gamma * torch.rand(1, generator=generator, device=device).item() if random_strength else gamma
    extra = torch.randn(noise.shape, generator=generator, device=device).to(noise.device, noise.dtype)
    return noise + strength * extra


def _per_sample(values: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, 1, 1) to broadcast over a latent batch."""
    out = values.to(like.device)[timesteps.to(like.device)].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε  (Ho et al. 2020, DDPM, eq. 4)."""
    abar = _per_sample(alphas_cumprod, timesteps, latents)
    return abar.sqrt() * latents + (1 - abar).sqrt() * noise


def compute_target(prediction: str, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                   alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """What the U-Net must predict: ε ("epsilon") or v = √ᾱ_t · ε − √(1 − ᾱ_t) · x₀ ("v_prediction").

    Source: Salimans & Ho 2022, "Progressive Distillation", §4 (diffusers ``get_velocity``).
    """
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        abar = _per_sample(alphas_cumprod, timesteps, latents)
        return abar.sqrt() * noise - (1 - abar).sqrt() * latents
    raise ValueError(f"prediction must be 'epsilon' or 'v_prediction', got {prediction!r}")


# ---------------------------------------------------------------- loss weights


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Min-SNR-γ: x₀-space weight min(SNR, γ), i.e. min(SNR, γ)/SNR for ε and min(SNR, γ)/(SNR + 1) for v.

    Source: Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy",
    arXiv:2303.09556 (γ = 5); the ε form is written min(1, γ/SNR) so SNR = 0 gives its limit 1, not 0/0.
    """
    if prediction == "v_prediction":
        return torch.clamp(snr, max=gamma) / (snr + 1)
    return torch.clamp(gamma / snr, max=1.0)


def soft_min_snr_weights(snr: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Soft min-SNR-γ: x₀-space weight 1/(1/SNR + 1/γ) = SNR·γ/(SNR + γ), a smooth min(SNR, γ).

    Source: Crowson et al. 2024, "Scalable High-Resolution Pixel-Space Image Synthesis with Hourglass
    Diffusion Transformers", arXiv:2401.11605, §"soft-min-snr" (their σ_data⁻² plays γ). In ε space that is
    γ/(SNR + γ); in v space SNR·γ/((SNR + γ)(SNR + 1)) (hyperfusion trained with it instead of min-SNR).
    """
    if prediction == "v_prediction":
        return snr * gamma / ((snr + gamma) * (snr + 1))
    return gamma / (snr + gamma)


def debiased_weights(snr: torch.Tensor, prediction: str) -> torch.Tensor:
    """Debiased estimation: 1/√SNR for ε, 1/(SNR + 1) for v, SNR clamped to [1e-3, 1000] as sd-scripts caps it.

    Source: Yu et al. 2024, "Unmasking Bias in Diffusion Model Training", arXiv:2310.08442; forms as in
    sd-scripts ``apply_debiased_estimation`` (the lower clamp keeps ε at SNR = 0 finite).
    """
    snr = snr.clamp(min=1e-3, max=1000.0)
    return 1.0 / (snr + 1) if prediction == "v_prediction" else 1.0 / snr.sqrt()


def loss_weights(snr: torch.Tensor, prediction: str, *, min_snr_gamma: float = 0.0, soft_min_snr: bool = False,
                 debiased: bool = False) -> torch.Tensor | None:
    """Per-sample loss weights (None = all 1): min-SNR or soft min-SNR times debiased, as sd-scripts stacks them.

    ``snr`` must come from the schedule the latents were noised with. sd-scripts computes its SNR table before
    its zero-terminal-SNR rescale and never updates it, so with both on it weights each sample by the SNR of a
    noise level it did not use: at t = 900 the rescaled SNR is 0.0030, the stale one 0.0144 (min-SNR then
    weights that v-loss 4.8x too much), and near t = T the stale table acts as a floor of SNR ≈ 0.005. The
    weights exist to convert between loss spaces at the sample's actual noise level, so the rescaled SNR is
    right. Consequence, stated: with zero terminal SNR, min-SNR's v weight ≈ SNR goes to 0 over the last ~5%
    of timesteps (0.0006 at t = 950, 0 at t = T), where sd-scripts keeps ≈ 0.005; debiased v weights go to 1.
    """
    weights = None
    if min_snr_gamma:
        fn = soft_min_snr_weights if soft_min_snr else min_snr_weights
        weights = fn(snr, min_snr_gamma, prediction)
    if debiased:
        d = debiased_weights(snr, prediction)
        weights = d if weights is None else weights * d
    return weights


def huber_thresholds(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, schedule: str, huber_c: float,
                     huber_scale: float = 1.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The Huber threshold c per sample: "snr" (1 − c)/(1 + σ_t)² + c with σ_t = √((1 − ᾱ_t)/ᾱ_t),
    "exponential" scale · exp(ln(c) · t/T), "constant" c · scale.

    Source: Khrapov et al. 2024, "Improving Diffusion Models's Data-Corruption Resistance using Scheduled
    Pseudo-Huber Loss", arXiv:2403.16728; sd-scripts ``get_huber_threshold_if_needed``.
    """
    t = timesteps.float()
    if schedule == "snr":
        abar = alphas_cumprod.to(timesteps.device)[timesteps].double()
        sigma = ((1 - abar) / abar).sqrt()  # inf at a zero-terminal-SNR t = T: c there is huber_c
        return ((1 - huber_c) / (1 + sigma) ** 2 + huber_c).float()
    if schedule == "exponential":
        return torch.exp(math.log(huber_c) * t / num_train_timesteps) * huber_scale
    if schedule == "constant":
        return torch.full_like(t, huber_c * huber_scale)
    raise ValueError(f"huber schedule must be 'snr', 'exponential' or 'constant', got {schedule!r}")


# ---------------------------------------------------------------- loss


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                     huber_c: torch.Tensor | None = None) -> torch.Tensor:
    """Per-element loss in fp32: "l2" (p − y)², "l1" |p − y|, "huber" 2c(√((p − y)² + c²) − c),
    "smooth_l1" 2(√((p − y)² + c²) − c), with c per sample.

    Source: sd-scripts ``conditional_loss`` (pseudo-Huber, Charbonnier 1997; scaled so "huber" → L2 as c → ∞
    and → 2c·L1 as c → 0).
    """
    diff = pred.float() - target.float()
    if loss_type == "l2":
        return diff ** 2
    if loss_type == "l1":
        return diff.abs()
    if loss_type in ("huber", "smooth_l1"):
        if huber_c is None:
            raise ValueError(f"loss_type {loss_type!r} needs huber_c")
        c = huber_c.to(diff).reshape(-1, *([1] * (diff.ndim - 1)))
        root = diff ** 2 / (torch.sqrt(diff ** 2 + c ** 2) + c)  # = √(d² + c²) − c without cancellation
        return 2 * c * root if loss_type == "huber" else 2 * root
    raise ValueError(f"loss_type must be l2, l1, huber or smooth_l1, got {loss_type!r}")


def latent_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (B, 1, H, W) pixel mask in [0, 1] averaged down to latent size (area interpolation, as sd-scripts
    ``apply_masked_loss`` does)."""
    return F.interpolate(mask.float(), size=size, mode="area")


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None, *,
                   loss_type: str = "l2", huber_c: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss per sample (over C, H, W), times optional per-sample weights, averaged (fp32).

    ``mask`` (B, 1, h, w) at latent size multiplies the per-pixel loss before the mean, so masked-out pixels
    teach nothing (sd-scripts ``--masked_loss``: the mean is still over all pixels, not the masked area).
    """
    loss = elementwise_loss(pred, target, loss_type, huber_c)
    if mask is not None:
        loss = loss * mask.to(loss)
    per_sample = loss.mean(dim=list(range(1, pred.ndim)))
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean()
