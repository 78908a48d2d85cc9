"""LoRA / LyCORIS files applied for generation: strength 0 is the base exactly, fused equals the LoRA stage's merge,
unfused equals fused, removal restores the weights bit for bit, wrong files are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from helpers.generation.loras import LoraSpec
from helpers.generation.pipeline import ImageGenerator, ImageSettings
from helpers.lora.formats import LoraFileError

SETTINGS = ImageSettings(prompt="a blue circle", steps=4, seed=11, width=64, height=64)


def synthetic_lora(base, out, algos=("lora", "tucker", "loha", "lokr", "full"), rank=4, scale=0.05, seed=0,
                   arch_version="sdxl_base_v1-0", extra_suffix: str | None = None):
    """A kohya/LyCORIS-named file touching every LoRA target of ``base``, algorithms taken in turn per layer."""
    from helpers.lora import naming
    from helpers.models import open_checkpoint

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * scale

    tensors = {}
    with open_checkpoint(base) as ck:
        targets = naming.list_targets(ck, with_conv=True)
    for i, t in enumerate(targets):
        o, flat = t.matrix_shape
        name, conv = t.lora_name, len(t.shape) == 4
        algo = algos[i % len(algos)]
        if algo == "tucker" and not t.is_conv3x3:
            algo = "lora"
        if algo == "lokr" and (conv or o % 2 or flat % 2):
            algo = "loha"
        if algo == "lora":
            tail = tuple(t.shape[2:]) if conv else ()
            tensors[f"{name}.lora_down.weight"] = rnd(rank, t.shape[1], *tail)
            tensors[f"{name}.lora_up.weight"] = rnd(o, rank, *((1, 1) if conv else ()))
        elif algo == "tucker":
            tensors[f"{name}.lora_down.weight"] = rnd(rank, t.shape[1], 1, 1)
            tensors[f"{name}.lora_mid.weight"] = rnd(rank, rank, *t.shape[2:])
            tensors[f"{name}.lora_up.weight"] = rnd(o, rank, 1, 1)
        elif algo == "loha":
            for k in ("1", "2"):
                tensors[f"{name}.hada_w{k}_a"], tensors[f"{name}.hada_w{k}_b"] = rnd(o, rank), rnd(rank, flat)
            tensors[f"{name}.hada_w1_a"] *= 20  # a Hadamard product of two small factors is tiny otherwise
        elif algo == "lokr":
            tensors[f"{name}.lokr_w1"] = torch.randn(2, 2, generator=g)
            tensors[f"{name}.lokr_w2_a"], tensors[f"{name}.lokr_w2_b"] = rnd(o // 2, rank), rnd(rank, flat // 2)
        else:
            tensors[f"{name}.diff"] = rnd(*t.shape)
        if algo != "full":
            tensors[f"{name}.alpha"] = torch.tensor(float(rank) / 2)
        if extra_suffix:
            tensors[f"{name}.{extra_suffix}"] = torch.ones(o)
    save_file(tensors, str(out), metadata={"ss_base_model_version": arch_version})
    return out


@pytest.fixture(scope="module")
def lora_files(tiny_sdxl_dir, tmp_path_factory):
    """A LoRA extracted from a perturbed copy of the base (what users have), and a mixed-algorithm LyCORIS file."""
    from helpers.lora.demo import make_tuned_copy
    from helpers.lora.extract import extract_lora

    root = tmp_path_factory.mktemp("loras")
    tuned = make_tuned_copy(tiny_sdxl_dir, root / "tuned", components=("unet", "te1", "te2"), scale=0.5)
    extract_lora(tiny_sdxl_dir, tuned, root / "extracted.safetensors", rank=8, conv_rank=4, progress=False)
    return {"extracted": root / "extracted.safetensors",
            "mixed": synthetic_lora(tiny_sdxl_dir, root / "mixed.safetensors")}


@pytest.fixture(scope="module")
def generator(tiny_sdxl_dir):
    from helpers.models import load_model

    gen = ImageGenerator(load_model(tiny_sdxl_dir), model_name="tiny-sdxl")
    yield gen
    gen.close()


def _pixels(gen) -> np.ndarray:
    (img,) = gen.generate(SETTINGS)
    return np.asarray(img.image).astype(np.int16)


def _weights(gen) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v.clone() for k, v in gen.bundle.unet.state_dict().items()}
    for i, te in enumerate(gen.bundle.text_encoders):
        out.update({f"te{i + 1}.{k}": v.clone() for k, v in te.state_dict().items()})
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_strength_zero_is_the_base_and_one_is_not(generator, lora_files, fused):
    base, weights = _pixels(generator), _weights(generator)
    generator.apply_loras([LoraSpec(lora_files["extracted"], 0.0)], fused=fused)
    try:
        assert np.array_equal(_pixels(generator), base)
        generator.loras.set_strengths(1.0)
        one = _pixels(generator)
        assert np.abs(one - base).mean() > 2  # the LoRA changes the picture
        (tagged,) = generator.generate(SETTINGS)
        assert "<lora:extracted:1>" in tagged.infotext and "Lora hashes: \"extracted: " in tagged.infotext
    finally:
        generator.remove_loras()
    assert np.array_equal(_pixels(generator), base)
    after = _weights(generator)
    assert all(torch.equal(after[k], v) for k, v in weights.items())  # removal gives back every weight exactly


def test_fused_weights_equal_the_lora_stage_merge(generator, lora_files, tiny_sdxl_dir, tmp_path):
    from helpers.lora.merge import merge_lora
    from helpers.models import load_model

    merged = merge_lora(tiny_sdxl_dir, [lora_files["mixed"], lora_files["extracted"]], tmp_path / "merged.safetensors",
                        strength=[0.7, -0.4], precision="fp32", progress=False)
    assert set(merged["loras"][0]["algorithms"]) == {"lora", "loha", "lokr", "full"}
    reference = load_model(tmp_path / "merged.safetensors")
    generator.apply_loras([LoraSpec(lora_files["mixed"], 0.7), LoraSpec(lora_files["extracted"], -0.4)])
    try:
        ours = _weights(generator)
        theirs = {f"unet.{k}": v for k, v in reference.unet.state_dict().items()}
        for i, te in enumerate(reference.text_encoders):
            theirs.update({f"te{i + 1}.{k}": v for k, v in te.state_dict().items()})
        changed = [k for k in theirs if not torch.equal(theirs[k], _weights_of_base(tiny_sdxl_dir)[k])]
        assert len(changed) > 100
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], atol=1e-5, rtol=1e-5, msg=key)
    finally:
        generator.remove_loras()


_BASE: dict = {}


def _weights_of_base(folder) -> dict[str, torch.Tensor]:
    from helpers.models import load_model

    if folder not in _BASE:
        b = load_model(folder)
        _BASE[folder] = {f"unet.{k}": v for k, v in b.unet.state_dict().items()}
        for i, te in enumerate(b.text_encoders):
            _BASE[folder].update({f"te{i + 1}.{k}": v for k, v in te.state_dict().items()})
    return _BASE[folder]


def _model_outputs(gen) -> list[torch.Tensor]:
    """Text-encoder and U-Net outputs for fixed inputs (more sensitive than finished images)."""
    from helpers.models import sdxl

    b = gen.bundle
    with torch.no_grad():
        text = sdxl.encode_tokens(b.text_encoders, sdxl.tokenize_captions(b.tokenizers, ["a blue circle"]))
        size = torch.tensor([[64, 64]])
        cond = sdxl.unet_conditioning(text, size, torch.tensor([[0, 0]]), size, torch.float32)
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        noise = b.unet(latents, torch.tensor([500]), **cond).sample
    return [text["hidden"], text["pooled"], noise]


def test_unfused_equals_fused_for_every_algorithm(generator, lora_files):
    specs = [LoraSpec(lora_files["mixed"], 0.8)]
    base = _model_outputs(generator)
    generator.apply_loras(specs, fused=True)
    fused = _model_outputs(generator)
    generator.apply_loras(specs, fused=False)
    try:
        unfused = _model_outputs(generator)
    finally:
        generator.remove_loras()
    for b, f, u in zip(base, fused, unfused, strict=True):
        assert (f - b).abs().mean() > 1e-3  # the file changes every output
        torch.testing.assert_close(u, f, rtol=1e-4, atol=1e-5)  # same maths, different order of operations


def test_wrong_files_are_refused(generator, tiny_sd15_dir, tiny_sdxl_dir, tmp_path):
    sd15 = synthetic_lora(tiny_sd15_dir, tmp_path / "sd15.safetensors", arch_version="sd_v1")
    with pytest.raises(LoraFileError, match="is a sd15 LoRA but tiny-sdxl is sdxl"):
        generator.apply_loras([LoraSpec(sd15)])
    dora = synthetic_lora(tiny_sdxl_dir, tmp_path / "dora.safetensors", algos=("lora",), extra_suffix="dora_scale")
    with pytest.raises(LoraFileError, match="DoRA"):
        generator.apply_loras([LoraSpec(dora)])
    assert generator.loras is None


def test_lora_argument_parsing():
    from pathlib import Path

    assert LoraSpec.parse("loras/style.safetensors:0.5") == LoraSpec(Path("loras/style.safetensors"), 0.5)
    assert LoraSpec.parse("loras/style.safetensors") == LoraSpec(Path("loras/style.safetensors"), 1.0)
    assert LoraSpec.parse("C:/loras/x.safetensors").path == Path("C:/loras/x.safetensors")
