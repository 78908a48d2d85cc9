"""Name mapping diffusers/HF <-> original layout: hand-written expectations, full round trips on meta models
(tiny and real-size configs), and diffusers' own original->diffusers converter as the oracle."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.models import keymap

# (diffusers module path, original module path) written out by hand from the SGM/LDM block numbering
SDXL_MODULES = [
    ("conv_in", "input_blocks.0.0"),
    ("time_embedding.linear_1", "time_embed.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
    ("down_blocks.2.attentions.1.proj_in", "input_blocks.8.1.proj_in"),
    ("mid_block.resnets.0.time_emb_proj", "middle_block.0.emb_layers.1"),
    ("mid_block.attentions.0.transformer_blocks.1.ff.net.2", "middle_block.1.transformer_blocks.1.ff.net.2"),
    ("mid_block.resnets.1.norm2", "middle_block.2.out_layers.0"),
    ("up_blocks.0.resnets.2.conv2", "output_blocks.2.0.out_layers.3"),
    ("up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_k", "output_blocks.2.1.transformer_blocks.0.attn2.to_k"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("up_blocks.2.resnets.0.norm1", "output_blocks.6.0.in_layers.0"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
]
SD15_MODULES = [
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.1.1.transformer_blocks.0.attn1.to_q"),
    ("down_blocks.1.attentions.1.proj_out", "input_blocks.5.1.proj_out"),
    ("down_blocks.2.downsamplers.0.conv", "input_blocks.9.0.op"),
    ("down_blocks.3.resnets.1.conv2", "input_blocks.11.0.out_layers.3"),
    ("up_blocks.0.resnets.0.conv_shortcut", "output_blocks.0.0.skip_connection"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),  # no attention in up block 0: slot 1
    ("up_blocks.1.attentions.2.norm", "output_blocks.5.1.norm"),
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj",
     "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj"),
    ("mid_block.attentions.0.proj_in", "middle_block.1.proj_in"),
]


@pytest.mark.parametrize("arch,pairs", [("sdxl", SDXL_MODULES), ("sd15", SD15_MODULES)])
def test_unet_module_paths_both_ways(arch, pairs):
    for diffusers_path, original in pairs:
        assert keymap.unet_module_to_original(diffusers_path, arch) == original
        assert keymap.unet_module_to_diffusers(original, arch) == diffusers_path
        # parameter keys map the same way
        assert keymap.unet_key_to_original(diffusers_path + ".weight", arch) == \
            "model.diffusion_model." + original + ".weight"


@pytest.mark.parametrize("bad", ["down_blocks.9.resnets.0.conv1", "nonsense.weight", "down_blocks.0.attentions.0",
                                 "up_blocks.2.upsamplers.0.conv", "down_blocks.0.resnets.0.bogus"])
def test_unknown_unet_names_raise(bad):
    # SDXL down block 0 has no attention; the last up block has no upsampler
    with pytest.raises(keymap.UnknownKeyError):
        keymap.unet_module_to_original(bad, "sdxl")


def test_unknown_original_names_raise():
    for bad in ["input_blocks.1.1.proj_in", "output_blocks.8.2.conv", "middle_block.3.x", "label_emb.1.weight"]:
        with pytest.raises(keymap.UnknownKeyError):
            keymap.unet_module_to_diffusers(bad, "sdxl")


def test_vae_names():
    pairs = [("encoder.down_blocks.0.resnets.1.conv2.weight", "encoder.down.0.block.1.conv2.weight"),
             ("encoder.down_blocks.1.resnets.0.conv_shortcut.bias", "encoder.down.1.block.0.nin_shortcut.bias"),
             ("encoder.down_blocks.2.downsamplers.0.conv.weight", "encoder.down.2.downsample.conv.weight"),
             ("encoder.mid_block.attentions.0.to_q.weight", "encoder.mid.attn_1.q.weight"),
             ("encoder.mid_block.attentions.0.group_norm.bias", "encoder.mid.attn_1.norm.bias"),
             ("decoder.mid_block.attentions.0.to_out.0.weight", "decoder.mid.attn_1.proj_out.weight"),
             ("decoder.mid_block.resnets.1.norm1.weight", "decoder.mid.block_2.norm1.weight"),
             ("decoder.up_blocks.0.resnets.2.conv1.weight", "decoder.up.3.block.2.conv1.weight"),  # reversed
             ("decoder.up_blocks.2.upsamplers.0.conv.bias", "decoder.up.1.upsample.conv.bias"),
             ("decoder.conv_norm_out.weight", "decoder.norm_out.weight"),
             ("post_quant_conv.weight", "post_quant_conv.weight")]
    for d, o in pairs:
        assert keymap.vae_key_to_original(d) == o
        assert keymap.vae_key_to_diffusers(o) == d
    assert keymap.is_vae_attention_weight("decoder.mid_block.attentions.0.to_k.weight")
    assert not keymap.is_vae_attention_weight("decoder.mid_block.attentions.0.to_k.bias")


def test_text_encoder_names():
    assert keymap.te1_key_to_original("text_model.encoder.layers.0.self_attn.q_proj.weight", "sdxl") == \
        "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    assert keymap.te1_key_to_original("text_model.final_layer_norm.bias", "sd15") == \
        "cond_stage_model.transformer.text_model.final_layer_norm.bias"
    # old SD 1.x files without text_model. get it added
    assert keymap.te1_key_to_diffusers("cond_stage_model.transformer.embeddings.token_embedding.weight", "sd15") == \
        "text_model.embeddings.token_embedding.weight"
    p = "conditioner.embedders.1.model."
    for hf, oc in [("text_model.encoder.layers.3.self_attn.k_proj.bias", "transformer.resblocks.3.attn.in_proj_bias"),
                   ("text_model.encoder.layers.31.mlp.fc1.weight", "transformer.resblocks.31.mlp.c_fc.weight"),
                   ("text_model.encoder.layers.0.layer_norm2.bias", "transformer.resblocks.0.ln_2.bias"),
                   ("text_model.encoder.layers.0.self_attn.out_proj.weight", "transformer.resblocks.0.attn.out_proj.weight"),
                   ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
                   ("text_model.final_layer_norm.weight", "ln_final.weight"),
                   ("text_projection.weight", "text_projection")]:
        assert keymap.te2_key_to_original(hf) == p + oc
        assert hf in keymap.te2_key_to_diffusers(p + oc)
    assert keymap.te2_key_to_diffusers(p + "transformer.resblocks.2.attn.in_proj_weight") == [
        f"text_model.encoder.layers.2.self_attn.{x}_proj.weight" for x in "qkv"]
    with pytest.raises(keymap.UnknownKeyError):
        keymap.te1_key_to_original("encoder.layers.0.mlp.fc1.weight", "sdxl")  # callers must add text_model.


def _meta_unet(config: dict):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def _configs():
    from pathlib import Path

    from helpers.models.tiny import TINY_SD15_UNET, TINY_SDXL_UNET

    root = Path(keymap.__file__).parent / "configs"
    real = {a: json.loads((root / a / "unet" / "config.json").read_text()) for a in ("sdxl", "sd15")}
    return [("sdxl", TINY_SDXL_UNET, None), ("sd15", TINY_SD15_UNET, None),
            ("sdxl", real["sdxl"], 1680), ("sd15", real["sd15"], 686)]


@pytest.mark.parametrize("arch,config,count", _configs(), ids=["tiny-sdxl", "tiny-sd15", "real-sdxl", "real-sd15"])
def test_unet_round_trip_matches_diffusers_converter(arch, config, count):
    """Every key maps, maps back, and diffusers' own original->diffusers converter agrees (names and shapes)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = _meta_unet(config)
    state = unet.state_dict()
    original = {keymap.unet_key_to_original(k, arch): v for k, v in state.items()}
    assert len(original) == len(state)
    if count:
        assert len(original) == count  # the real SGM/LDM U-Net key count
    assert {keymap.unet_key_to_diffusers(k, arch) for k in original} == set(state)
    converted = convert_ldm_unet_checkpoint(original, unet.config)
    assert set(converted) == set(state)
    assert all(converted[k].shape == state[k].shape for k in state)
