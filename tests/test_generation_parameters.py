"""The A1111 ``parameters`` PNG text: what we write parses back to the same settings, and A1111's own text reads."""

from __future__ import annotations

import pytest
from PIL import Image

from helpers.generation.parameters import (
    GenerationParameters,
    format_parameters,
    parse_parameter_text,
    parse_parameters,
    read_png_parameters,
    save_png,
)

FULL = GenerationParameters(
    prompt="masterpiece, 1girl: solo, \"quoted\" words\nsecond line of the prompt",
    negative_prompt="lowres, bad anatomy\nblurry",
    steps=28, sampler="DPM++ 2M Karras", cfg=6.5, seed=4_000_000_123, width=832, height=1216,
    model="my-finetune-e0004", model_hash="0123456789", loras=[("style", 0.8), ("char-v2", 1.0)],
    lora_hashes={"style": "abcdef012345", "char-v2": "0123456789ab"}, clip_skip=2, rescale_cfg=0.7,
    zero_terminal_snr=True, extra={"Training step": "1200", "Epoch": "4"})


@pytest.mark.parametrize("params", [
    FULL,
    GenerationParameters(prompt="a cat"),  # no negative prompt line, nothing optional
    GenerationParameters(prompt="日本語のプロンプト, 猫", negative_prompt="ぼやけ", seed=1,
                         model="モデル"),
])
def test_parameters_round_trip(params):
    assert parse_parameters(format_parameters(params)) == params


def test_written_text_has_a1111_shape():
    text = format_parameters(FULL)
    lines = text.split("\n")
    assert lines[0] == "masterpiece, 1girl: solo, \"quoted\" words"
    assert lines[1] == "second line of the prompt <lora:style:0.8> <lora:char-v2:1>"
    assert lines[2] == "Negative prompt: lowres, bad anatomy"
    assert lines[4].startswith("Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 4000000123, "
                               "Size: 832x1216, Model hash: 0123456789, Model: my-finetune-e0004, Clip skip: 2")
    assert 'Lora hashes: "style: abcdef012345, char-v2: 0123456789ab"' in lines[4]


def test_reads_a1111_text():
    # the example in A1111's infotext_utils.parse_generation_parameters docstring, plus the 1.9 schedule field
    text = ("girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, "
            "by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\n"
            "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy\n"
            "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 965400086, Size: 512x768, "
            "Model hash: 45dee52b, Lora hashes: \"add_detail: 7c6bad76eb54\", Version: v1.9.4")
    p = parse_parameters(text)
    assert p.prompt.startswith("girl with an artist's beret") and p.prompt.endswith("intricate")
    assert p.negative_prompt == "ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy"
    assert (p.steps, p.sampler, p.cfg, p.seed, p.width, p.height) == (20, "DPM++ 2M Karras", 7.0, 965400086, 512, 768)
    assert p.model_hash == "45dee52b" and p.lora_hashes == {"add_detail": "7c6bad76eb54"}
    raw = parse_parameter_text(text)
    assert raw["Size-1"] == "512" and raw["Version"] == "v1.9.4"


def test_short_last_line_belongs_to_the_prompt():
    raw = parse_parameter_text("a cat\nsitting: yes, on a mat")
    assert raw["Prompt"] == "a cat\nsitting: yes, on a mat" and "sitting" not in raw


@pytest.mark.parametrize("prompt", ["plain latin-1 prompt", "ユニコード prompt"])
def test_png_chunk_round_trip(tmp_path, prompt):
    text = format_parameters(GenerationParameters(prompt=prompt, seed=5))
    path = save_png(Image.new("RGB", (8, 8), (10, 20, 30)), tmp_path / "a.png", text)
    assert read_png_parameters(path) == text
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file
    with Image.open(path) as img:
        assert img.getpixel((0, 0)) == (10, 20, 30)
