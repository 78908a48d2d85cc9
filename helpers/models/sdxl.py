"""What training needs to know about SDXL: two text encoders and size conditioning.

Text: both CLIP encoders read the caption (77 tokens each); the U-Net's cross-attention context is the
*penultimate* hidden layer of TE1 (CLIP ViT-L, 768) and TE2 (OpenCLIP bigG, 1280) concatenated (2048), and
TE2's projected pooled output is the "text_embeds" vector. Size conditioning: six "time ids" per image,
(original h, w, crop top, left, target h, w). Source: Podell et al. 2023 "SDXL" §2.2 and diffusers
``StableDiffusionXLPipeline.encode_prompt`` / ``_get_add_time_ids``.

The same three functions exist in ``helpers.models.sd15`` so the training loop has no family ``if``s.
"""

from __future__ import annotations

import torch

ARCH = "sdxl"
LATENT_DOWNSCALE = 8
DEFAULT_RESOLUTION = 1024


def tokenize_captions(tokenizers: list, captions: list[str]) -> list[torch.Tensor]:
    """Token ids per tokenizer, padded/truncated to the model's 77 tokens (SDXL pads TE2 with "!")."""
    return [tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                return_tensors="pt").input_ids for tok in tokenizers]


def encode_tokens(text_encoders: list, token_ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """U-Net text inputs: penultimate hidden states of both encoders side by side, and TE2's pooled vector."""
    te1, te2 = text_encoders
    device = next(te1.parameters()).device
    out1 = te1(token_ids[0].to(device), output_hidden_states=True)
    out2 = te2(token_ids[1].to(device), output_hidden_states=True)
    hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    return {"hidden": hidden, "pooled": out2.text_embeds}


def unet_conditioning(text: dict[str, torch.Tensor], original_sizes: torch.Tensor, crop_top_lefts: torch.Tensor,
                      target_sizes: torch.Tensor, dtype: torch.dtype) -> dict:
    """Keyword arguments for ``UNet2DConditionModel.forward`` besides the noisy latents and timesteps."""
    device = text["hidden"].device
    time_ids = torch.cat([original_sizes, crop_top_lefts, target_sizes], dim=1).to(device, dtype)
    return {"encoder_hidden_states": text["hidden"].to(dtype),
            "added_cond_kwargs": {"text_embeds": text["pooled"].to(dtype), "time_ids": time_ids}}
