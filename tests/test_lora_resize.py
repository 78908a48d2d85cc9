"""Resizing: exact truncation, kept scale, dynamic rules, the layers sd-scripts fails on, LyCORIS input, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.lora.demo import make_tuned_copy
from helpers.lora.extract import extract_lora
from helpers.lora.formats import read_lora, write_lora
from helpers.lora.report import report_path
from helpers.lora.resize import resize_lora


@pytest.fixture(scope="module")
def extracted(tiny_sdxl_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("resize")
    tuned = make_tuned_copy(tiny_sdxl_dir, folder / "tuned", ("unet", "te1"), rank=12)
    out = folder / "src.safetensors"
    extract_lora(tiny_sdxl_dir, tuned, out, rank=16, conv_rank=8, precision="fp32", progress=False)
    return out


def _dense(module) -> torch.Tensor:
    up, down = module.tensors["lora_up.weight"].flatten(1).double(), module.tensors["lora_down.weight"].flatten(1).double()
    return module.alpha / down.shape[0] * (up @ down)


def test_fixed_resize_equals_truncated_svd_and_keeps_scale(extracted, tmp_path):
    out = tmp_path / "r4.safetensors"
    result = resize_lora(extracted, out, rank=4, conv_rank=2, progress=False)
    src, dst = read_lora(extracted), read_lora(out)
    assert set(src.modules) == set(dst.modules)
    for name in ["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "lora_te1_text_model_encoder_layers_0_mlp_fc1"]:
        a, b = src.modules[name], dst.modules[name]
        assert b.rank == 4 and b.alpha / b.rank == pytest.approx(a.alpha / a.rank)  # effective scale kept
        u, s, vh = torch.linalg.svd(_dense(a))
        best = (u[:, :4] * s[:4]) @ vh[:4]
        torch.testing.assert_close(_dense(b), best, atol=1e-5, rtol=1e-4)
    conv = dst.modules["lora_unet_input_blocks_1_0_in_layers_2"]
    assert tuple(conv.tensors["lora_down.weight"].shape) == (2, 32, 3, 3)
    assert tuple(conv.tensors["lora_up.weight"].shape) == (32, 2, 1, 1)
    meta = dst.metadata
    assert meta["ss_network_dim"] == "4" and meta["ss_training_comment"].startswith("dimension is resized from")
    assert meta["modelspec.architecture"] == src.metadata["modelspec.architecture"]  # other metadata copied
    saved = json.loads(report_path(out).read_text())
    assert 0.5 < saved["overall"]["kept_energy"] < 1 and result["overall"] == saved["overall"]
    assert set(saved["new_ranks"]) == {"2", "4"}  # linear layers at 4, 3x3 convs at 2


def test_fewer_singular_values_than_target_and_zero_layers(tmp_path):
    """sd-scripts raises IndexError on the first and writes NaN statistics for the second."""
    tensors = {
        "lora_unet_a.lora_down.weight": torch.randn(2, 40), "lora_unet_a.lora_up.weight": torch.randn(30, 2),
        "lora_unet_a.alpha": torch.tensor(1.0),
        "lora_unet_z.lora_down.weight": torch.zeros(8, 40), "lora_unet_z.lora_up.weight": torch.zeros(30, 8),
        "lora_unet_z.alpha": torch.tensor(8.0),
    }
    src = write_lora(tmp_path / "edge.safetensors", tensors, {})
    result = resize_lora(src, tmp_path / "out.safetensors", rank=16, progress=False)
    out = read_lora(tmp_path / "out.safetensors")
    assert out.modules["lora_unet_a"].rank == 2 and "lora_unet_z" not in out.modules
    assert result["skipped"] == [{"name": "lora_unet_z", "reason": "all-zero layer: dropped"}]
    torch.testing.assert_close(_dense(out.modules["lora_unet_a"]).float(), _dense(read_lora(src).modules["lora_unet_a"]).float(),
                               atol=1e-4, rtol=1e-4)


def test_dynamic_sv_fro_picks_the_smallest_rank_meeting_the_rule(extracted, tmp_path):
    result = resize_lora(extracted, tmp_path / "d.safetensors", rank=16, dynamic="sv_fro:0.9", progress=False)
    src, dst = read_lora(extracted), read_lora(tmp_path / "d.safetensors")
    assert dst.metadata["ss_network_dim"] == "Dynamic"
    for name, b in list(dst.modules.items())[:20]:
        s = torch.linalg.svdvals(_dense(src.modules[name]))
        frac = (torch.cumsum(s ** 2, 0) / (s ** 2).sum()).sqrt()
        k = b.rank
        assert frac[k - 1] >= 0.9 - 1e-9 and (k == 1 or frac[k - 2] < 0.9)
    assert all(r["fro_retained"] >= 0.9 - 1e-9 for r in result["modules"] if "kept" in r)


def test_loha_input_becomes_lora(tmp_path):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    tensors = {"lora_unet_x.hada_w1_a": r(24, 4), "lora_unet_x.hada_w1_b": r(4, 36),
               "lora_unet_x.hada_w2_a": r(24, 4), "lora_unet_x.hada_w2_b": r(4, 36), "lora_unet_x.alpha": torch.tensor(4.0)}
    src = write_lora(tmp_path / "loha.safetensors", tensors, {"ss_network_module": "lycoris.kohya"})
    resize_lora(src, tmp_path / "o.safetensors", rank=24, progress=False)  # full rank: exact
    out = read_lora(tmp_path / "o.safetensors")
    assert out.modules["lora_unet_x"].algo == "lora" and out.metadata["ss_network_module"] == "networks.lora"
    torch.testing.assert_close(out.modules["lora_unet_x"].delta(), read_lora(src).modules["lora_unet_x"].delta(),
                               atol=1e-4, rtol=1e-4)


def test_cli_resize_and_inspect(extracted, tmp_path, capsys):
    from helpers.lora.__main__ import main

    out = tmp_path / "cli.safetensors"
    assert main(["resize", "--in", str(extracted), "--rank", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "sdxl" and info["algorithms"] == {"lora": info["modules"]}
    assert set(info["ranks"]) <= {"4", "8"}
    assert main(["resize", "--in", str(tmp_path / "missing.safetensors"), "--rank", "4"]) != 0
    assert "no such LoRA file" in capsys.readouterr().err
