"""The diffusion training objective: timesteps, noise, noisy latents, targets and per-sample loss weights.

Pure tensor functions with no model or config in sight; the loop calls them in this order:
``sample_timesteps`` -> ``sample_noise`` -> ``add_noise`` -> (U-Net) -> ``compute_target`` ->
``min_snr_weights`` -> ``diffusion_loss``. The schedule is the one SD 1.5 and SDXL were trained with
(``scaled_linear_alphas_cumprod``). Sources are named on each function.
"""

from __future__ import annotations

import torch


def scaled_linear_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> torch.Tensor:
    """ᾱ_t for the "scaled_linear" schedule: β = linspace(√β₀, √β₁, T)², ᾱ_t = Π(1 − β).

    Source: LDM/SGM configs (linear_start 0.00085, linear_end 0.012) and diffusers ``DDPMScheduler``.
    """
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def sample_timesteps(batch_size: int, generator: torch.Generator, min_timestep: int = 0,
                     max_timestep: int = 1000) -> torch.Tensor:
    """Integer timesteps uniform in [min_timestep, max_timestep) (upper bound exclusive).

    Source: sd-scripts ``train_util.get_noise_noisy_latents_and_timesteps`` (``--min/max_timestep``).
    """
    return torch.randint(min_timestep, max_timestep, (batch_size,), generator=generator,
                         device=generator.device)


def sample_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise like ``latents``, plus ``noise_offset`` × a per-sample, per-channel constant.

    Source: https://www.crosslabs.org//blog/diffusion-with-offset-noise (sd-scripts ``apply_noise_offset``).
    """
    b, c = latents.shape[:2]
    noise = torch.randn(latents.shape, generator=generator, device=generator.device)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((b, c, 1, 1), generator=generator, device=generator.device)
    return noise.to(device=latents.device, dtype=latents.dtype)


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


def compute_snr(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """SNR_t = ᾱ_t / (1 − ᾱ_t) per sample (Kingma et al. 2021, "Variational Diffusion Models")."""
    abar = alphas_cumprod.to(timesteps.device)[timesteps].double()
    return (abar / (1 - abar)).float()


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Min-SNR-γ loss weights: min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v.

    Source: Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy",
    arXiv:2303.09556 (γ = 5); v form as in sd-scripts ``custom_train_functions.apply_snr_weight``.
    """
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction == "v_prediction" else clipped / snr


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample (over C, H, W), times optional per-sample weights, averaged (fp32)."""
    per_sample = ((pred.float() - target.float()) ** 2).mean(dim=list(range(1, pred.ndim)))
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean()
