"""``python -m helpers.generation``, and what a model argument may be: images with parameters; bad input exits 2
with a message and leaves no image behind; run folders, training states and half-written files."""

from __future__ import annotations

import os
import shutil
import time

import pytest
import torch

from helpers.generation.__main__ import main
from helpers.generation.parameters import parse_parameters, read_png_parameters


def _pngs(folder):
    return sorted(folder.rglob("*.png")) if folder.exists() else []


def test_sample_writes_images_with_parameters(tmp_path, tiny_sdxl_dir, capsys):
    out = tmp_path / "out"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle --s 2 --d 9 --w 96\n", encoding="utf-8")
    args = [str(tiny_sdxl_dir), "--out", str(out), "--steps", "3", "--width", "64", "--height", "64", "--seed", "4"]
    assert main(["sample", *args, "-p", "a green square --ss ddim", "--batch", "2", "--prompt-file", str(prompts)]) == 0
    files = _pngs(out)
    assert [f.name for f in files] == ["00001-4.png", "00002-5.png", "00003-9.png", "00004-10.png"]  # --batch 2 each
    first, last = (parse_parameters(read_png_parameters(f)) for f in (files[0], files[2]))
    assert (first.prompt, first.sampler, first.steps, first.width) == ("a green square", "DDIM", 3, 64)
    assert (last.prompt, last.steps, last.seed, last.width, last.height) == ("a red circle", 2, 9, 96, 64)
    assert main(["sample", *args, "-p", "again"]) == 0
    assert sorted(f.name for f in _pngs(out))[-1] == "00005-4.png"  # numbering continues, nothing overwritten
    capsys.readouterr()
    assert main(["info", str(files[0])]) == 0
    assert "Sampler: DDIM" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["-p", "a cat", "--sampler", "Eulr a"], "unknown sampler 'Eulr a'"),
    (["-p", "a cat --s lots"], "--prompt, line 1: --s: steps must be a whole number"),
    (["-p", "a cat", "--width", "100"], "width 100 is not a multiple of 32 for this model: use 96 or 128"),
    (["-p", "a cat", "--clip-skip", "3"], "SDXL always uses the penultimate CLIP layer"),
    (["-p", "a cat <lora:x:1>"], "LoRA tags in the prompt are not read here"),
])
def test_bad_input_exits_2_without_images(tmp_path, tiny_sdxl_dir, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["sample", str(tiny_sdxl_dir), "--out", str(out), "--steps", "2", *extra]) == 2
    assert message in capsys.readouterr().err
    assert _pngs(out) == []


def test_lora_of_another_architecture(tmp_path, tiny_sdxl_dir, tiny_sd15_dir, capsys):
    from tests.test_generation_lora import synthetic_lora

    lora = synthetic_lora(tiny_sd15_dir, tmp_path / "sd15-style.safetensors", arch_version="sd_v1")
    assert main(["sample", str(tiny_sdxl_dir), "--out", str(tmp_path / "o"), "-p", "x", "--lora",
                 f"{lora}:0.8"]) == 2
    assert "is a sd15 LoRA but tiny-sdxl is sdxl" in capsys.readouterr().err
    assert _pngs(tmp_path / "o") == []


def test_grid_command(tmp_path, tiny_sdxl_dir):
    out = tmp_path / "g"
    assert main(["grid", str(tiny_sdxl_dir), "--out", str(out), "--x", "seed=1-2", "--y", "steps=2,3",
                 "--prompt", "a cat", "--width", "64", "--height", "64"]) == 0
    assert (out / "grid.png").exists() and len(_pngs(out / "cells")) == 4
    assert main(["grid", str(tiny_sdxl_dir), "--out", str(out), "--x", "seed=1-2", "--prompt", "a cat"]) == 2


def test_checkpoint_still_being_written(tmp_path, tiny_sdxl_dir, capsys):
    from helpers.generation.sources import check_complete, find_model_source
    from helpers.models import CheckpointError, load_model, save_single_file

    bundle = load_model(tiny_sdxl_dir)
    whole = save_single_file(bundle.unet, bundle.vae, bundle.text_encoders, tmp_path / "m.safetensors", arch="sdxl",
                             precision="fp32")
    partial = tmp_path / "half.safetensors"
    partial.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert main(["sample", str(partial), "--out", str(tmp_path / "o"), "-p", "x"]) == 2
    assert "probably still being written" in capsys.readouterr().err
    temp = tmp_path / ".m.safetensors.abc123.tmp"
    shutil.copy(whole, temp)
    with pytest.raises(CheckpointError, match="temporary file of a save in progress"):
        find_model_source(temp)
    growing = tmp_path / "growing.safetensors"
    growing.write_bytes(b"x")
    os.utime(growing)

    def grow():
        time.sleep(0.2)
        growing.write_bytes(b"xx")

    import threading

    threading.Thread(target=grow).start()
    with pytest.raises(CheckpointError, match="still being written"):
        check_complete(growing, settle_s=0.6)
    assert _pngs(tmp_path) == []


def test_run_folder_and_training_state(tmp_path, tiny_sdxl_dir):
    """A run folder stands for its newest checkpoint or state; a state is its base plus its trained weights."""
    from helpers.generation.pipeline import ImageSettings, open_generator
    from helpers.generation.sources import find_model_source
    from helpers.models import CheckpointError, load_model
    from helpers.training.checkpoints import save_training_state

    run = tmp_path / "ws" / "runs" / "r1"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoint or training state yet"):
        find_model_source(run)
    models = tmp_path / "ws" / "models"
    shutil.copytree(tiny_sdxl_dir, models / "tiny")
    unet = load_model(tiny_sdxl_dir).unet
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05)
    save_training_state(run / "state", 7, weights={f"unet.{k}": v for k, v in unet.state_dict().items()},
                        optimizer_state={}, trainer={"step": 7, "config": {"model": {"base_model": "tiny"},
                                                                          "objective": {"zero_terminal_snr": True}}})
    found = find_model_source(run)
    assert found.state == run / "state" / "step-00000007" and found.label == "r1-step7"
    assert found.path == models / "tiny"  # the workspace model named in the state's config
    generator = open_generator(run, device="cpu", echo=lambda _m: None)
    try:
        torch.testing.assert_close(dict(generator.bundle.unet.state_dict()), dict(unet.state_dict()))
        (img,) = generator.generate(ImageSettings(prompt="x", steps=2, seed=1, width=64, height=64))
        assert "Model: r1-step7" in img.infotext and "Model hash" not in img.infotext
        assert "Noise Schedule: Zero Terminal SNR" in img.infotext  # the run trained with it, so it samples with it
    finally:
        generator.close()


def test_memory_problems_name_the_setting_to_lower(tmp_path, tiny_sdxl_dir):
    from helpers.generation.pipeline import GenerationError, ImageSettings, open_generator

    with pytest.raises(GenerationError, match="not enough memory on cpu: needs about .* lower batch_size / width"):
        open_generator(tiny_sdxl_dir, device="cpu", width=8192, height=8192, batch_size=64, echo=lambda _m: None)
    generator = open_generator(tiny_sdxl_dir, device="cpu", echo=lambda _m: None)

    def out_of_memory(**_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    generator.pipe = out_of_memory  # what a too-large batch does on a GPU
    try:
        with pytest.raises(GenerationError, match=r"out of GPU memory generating 4 image\(s\) at 64x64: lower "
                                                  r"batch_size \(now 4\) first.*Nothing was written"):
            generator.generate(ImageSettings(prompt="x", steps=2, width=64, height=64, batch_size=4))
    finally:
        generator.close()
