"""open_checkpoint / detect_architecture: same names and tensors whatever the layout, and clear errors for
truncated files, pickles, other architectures."""

from __future__ import annotations

import pytest
import torch

from helpers.models import CheckpointError, detect_architecture, open_checkpoint
from helpers.models.export import save_single_file
from helpers.models.loader import load_model


@pytest.fixture(scope="module")
def sdxl_file(tiny_sdxl_dir, tmp_path_factory):
    bundle = load_model(tiny_sdxl_dir)
    return save_single_file(bundle.unet, bundle.vae, bundle.text_encoders,
                            tmp_path_factory.mktemp("ck") / "sdxl.safetensors", arch="sdxl", precision="fp32")


@pytest.fixture(scope="module")
def sd15_v_file(tiny_sd15_v_dir, tmp_path_factory):
    bundle = load_model(tiny_sd15_v_dir)
    return save_single_file(bundle.unet, bundle.vae, bundle.text_encoders,
                            tmp_path_factory.mktemp("ck") / "sd15v.safetensors", arch="sd15", precision="fp32",
                            prediction="v_prediction")


@pytest.mark.parametrize("folder_fixture,file_fixture,arch,prediction",
                         [("tiny_sdxl_dir", "sdxl_file", "sdxl", "epsilon"),
                          ("tiny_sd15_v_dir", "sd15_v_file", "sd15", "v_prediction")])
def test_folder_and_single_file_read_the_same(folder_fixture, file_fixture, arch, prediction, request):
    folder = open_checkpoint(request.getfixturevalue(folder_fixture))
    single = open_checkpoint(request.getfixturevalue(file_fixture))
    assert (folder.layout, single.layout) == ("diffusers", "single_file")
    assert folder.arch == single.arch == arch
    assert folder.prediction == single.prediction == prediction
    expected = ["unet", "vae", "te1"] + (["te2"] if arch == "sdxl" else [])
    assert folder.components() == single.components() == expected
    for component in expected:
        assert sorted(folder.keys(component)) == sorted(single.keys(component))
        for name in folder.keys(component):
            assert single.shape(component, name) == folder.shape(component, name)
            assert torch.equal(single.get(component, name), folder.get(component, name)), (component, name)
    assert all(k.startswith("text_model.") for k in single.keys("te1"))
    assert single.unknown_keys == []
    assert single.metadata["modelspec.architecture"]


def test_keys_read_only_the_header(sdxl_file):
    ck = open_checkpoint(sdxl_file)
    assert len(ck.keys("unet")) == 718 and ck.shape("te2", "text_projection.weight") == (16, 48)
    assert ck._sources[0]._handle is None  # no tensor data opened to answer keys()/shape()
    assert ck.get("te2", "text_model.encoder.layers.0.self_attn.v_proj.weight").shape == (48, 48)


def test_unet_only_diffusers_file(tiny_sdxl_dir):
    ck = open_checkpoint(tiny_sdxl_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert (ck.arch, ck.components(), ck.layout) == ("sdxl", ["unet"], "single_file")
    with pytest.raises(KeyError, match="no 'vae'"):
        ck.keys("vae")


def test_truncated_and_garbage_files(sdxl_file, tmp_path):
    data = sdxl_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file: re-download it"):
        open_checkpoint(cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        open_checkpoint(junk)
    with pytest.raises(CheckpointError, match="no such file"):
        open_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="not a diffusers model and it holds 2 model files"):
        open_checkpoint(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no model_index.json, unet/ or model file"):
        open_checkpoint(empty)


def test_folder_holding_one_model_file(sdxl_file, tmp_path):
    """The download stage stores single files as models/<name>/<file> beside a model.json."""
    stored = tmp_path / "my-base"
    stored.mkdir()
    (stored / "model.json").write_text("{}")
    (stored / sdxl_file.name).write_bytes(sdxl_file.read_bytes())
    ck = open_checkpoint(stored)
    assert (ck.layout, ck.arch, ck.path) == ("single_file", "sdxl", stored / sdxl_file.name)


def test_pickle_refused_unless_allowed(sdxl_file, tmp_path):
    from safetensors.torch import load_file

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(sdxl_file)), "global_step": 1}, ckpt)
    with pytest.raises(CheckpointError, match="pickle.*arbitrary code.*safetensors.*allow_pickle=True"):
        open_checkpoint(ckpt)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="could not read this pickle checkpoint"):
        open_checkpoint(broken, allow_pickle=True)
    ck = open_checkpoint(ckpt, allow_pickle=True)
    reference = open_checkpoint(sdxl_file)
    assert ck.arch == "sdxl" and ck.components() == reference.components()
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(ck.get("unet", name), reference.get("unet", name))


def test_detect_architecture_on_key_lists(sdxl_file, sd15_v_file):
    from helpers.models.checkpoint import read_safetensors_header

    sdxl_keys = list(read_safetensors_header(sdxl_file)[0])
    sd15_keys = list(read_safetensors_header(sd15_v_file)[0])
    assert detect_architecture(sdxl_keys) == ("sdxl", "epsilon")
    assert detect_architecture(sd15_keys) == ("sd15", "v_prediction")  # the v_pred marker key
    assert detect_architecture(["add_embedding.linear_1.weight", "down_blocks.0.resnets.0.conv1.weight"])[0] == "sdxl"
    assert detect_architecture(["unet.down_blocks.3.resnets.0.conv1.weight"])[0] == "sd15"
    with pytest.raises(CheckpointError, match="LoRA"):
        detect_architecture(["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"])
    with pytest.raises(CheckpointError, match="LoRA"):  # diffusers/peft-named LoRA touching every level
        detect_architecture(["unet.down_blocks.3.resnets.0.conv1.lora_A.weight"])
    with pytest.raises(CheckpointError, match="2.x"):
        detect_architecture(["cond_stage_model.model.transformer.resblocks.0.ln_1.weight",
                             "model.diffusion_model.input_blocks.0.0.weight"])
    with pytest.raises(CheckpointError, match="refiner"):
        detect_architecture(["conditioner.embedders.0.model.ln_final.weight", "model.diffusion_model.out.2.weight"])
    with pytest.raises(CheckpointError, match=r"not an SDXL or SD 1.5 model: found 2 tensors \(bert.a, bert.b"):
        detect_architecture(["bert.a", "bert.b"])


def test_other_architecture_file_is_named(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="SD3/Flux"):
        open_checkpoint(path)


def test_sharded_and_variant_diffusers_folders(tiny_sd15_dir, tmp_path):
    """Hub folders come sharded (index.json + shards) and/or as variants (.fp16.); the plain set wins."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "sharded"
    shutil.copytree(tiny_sd15_dir, folder)
    unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(unet_file))
    names = sorted(state)
    halves = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[: len(names) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(folder / "unet" / shard))
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    # a half-precision variant beside it must not be picked
    save_file({k: v.half() for k, v in state.items()}, str(folder / "unet" / "diffusion_pytorch_model.fp16.safetensors"))
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "diffusion_pytorch_model.fp16.safetensors" for k in names}}))
    unet_file.unlink()
    ck = open_checkpoint(folder)
    assert sorted(ck.keys("unet")) == names
    assert all(torch.equal(ck.get("unet", k), state[k]) for k in names)

    variant_only = tmp_path / "variant"
    shutil.copytree(tiny_sd15_dir, variant_only)
    v = variant_only / "vae" / "diffusion_pytorch_model.safetensors"
    v.rename(v.with_name("diffusion_pytorch_model.fp16.safetensors"))
    assert open_checkpoint(variant_only).components() == ["unet", "vae", "te1"]
