"""Tiny random-weight SDXL and SD 1.5 pipelines, built offline, for the demo and the tests.

They keep the real block topology (SDXL: 3 U-Net levels, SD 1.5: 4 levels; 2 resnets per level; 4-level VAE;
SDXL's two text encoders with *different* widths, since diffusers' single-file loader tells them apart by
width) with tiny channel counts, so every converter and key mapping that works on them works on the real
models. The tokenizer is a byte-level CLIP vocabulary written to files by this module (no download).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch

Arch = Literal["sdxl", "sd15"]
Prediction = Literal["epsilon", "v_prediction"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP BPE use for raw bytes (same table as CLIP's tokenizer)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + n))
            n += 1
    return chars


def write_tokenizer_files(folder: str | os.PathLike, pad_token: str = EOS) -> Path:
    """A 514-token byte-level CLIP tokenizer (bytes, bytes + ``</w>``, BOS, EOS) with no merges."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + 256 for i, c in enumerate(chars)})
    vocab[BOS], vocab[EOS] = 512, 513
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {"model_max_length": 77, "bos_token": BOS, "eos_token": EOS, "unk_token": EOS,
              "pad_token": pad_token, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}), encoding="utf-8")
    return folder


def build_tokenizer(folder: str | os.PathLike, pad_token: str = EOS):
    from transformers import CLIPTokenizer

    write_tokenizer_files(folder, pad_token)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, pad_token=pad_token)


def _text_config(hidden: int, proj: int, layers: int, act: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=514, bos_token_id=512, eos_token_id=513, pad_token_id=513,
                          hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=2,
                          num_hidden_layers=layers, projection_dim=proj, max_position_embeddings=77,
                          hidden_act=act)


TINY_SDXL_UNET = dict(
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn", attention_head_dim=(2, 4, 4), use_linear_projection=True,
    transformer_layers_per_block=(1, 2, 2), cross_attention_dim=32 + 48, norm_num_groups=8,
    addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 16)  # 6 time ids * time dim + TE2 projection_dim

TINY_SD15_UNET = dict(
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=4, cross_attention_dim=32, norm_num_groups=8)

TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=4,
                block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64)


def build_tiny_pipeline(arch: Arch = "sdxl", prediction: Prediction = "epsilon", seed: int = 0,
                        tokenizer_dir: str | os.PathLike | None = None):
    """A random-weight SDXL or SD 1.5 diffusers pipeline with the real topology and tiny widths."""
    import tempfile

    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok_root = Path(tokenizer_dir or tempfile.mkdtemp(prefix="tunebook-tok-"))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
                                   prediction_type=prediction)
    if arch == "sdxl":
        vae = AutoencoderKL(**TINY_VAE, scaling_factor=0.13025, force_upcast=True)
        te1 = CLIPTextModel(_text_config(32, 32, 2, "quick_gelu"))
        te2 = CLIPTextModelWithProjection(_text_config(48, 16, 3, "gelu"))
        unet = UNet2DConditionModel(**TINY_SDXL_UNET)
        tok1 = build_tokenizer(tok_root / "tokenizer", EOS)
        tok2 = build_tokenizer(tok_root / "tokenizer_2", "!")  # SDXL's second tokenizer pads with "!" (id 0)
        return StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1,
                                         tokenizer_2=tok2, unet=unet, scheduler=sched)
    if arch == "sd15":
        vae = AutoencoderKL(**TINY_VAE, scaling_factor=0.18215)
        te = CLIPTextModel(_text_config(32, 32, 2, "quick_gelu"))
        unet = UNet2DConditionModel(**TINY_SD15_UNET)
        tok = build_tokenizer(tok_root / "tokenizer", EOS)
        return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    raise ValueError(f"arch must be 'sdxl' or 'sd15', got {arch!r}")


def save_tiny_model(folder: str | os.PathLike, arch: Arch = "sdxl", prediction: Prediction = "epsilon",
                    seed: int = 0) -> Path:
    """Write a tiny pipeline as a diffusers folder (the layout Hub repos use); returns the folder."""
    folder = Path(folder)
    pipe = build_tiny_pipeline(arch, prediction, seed, tokenizer_dir=folder.parent / f".{folder.name}-tok")
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder
