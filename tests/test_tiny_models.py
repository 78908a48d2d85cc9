"""The tiny offline models keep the real topology the converters depend on, and load like real ones."""

from __future__ import annotations

import json


def test_tiny_sdxl_topology_and_layout(tiny_sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    index = json.loads((tiny_sdxl_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    for part in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (tiny_sdxl_dir / part).is_dir(), part
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir, local_files_only=True)
    assert len(pipe.unet.down_blocks) == 3 and all(len(b.resnets) == 2 for b in pipe.unet.down_blocks)
    assert len(pipe.vae.encoder.down_blocks) == 4
    # diffusers' single-file loader tells the two text encoders apart by width
    assert pipe.text_encoder.config.hidden_size != pipe.text_encoder_2.config.hidden_size
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size + \
        pipe.text_encoder_2.config.hidden_size
    assert pipe.tokenizer("a cat!").input_ids[0] == 512 and pipe.tokenizer_2.pad_token == "!"
    image = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3)


def test_tiny_sd15_v_prediction(tiny_sd15_v_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_v_dir, local_files_only=True, safety_checker=None)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert len(pipe.unet.down_blocks) == 4 and pipe.unet.config.cross_attention_dim == 32
    assert pipe.vae.config.scaling_factor == 0.18215
