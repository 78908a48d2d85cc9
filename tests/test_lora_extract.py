"""LoRA extraction: names as sd-scripts writes them, diffusers loads them exactly, per-layer decisions, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.lora.demo import make_tuned_copy
from helpers.lora.extract import ExtractError, extract_lora
from helpers.lora.formats import read_lora
from helpers.lora.report import report_path


@pytest.fixture(scope="module")
def sdxl_pair(tiny_sdxl_dir, tmp_path_factory):
    tuned = make_tuned_copy(tiny_sdxl_dir, tmp_path_factory.mktemp("pair") / "tuned-sdxl", ("unet", "te1"))
    return tiny_sdxl_dir, tuned


@pytest.fixture(scope="module")
def sd15_pair(tiny_sd15_dir, tmp_path_factory):
    tuned = make_tuned_copy(tiny_sd15_dir, tmp_path_factory.mktemp("pair") / "tuned-sd15", ("unet", "te1"))
    return tiny_sd15_dir, tuned


@pytest.fixture(scope="module")
def sdxl_lora(sdxl_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "sdxl.safetensors"
    return out, extract_lora(*sdxl_pair, out, rank=8, conv_rank=4, progress=False)


# hand-written from sd-scripts' naming (original-layout U-Net paths for SDXL) for the tiny topology
SDXL_EXPECTED = [
    "lora_unet_input_blocks_4_1_proj_in",
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
    "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k",
    "lora_unet_input_blocks_8_1_transformer_blocks_1_ff_net_0_proj",
    "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_out_0",
    "lora_unet_middle_block_1_proj_out",
    "lora_unet_output_blocks_0_1_transformer_blocks_1_ff_net_2",
    "lora_unet_output_blocks_5_1_transformer_blocks_0_attn2_to_v",
    "lora_unet_input_blocks_1_0_in_layers_2",  # resnet conv1 (3x3, conv rank)
    "lora_unet_input_blocks_4_0_skip_connection",  # 1x1 shortcut
    "lora_unet_input_blocks_3_0_op",  # downsampler
    "lora_unet_output_blocks_2_2_conv",  # upsampler of a level with attention
    "lora_unet_output_blocks_8_0_emb_layers_1",  # time_emb_proj
    "lora_unet_middle_block_2_out_layers_3",
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
    "lora_te1_text_model_encoder_layers_1_mlp_fc2",
]


def test_sdxl_names_and_metadata_match_sd_scripts(sdxl_lora):
    out, result = sdxl_lora
    lora = read_lora(out)
    names = set(lora.modules)
    for name in SDXL_EXPECTED:
        assert name in names, name
    assert not any(n.startswith("lora_te2_") for n in names)  # TE2 was not changed
    assert all(n.startswith(("lora_unet_input_blocks", "lora_unet_middle_block", "lora_unet_output_blocks",
                             "lora_te1_text_model_encoder_layers_")) for n in names)
    # 2 transformer blocks x 10 linears + proj_in/out per attention: 5 attentions of 2 blocks (down 2, up 3)
    # + ... counted from the tiny topology: every module has down/up/alpha
    m = lora.modules["lora_unet_input_blocks_1_0_in_layers_2"]
    assert tuple(m.tensors["lora_down.weight"].shape) == (4, 32, 3, 3)
    assert tuple(m.tensors["lora_up.weight"].shape) == (32, 4, 1, 1)
    assert float(m.tensors["alpha"]) == 4.0
    q = lora.modules["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"]
    assert q.tensors["lora_down.weight"].dtype == torch.float16 and q.tensors["lora_down.weight"].shape[0] == 8
    meta = lora.metadata
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "8.0" and meta["ss_v2"] == "False"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "4.0"}
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert len(meta["sshs_model_hash"]) == 64 and len(meta["sshs_legacy_hash"]) == 8


def test_report_says_text_encoder_2_unchanged(sdxl_lora):
    out, result = sdxl_lora
    saved = json.loads(report_path(out).read_text())
    assert saved["overall"]["layers_extracted"] == result["overall"]["layers_extracted"]
    te2 = saved["components"]["te2"]
    assert te2["extracted"] == 0 and "NOT in the LoRA" in te2["status"]
    assert saved["components"]["te1"]["extracted"] == 12
    assert all("unchanged" in s["reason"] for s in saved["skipped"])
    # rank-4 signal + 10 % noise at rank 8: nearly everything kept, the table is monotone
    assert saved["overall"]["kept_energy"] > 0.98
    kept = [row["kept_energy"] for row in saved["rank_table"]]
    assert kept == sorted(kept) and kept[-1] == pytest.approx(1.0)


def _module(model, path):
    try:
        return model.get_submodule(path)
    except AttributeError:  # transformers >= 5.6 CLIPTextModel has no text_model level
        return model.get_submodule(path.removeprefix("text_model."))


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_diffusers_loads_and_fuses_exactly(arch, sdxl_pair, sd15_pair, tmp_path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from helpers.lora.naming import list_targets
    from helpers.models import open_checkpoint

    base, tuned = sdxl_pair if arch == "sdxl" else sd15_pair
    out = tmp_path / f"{arch}.safetensors"
    extract_lora(base, tuned, out, rank=8, conv_rank=4, precision="fp32", progress=False)
    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(str(base), local_files_only=True)
    parts = {"unet": pipe.unet, "te1": pipe.text_encoder, "te2": getattr(pipe, "text_encoder_2", None)}
    targets = list_targets(open_checkpoint(base), with_conv=True)
    before = {t.lora_name: _module(parts[t.component], t.module).weight.detach().clone() for t in targets}
    pipe.load_lora_weights(str(out))
    pipe.fuse_lora()
    lora = read_lora(out)
    checked = 0
    for t in targets:
        w = _module(parts[t.component], t.module).weight.detach()
        m = lora.modules.get(t.lora_name)
        if m is None:
            torch.testing.assert_close(w, before[t.lora_name])  # untouched layers stay untouched
            continue
        up, down = m.tensors["lora_up.weight"].flatten(1), m.tensors["lora_down.weight"].flatten(1)
        expected = before[t.lora_name] + (m.alpha / down.shape[0] * (up @ down)).reshape(w.shape)
        torch.testing.assert_close(w, expected, atol=2e-6, rtol=1e-5)
        checked += 1
    assert checked == len(lora.modules)


def test_full_rank_extraction_recovers_the_delta(sdxl_pair, tmp_path):
    from helpers.models import open_checkpoint

    base, tuned = sdxl_pair
    out = tmp_path / "full.safetensors"
    result = extract_lora(base, tuned, out, rank=4096, conv_rank=4096, precision="fp32", progress=False)
    assert result["overall"]["min_layer_kept"] > 1 - 1e-9
    lora = read_lora(out)
    b, t = open_checkpoint(base), open_checkpoint(tuned)
    name = "lora_unet_output_blocks_3_1_transformer_blocks_0_ff_net_0_proj"
    key = "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"
    delta = t.get("unet", key) - b.get("unet", key)
    torch.testing.assert_close(lora.modules[name].delta(delta.shape), delta, atol=1e-5, rtol=1e-4)


def test_unet_only_tuned_file(sdxl_pair, tmp_path):
    """A tuned file holding only the U-Net: the text encoders are reported as absent, not silently dropped."""
    from safetensors.torch import save_file

    from helpers.models import open_checkpoint

    base, tuned = sdxl_pair
    ck = open_checkpoint(tuned)
    unet_file = tmp_path / "unet.safetensors"
    save_file({k: ck.get("unet", k) for k in ck.keys("unet")}, str(unet_file))
    out = tmp_path / "u.safetensors"
    res = extract_lora(base, unet_file, out, rank=8, progress=False)
    assert res["components"]["te1"]["status"].endswith("not in the tuned model, so not in the LoRA")
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in read_lora(out).modules


def test_wrong_architecture_pair_is_refused(sdxl_pair, tiny_sd15_dir, tmp_path):
    with pytest.raises(ExtractError, match="different architectures"):
        extract_lora(sdxl_pair[0], tiny_sd15_dir, tmp_path / "x.safetensors", progress=False)
    assert not (tmp_path / "x.safetensors").exists()


def test_identical_models_write_nothing(tiny_sdxl_dir, tmp_path):
    with pytest.raises(ExtractError, match="no layer differs"):
        extract_lora(tiny_sdxl_dir, tiny_sdxl_dir, tmp_path / "x.safetensors", progress=False)
    assert not (tmp_path / "x.safetensors").exists()


def test_truncated_and_pickle_models_are_refused(sdxl_pair, tmp_path):
    from helpers.models import CheckpointError

    src = next((sdxl_pair[1] / "unet").glob("*.safetensors"))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        extract_lora(sdxl_pair[0], broken, tmp_path / "x.safetensors", progress=False)
    pickle = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, pickle)
    with pytest.raises(CheckpointError, match="pickle"):
        extract_lora(sdxl_pair[0], pickle, tmp_path / "x.safetensors", progress=False)


def test_te_min_diff_drops_a_slightly_changed_text_encoder(tiny_sdxl_dir, tmp_path):
    tuned = make_tuned_copy(tiny_sdxl_dir, tmp_path / "t", ("unet", "te2"), scale=1e-3)
    res = extract_lora(tiny_sdxl_dir, tuned, tmp_path / "a.safetensors", rank=4, te_min_diff=0.5, progress=False)
    assert "lower --te-min-diff" in res["components"]["te2"]["status"]
    res = extract_lora(tiny_sdxl_dir, tuned, tmp_path / "b.safetensors", rank=4, progress=False)
    assert res["components"]["te2"]["extracted"] == 18


def test_clamp_quantile_costs_fidelity(sdxl_pair, tmp_path):
    base, tuned = sdxl_pair
    plain = extract_lora(base, tuned, tmp_path / "a.safetensors", rank=8, progress=False)
    clamped = extract_lora(base, tuned, tmp_path / "b.safetensors", rank=8, clamp_quantile=0.99, progress=False)
    assert clamped["overall"]["kept_energy"] < plain["overall"]["kept_energy"]


def test_precision_only_differences_are_not_extracted(tiny_sdxl_dir, tmp_path):
    """A tuned model saved in bf16 differs from an fp32 base everywhere by rounding: that is not a change."""

    from safetensors.torch import load_file, save_file

    tuned = make_tuned_copy(tiny_sdxl_dir, tmp_path / "t", ("unet",))
    for f in (tuned / "text_encoder").glob("*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(f)).items()}, str(f))
    res = extract_lora(tiny_sdxl_dir, tuned, tmp_path / "a.safetensors", rank=4, progress=False)
    te1 = res["components"]["te1"]
    assert te1["extracted"] == 0 and te1["max_abs_change"] > 1e-6
    assert all("rounding" in m["skipped"] for m in res["modules"] if m["component"] == "te1")
    assert "only by float rounding" in te1["status"]
    assert res["components"]["unet"]["extracted"] == res["components"]["unet"]["layers"]


def test_existing_output_is_kept_as_a_backup(sdxl_pair, tmp_path):
    out = tmp_path / "same.safetensors"
    extract_lora(*sdxl_pair, out, rank=2, progress=False)
    first = out.read_bytes()
    second = extract_lora(*sdxl_pair, out, rank=4, progress=False)
    backups = sorted(p.name for p in tmp_path.glob("same.bak-*"))
    assert len(backups) == 2 and any(b.endswith(".fidelity.json") for b in backups)
    assert (tmp_path / [b for b in backups if b.endswith(".safetensors")][0]).read_bytes() == first
    assert any("previous files kept" in m for m in second["messages"])


SD15_EXPECTED = [
    "lora_unet_down_blocks_0_attentions_0_proj_in",  # 1x1 conv in SD 1.5 (stored 4-D)
    "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q",
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k",
    "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_2",
    "lora_unet_up_blocks_3_attentions_0_proj_out",
    "lora_unet_down_blocks_0_resnets_0_conv1",
    "lora_unet_down_blocks_1_resnets_0_time_emb_proj",
    "lora_unet_up_blocks_0_resnets_0_conv_shortcut",
    "lora_unet_down_blocks_2_downsamplers_0_conv",
    "lora_unet_up_blocks_0_upsamplers_0_conv",
    "lora_te_text_model_encoder_layers_0_self_attn_k_proj",
    "lora_te_text_model_encoder_layers_1_mlp_fc1",
]


def test_sd15_names_and_metadata_match_sd_scripts(sd15_pair, tmp_path):
    out = tmp_path / "sd15.safetensors"
    extract_lora(*sd15_pair, out, rank=8, conv_rank=4, progress=False)
    lora = read_lora(out)
    for name in SD15_EXPECTED:
        assert name in lora.modules, name
    assert all(n.startswith(("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_",
                             "lora_te_text_model_encoder_layers_")) for n in lora.modules)
    proj_in = lora.modules["lora_unet_down_blocks_0_attentions_0_proj_in"]
    assert tuple(proj_in.tensors["lora_down.weight"].shape) == (8, 32, 1, 1)
    assert lora.metadata["ss_base_model_version"] == "sd_v1"
    assert lora.metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
