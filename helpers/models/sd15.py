"""What training needs to know about SD 1.5: one CLIP text encoder, no size conditioning.

The U-Net's cross-attention context is the last hidden layer of CLIP ViT-L (768, 77 tokens; "clip skip 1").
Source: Rombach et al. 2022 "High-Resolution Image Synthesis with Latent Diffusion Models" and diffusers
``StableDiffusionPipeline.encode_prompt``. Same functions as ``helpers.models.sdxl``: the training loop
calls either without knowing which.
"""

from __future__ import annotations

import torch

ARCH = "sd15"
LATENT_DOWNSCALE = 8
DEFAULT_RESOLUTION = 512


def tokenize_captions(tokenizers: list, captions: list[str]) -> list[torch.Tensor]:
    """Token ids padded/truncated to 77 tokens."""
    (tok,) = tokenizers
    return [tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                return_tensors="pt").input_ids]


def encode_tokens(text_encoders: list, token_ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """U-Net text input: the encoder's final hidden states (after its final layer norm)."""
    (te,) = text_encoders
    device = next(te.parameters()).device
    return {"hidden": te(token_ids[0].to(device)).last_hidden_state}


def unet_conditioning(text: dict[str, torch.Tensor], original_sizes: torch.Tensor, crop_top_lefts: torch.Tensor,
                      target_sizes: torch.Tensor, dtype: torch.dtype) -> dict:
    """Keyword arguments for ``UNet2DConditionModel.forward``; SD 1.5 ignores the size information."""
    return {"encoder_hidden_states": text["hidden"].to(dtype)}
