"""What training needs to know about SDXL: two text encoders and size conditioning.

Text: both CLIP encoders read the caption (77 tokens each); the U-Net's cross-attention context is the
*penultimate* hidden layer of TE1 (CLIP ViT-L, 768) and TE2 (OpenCLIP bigG, 1280) concatenated (2048), and
TE2's projected pooled output is the "text_embeds" vector. Captions longer than 75 tokens are read in
75-token chunks (``helpers.models.prompt_chunks``); the pooled vector is the first chunk's. Size conditioning: six "time ids" per image,
(original h, w, crop top, left, target h, w). Source: Podell et al. 2023 "SDXL" §2.2 and diffusers
``StableDiffusionXLPipeline.encode_prompt`` / ``_get_add_time_ids``.

The same three functions exist in ``helpers.models.sd15`` so the training loop has no family ``if``s.
"""

from __future__ import annotations

import torch

from helpers.models.prompt_chunks import CHUNK_TOKENS, first_chunks, join_chunks, tokenize_chunks

ARCH = "sdxl"
LATENT_DOWNSCALE = 8
DEFAULT_RESOLUTION = 1024


def tokenize_captions(tokenizers: list, captions: list[str], max_tokens: int = CHUNK_TOKENS) -> list[torch.Tensor]:
    """Token ids (batch, chunks, 77) per tokenizer: ``max_tokens / 75`` chunks (SDXL pads TE2 with "!")."""
    return [tokenize_chunks(tok, captions, max_tokens) for tok in tokenizers]


def encode_tokens(text_encoders: list, token_ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """U-Net text inputs: penultimate hidden states of both encoders side by side, and TE2's pooled vector.

    The pooled vector is ``text_embeds`` of each caption's first chunk: the projected state at its first
    <EOS>, which is what kohya's ``pool_workaround`` computes (the <EOS> id is the vocabulary's largest, so
    CLIP's argmax pooling finds the same position).
    """
    te1, te2 = text_encoders
    device = next(te1.parameters()).device
    batch = token_ids[0].shape[0]
    out1 = te1(token_ids[0].reshape(-1, token_ids[0].shape[-1]).to(device), output_hidden_states=True)
    out2 = te2(token_ids[1].reshape(-1, token_ids[1].shape[-1]).to(device), output_hidden_states=True)
    hidden = torch.cat([join_chunks(out1.hidden_states[-2], batch), join_chunks(out2.hidden_states[-2], batch)],
                       dim=-1)
    return {"hidden": hidden, "pooled": first_chunks(out2.text_embeds, batch)}


def unet_conditioning(text: dict[str, torch.Tensor], original_sizes: torch.Tensor, crop_top_lefts: torch.Tensor,
                      target_sizes: torch.Tensor, dtype: torch.dtype) -> dict:
    """Keyword arguments for ``UNet2DConditionModel.forward`` besides the noisy latents and timesteps."""
    device = text["hidden"].device
    time_ids = torch.cat([original_sizes, crop_top_lefts, target_sizes], dim=1).to(device, dtype)
    return {"encoder_hidden_states": text["hidden"].to(dtype),
            "added_cond_kwargs": {"text_embeds": text["pooled"].to(dtype), "time_ids": time_ids}}
