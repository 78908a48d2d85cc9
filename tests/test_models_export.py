"""save_single_file / save_diffusers: what A1111-style loaders (diffusers ``from_single_file``) read back is
bit-identical; the key set of real-size models is the original one; writes are atomic."""

from __future__ import annotations

import errno
import json
import math
import shutil

import pytest
import torch

from helpers.models import export, keymap
from helpers.models.checkpoint import read_safetensors_header


def _pipeline(folder, arch):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if arch == "sdxl":
        return StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True)
    return StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)


def _text_encoders(pipe):
    return [pipe.text_encoder] + ([pipe.text_encoder_2] if getattr(pipe, "text_encoder_2", None) else [])


def _assert_same_weights(a, b, what):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb), what
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{what}: {different[:3]}"


@pytest.mark.parametrize("arch,fixture,prediction", [("sdxl", "tiny_sdxl_dir", "epsilon"),
                                                     ("sd15", "tiny_sd15_v_dir", "v_prediction")])
def test_single_file_loads_in_diffusers_bit_identical(arch, fixture, prediction, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    pipe = _pipeline(folder, arch)
    path = export.save_single_file(pipe.unet, pipe.vae, _text_encoders(pipe), tmp_path / "model.safetensors",
                                   arch=arch, precision="fp32", prediction=prediction, metadata={"note": "test"})
    cls = type(pipe)
    kwargs = {} if arch == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    loaded = cls.from_single_file(str(path), config=str(folder), local_files_only=True, **kwargs)
    for name in ("unet", "vae", "text_encoder") + (("text_encoder_2",) if arch == "sdxl" else ()):
        _assert_same_weights(getattr(pipe, name), getattr(loaded, name), name)

    entries, meta = read_safetensors_header(path)
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.architecture"] == export.MODELSPEC_ARCH[arch]
    assert meta["modelspec.prediction_type"] == ("v" if prediction == "v_prediction" else "epsilon")
    assert meta["modelspec.resolution"] == ("1024x1024" if arch == "sdxl" else "512x512")
    assert meta["note"] == "test" and "unet" in json.loads(meta["tunebook.configs"])
    assert ("v_pred" in entries) == (prediction == "v_prediction")  # ComfyUI's v-prediction marker
    assert all(e["dtype"] == "F32" for e in entries.values())


def test_precision_fp16_and_layout_details(tiny_sdxl_dir, tmp_path):
    pipe = _pipeline(tiny_sdxl_dir, "sdxl")
    path = export.save_single_file(pipe.unet, pipe.vae, _text_encoders(pipe), tmp_path / "m.safetensors",
                                   arch="sdxl", precision="fp16")
    entries, _ = read_safetensors_header(path)
    assert {e["dtype"] for e in entries.values()} == {"F16"}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        te2 = pipe.text_encoder_2.state_dict()
        qkv = f.get_tensor("conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight")
        expected = torch.cat([te2[f"text_model.encoder.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"])
        assert torch.equal(qkv, expected.half())
        proj = f.get_tensor("conditioner.embedders.1.model.text_projection")
        assert torch.equal(proj, te2["text_projection.weight"].T.half())  # SGM computes x @ P
        attn = f.get_tensor("first_stage_model.decoder.mid.attn_1.q.weight")
        assert attn.shape[-2:] == (1, 1)  # LDM VAE attention is a 1x1 conv
        assert math.isclose(f.get_tensor("conditioner.embedders.1.model.logit_scale").item(), math.log(100), rel_tol=1e-3)


@pytest.mark.parametrize("arch,counts", [("sdxl", {"unet": 1680, "vae": 248, "te1": 196, "te2": 390}),
                                         ("sd15", {"unet": 686, "vae": 248, "te1": 196})])
def test_real_size_key_sets_on_meta(arch, counts):
    """Real SDXL-base / SD 1.5 configs (shipped) give the original key counts, and diffusers' converters map
    every written key back to the model's own names and shapes. Meta tensors: no memory, about a second."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from helpers.models.loader import CONFIG_ROOT

    def cfg(sub):
        return json.loads((CONFIG_ROOT / arch / sub / "config.json").read_text())

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg("unet"))
        vae = AutoencoderKL.from_config(cfg("vae"))
        tes = [CLIPTextModel(CLIPTextConfig.from_dict(cfg("text_encoder")))]
        if arch == "sdxl":
            tes.append(CLIPTextModelWithProjection(CLIPTextConfig.from_dict(cfg("text_encoder_2"))))
    params = {"unet": sum(p.numel() for p in unet.parameters()), "vae": sum(p.numel() for p in vae.parameters())}
    assert params["unet"] == (2_567_463_684 if arch == "sdxl" else 859_520_964)
    assert params["vae"] == 83_653_863
    plan = export.plan_original_layout(unet.state_dict(), vae.state_dict(), [t.state_dict() for t in tes], arch,
                                       torch.float16)
    prefixes = keymap.component_prefixes(arch)
    for component, n in counts.items():
        assert sum(k.startswith(prefixes[component]) for k in plan) == n, component
    original = {k: torch.empty(shape, device="meta") for k, (shape, _, _) in plan.items()}
    vae_back = convert_ldm_vae_checkpoint(original, vae.config)
    vae_state = vae.state_dict()
    assert set(vae_back) == set(vae_state)
    if arch == "sdxl":
        te2_back = convert_open_clip_checkpoint(tes[1], original, prefix=keymap.TE2_PREFIX)
        te2_state = tes[1].state_dict()
        assert set(te2_back) == set(te2_state)
        assert all(te2_back[k].shape == te2_state[k].shape for k in te2_state)


def test_atomic_write_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    export.write_safetensors(target, {"a": ((2,), torch.float32, lambda: torch.ones(2))})
    before = target.read_bytes()

    def boom():
        raise RuntimeError("simulated crash mid-write")

    with pytest.raises(RuntimeError, match="simulated"):
        export.write_safetensors(target, {"a": ((2,), torch.float32, lambda: torch.zeros(2)),
                                          "b": ((2,), torch.float32, boom)})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp left behind

    def disk_full():
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(export.DiskSpaceError, match="disk filled while writing .* needs .* previous file is untouched"):
        export.write_safetensors(target, {"a": ((2,), torch.float32, disk_full)})
    assert target.read_bytes() == before and len(list(tmp_path.iterdir())) == 1

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(export.DiskSpaceError, match=r"needs .* GiB, .* free"):
        export.write_safetensors(target, {"a": ((1000,), torch.float32, lambda: torch.zeros(1000))})
    assert target.read_bytes() == before


def test_bad_arguments_are_named(tiny_sd15_dir, tmp_path):
    pipe = _pipeline(tiny_sd15_dir, "sd15")
    args = (pipe.unet, pipe.vae, [pipe.text_encoder])
    with pytest.raises(ValueError, match="precision"):
        export.save_single_file(*args, tmp_path / "m.safetensors", arch="sd15", precision="fp8")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        export.save_single_file(*args, tmp_path / "m.ckpt", arch="sd15")
    with pytest.raises(ValueError, match="2 text encoder"):
        export.save_single_file(*args, tmp_path / "m.safetensors", arch="sdxl")
    unet = dict(pipe.unet.state_dict())
    unet["mid_block.attentions.0.proj_in.base_layer.weight"] = unet.pop("mid_block.attentions.0.proj_in.weight")
    with pytest.raises(ValueError, match="unet still has LoRA/adapter layers .*merge them"):
        export.save_single_file(unet, pipe.vae, [pipe.text_encoder], tmp_path / "m.safetensors", arch="sd15")
    assert not (tmp_path / "m.safetensors").exists()


def test_save_diffusers_round_trip(tiny_sd15_v_dir, tmp_path):
    pipe = _pipeline(tiny_sd15_v_dir, "sd15")
    out = export.save_diffusers(pipe.unet, pipe.vae, [pipe.text_encoder], [pipe.tokenizer], tmp_path / "export",
                                arch="sd15", prediction="v_prediction", precision="fp32")
    loaded = _pipeline(out, "sd15")
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(pipe, name), getattr(loaded, name), name)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.tokenizer("a cat").input_ids == pipe.tokenizer("a cat").input_ids
    with pytest.raises(FileExistsError):
        export.save_diffusers(pipe.unet, pipe.vae, [pipe.text_encoder], [pipe.tokenizer], out, arch="sd15")
    export.save_diffusers(pipe.unet, pipe.vae, [pipe.text_encoder], [pipe.tokenizer], out, arch="sd15",
                          overwrite=True)
    assert (tmp_path / "export.previous" / "model_index.json").exists()
