"""What training needs to know about SD 1.5: one CLIP text encoder, no size conditioning.

The U-Net's cross-attention context is the last hidden layer of CLIP ViT-L (768, 77 tokens; "clip skip 1").
Source: Rombach et al. 2022 "High-Resolution Image Synthesis with Latent Diffusion Models" and diffusers
``StableDiffusionPipeline.encode_prompt``. Clip skip N reads the N-th layer from the end through the final
layer norm, as A1111 and kohya do (anime models such as NovelAI-derived ones are trained with clip skip 2);
captions longer than 75 tokens are read in 75-token chunks (``helpers.models.prompt_chunks``). Same
functions as ``helpers.models.sdxl``: the training loop calls either without knowing which.
"""

from __future__ import annotations

import torch

from helpers.models.prompt_chunks import CHUNK_TOKENS, join_chunks, tokenize_chunks

ARCH = "sd15"
LATENT_DOWNSCALE = 8
DEFAULT_RESOLUTION = 512


def tokenize_captions(tokenizers: list, captions: list[str], max_tokens: int = CHUNK_TOKENS) -> list[torch.Tensor]:
    """Token ids (batch, chunks, 77): ``max_tokens / 75`` chunks, padded/truncated (one chunk = plain CLIP)."""
    (tok,) = tokenizers
    return [tokenize_chunks(tok, captions, max_tokens)]


def encode_tokens(text_encoders: list, token_ids: list[torch.Tensor], clip_skip: int = 1) -> dict[str, torch.Tensor]:
    """U-Net text input: hidden states ``clip_skip`` layers from the end, through the final layer norm.

    Source: A1111 ``sd_hijack_clip.FrozenCLIPEmbedderWithCustomWords.encode_with_transformers`` and kohya
    ``SdTextEncodingStrategy.encode_tokens`` (``hidden_states[-clip_skip]`` then ``final_layer_norm``).
    """
    (te,) = text_encoders
    device = next(te.parameters()).device
    ids = token_ids[0]
    flat = ids.reshape(-1, ids.shape[-1]).to(device)
    if clip_skip == 1:
        hidden = te(flat).last_hidden_state
    else:
        model = getattr(te, "module", te)  # DDP wraps a trained encoder; the layer norm is the inner model's
        layers = model.config.num_hidden_layers
        if not 1 <= clip_skip <= layers:
            raise ValueError(f"clip_skip {clip_skip} is more than this text encoder's {layers} layers: use 1 or 2")
        states = te(flat, output_hidden_states=True).hidden_states
        # transformers 5 puts the layer norm on the model itself, 4.x on its .text_model
        norm = getattr(model, "final_layer_norm", None) or model.text_model.final_layer_norm
        hidden = norm(states[-clip_skip])
    return {"hidden": join_chunks(hidden, ids.shape[0])}


def unet_conditioning(text: dict[str, torch.Tensor], original_sizes: torch.Tensor, crop_top_lefts: torch.Tensor,
                      target_sizes: torch.Tensor, dtype: torch.dtype) -> dict:
    """Keyword arguments for ``UNet2DConditionModel.forward``; SD 1.5 ignores the size information."""
    return {"encoder_hidden_states": text["hidden"].to(dtype)}
