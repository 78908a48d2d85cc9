"""Prompts over 75 tokens: encoded in kohya's 75-token chunks (as training reads captions), not cut at 77.

A short prompt takes diffusers' own path, and the chunk encoder gives the same embeddings for it (so the two
paths agree where both apply); words past token 75 change the image; a prompt past the 525-token limit is cut there, with a warning.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.generation.long_prompts import chunk_limit, long_prompt_embeds, token_count
from helpers.generation.parameters import format_parameters
from helpers.generation.pipeline import ImageGenerator, ImageSettings
from helpers.models import load_model

SHORT = "a watercolor painting of a red fox in the snow"


def _long(tokenizer, tail: str) -> str:
    words = []
    while token_count(tokenizer, " ".join(words)) < 90:
        words.append("painting")
    return " ".join(words) + " " + tail


@pytest.fixture(scope="module", params=["sdxl", "sd15"])
def generator(request, tiny_sdxl_dir, tiny_sd15_dir):
    folder = tiny_sdxl_dir if request.param == "sdxl" else tiny_sd15_dir
    gen = ImageGenerator(load_model(folder), model_name=f"tiny-{request.param}")
    yield gen
    gen.close()


@pytest.mark.parametrize("negative", ["", "blurry, low quality"])
def test_short_prompts_give_diffusers_own_embeddings(generator, negative):
    gen = generator
    ours = long_prompt_embeds(gen.arch, gen.bundle.text_encoders, gen.bundle.tokenizers, [SHORT], [negative],
                              zeros_for_empty_negative=gen._zeros_for_empty_negative(), force=True)
    with torch.no_grad():
        theirs = gen.pipe.encode_prompt(SHORT, device=gen.device, num_images_per_prompt=1,
                                        do_classifier_free_guidance=True, negative_prompt=negative or None)
    names = ["prompt_embeds", "negative_prompt_embeds"]
    if gen.arch == "sdxl":
        names += ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    for name, value in zip(names, theirs, strict=True):
        torch.testing.assert_close(ours[name], value, msg=f"{gen.arch} {name}")


def test_words_past_token_75_change_the_image(generator):
    gen = generator
    tok = gen.bundle.tokenizers[0]
    first, second = _long(tok, "a red fox"), _long(tok, "a blue whale")
    assert chunk_limit(tok, [first]) == 150
    embeds = long_prompt_embeds(gen.arch, gen.bundle.text_encoders, gen.bundle.tokenizers, [first], [""])
    assert embeds["prompt_embeds"].shape[1] == 152, "two chunks: <BOS> + 150 tokens + <EOS>"
    settings = ImageSettings(prompt=first, steps=2, width=64, height=64, seed=3, sampler="Euler")
    (a,) = gen.generate(settings)
    (b,) = gen.generate(ImageSettings(prompt=second, steps=2, width=64, height=64, seed=3, sampler="Euler"))
    (again,) = gen.generate(settings)
    pa, pb = np.asarray(a.image).astype(int), np.asarray(b.image).astype(int)
    assert np.array_equal(pa, np.asarray(again.image).astype(int)), "same long prompt and seed: same image"
    assert np.abs(pa - pb).max() > 0, "the words after token 75 were ignored (cut at 77 positions)"
    assert a.parameters.prompt == first, "the PNG's parameters keep the whole prompt"


def test_a_prompt_past_the_limit_is_cut_at_525_tokens_and_said(generator, caplog):
    words = " ".join(["painting"] * 600)
    with caplog.at_level("WARNING", logger="helpers.generation.pipeline"):
        (image,) = generator.generate(ImageSettings(prompt=words, steps=1, width=64, height=64, seed=1))
    tokens = token_count(generator.bundle.tokenizers[0], words)
    assert f"a prompt of {tokens} tokens is cut at 525" in caplog.text
    assert image.parameters.prompt == words


def test_sd15_clip_skip_2_generates_and_differs_from_1(tiny_sd15_dir):
    """diffusers' own clip skip breaks under transformers 5 (text_model.final_layer_norm moved); ours does not."""
    gen = ImageGenerator(load_model(tiny_sd15_dir), model_name="tiny-sd15")
    try:
        images = [gen.generate(ImageSettings(prompt=SHORT, steps=2, width=64, height=64, seed=5, clip_skip=skip))[0]
                  for skip in (1, 2)]
    finally:
        gen.close()
    one, two = (np.asarray(i.image).astype(int) for i in images)
    assert np.abs(one - two).max() > 0, "clip skip 2 gave the clip skip 1 image"
    assert "Clip skip: 2" in format_parameters(images[1].parameters)
