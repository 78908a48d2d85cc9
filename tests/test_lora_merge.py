"""Merging: extract at full rank then merge reproduces the tuned weights; LyCORIS deltas; bad LoRA files."""

from __future__ import annotations

import pytest
import torch

from helpers.lora.demo import make_tuned_copy
from helpers.lora.extract import extract_lora
from helpers.lora.formats import LoraFileError, read_lora, write_lora
from helpers.lora.merge import merge_lora
from helpers.lora.naming import list_targets
from helpers.models import open_checkpoint


@pytest.fixture(scope="module")
def pair(tiny_sdxl_dir, tmp_path_factory):
    tuned = make_tuned_copy(tiny_sdxl_dir, tmp_path_factory.mktemp("pair") / "tuned", ("unet", "te1", "te2"))
    return tiny_sdxl_dir, tuned


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_full_rank_extract_then_merge_reproduces_tuned(arch, tiny_sdxl_dir, tiny_sd15_dir, tmp_path):
    base = tiny_sdxl_dir if arch == "sdxl" else tiny_sd15_dir
    tuned = make_tuned_copy(base, tmp_path / "tuned", ("unet", "te1", "te2") if arch == "sdxl" else ("unet", "te1"))
    lora = tmp_path / "full.safetensors"
    extract_lora(base, tuned, lora, rank=4096, conv_rank=4096, precision="fp32", progress=False)
    merged = tmp_path / "merged.safetensors"
    merge_lora(base, lora, merged, precision="fp32", progress=False)
    b, t, m = open_checkpoint(base), open_checkpoint(tuned), open_checkpoint(merged)
    assert m.arch == arch and m.layout == "single_file"
    targets = {(x.component, x.weight_key) for x in list_targets(b, with_conv=True)}
    assert len(targets) > 100
    for comp in b.components():
        for key in b.keys(comp):
            got = m.get(comp, key).float()
            if (comp, key) in targets:
                assert torch.allclose(got, t.get(comp, key).float(), atol=1e-5, rtol=1e-4), (comp, key)
            else:  # layers a LoRA does not target keep the base weights
                assert torch.equal(got, b.get(comp, key).float()), (comp, key)


def test_strength_scales_the_change(pair, tmp_path):
    base, tuned = pair
    lora = tmp_path / "l.safetensors"
    extract_lora(base, tuned, lora, rank=8, precision="fp32", progress=False)
    half = tmp_path / "half.safetensors"
    merge_lora(base, lora, half, strength=0.5, precision="fp32", progress=False)
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    module = read_lora(lora).modules["lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"]
    w0 = open_checkpoint(base).get("unet", key)
    expected = w0 + 0.5 * module.delta(tuple(w0.shape))
    torch.testing.assert_close(open_checkpoint(half).get("unet", key), expected)


def _random_module_tensors(algo: str, out_dim: int, in_dim: int, rank: int, gen) -> dict:
    r = lambda *s: torch.randn(*s, generator=gen) * 0.1  # noqa: E731
    if algo == "loha":
        return {"hada_w1_a": r(out_dim, rank), "hada_w1_b": r(rank, in_dim), "hada_w2_a": r(out_dim, rank),
                "hada_w2_b": r(rank, in_dim), "alpha": torch.tensor(2.0)}
    if algo == "lokr":  # out = 4 * (out/4), in = 4 * (in/4); w1 full, w2 factorised
        return {"lokr_w1": r(4, 4), "lokr_w2_a": r(out_dim // 4, rank), "lokr_w2_b": r(rank, in_dim // 4),
                "alpha": torch.tensor(2.0)}
    return {"lora_down.weight": r(rank, in_dim), "lora_up.weight": r(out_dim, rank), "alpha": torch.tensor(2.0)}


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_lycoris_deltas_match_lycoris(algo):
    """Our delta formulas against LyCORIS' own functional implementations."""
    from lycoris.functional import loha, lokr

    from helpers.lora.formats import LoraModule

    gen = torch.Generator().manual_seed(0)
    t = _random_module_tensors(algo, 16, 32, 4, gen)
    mine = LoraModule("x", t).delta((16, 32))
    if algo == "loha":
        ref = loha.diff_weight(t["hada_w1_b"], t["hada_w1_a"], t["hada_w2_b"], t["hada_w2_a"], None, None,
                               gamma=torch.tensor(2.0 / 4))
    else:
        ref = lokr.diff_weight(t["lokr_w1"], None, None, None, t["lokr_w2_a"], t["lokr_w2_b"], None, gamma=2.0)  # divides by rank itself
    torch.testing.assert_close(mine, ref.reshape(16, 32))


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_merge_lycoris_file(algo, pair, tmp_path):
    base, _ = pair
    b = open_checkpoint(base)
    gen = torch.Generator().manual_seed(1)
    targets = [x for x in list_targets(b, with_conv=False) if len(x.shape) == 2][:6]
    tensors = {}
    for x in targets:
        for k, v in _random_module_tensors(algo, x.shape[0], x.shape[1], 2, gen).items():
            tensors[f"{x.lora_name}.{k}"] = v
    path = write_lora(tmp_path / f"{algo}.safetensors", tensors, {"ss_network_module": "lycoris.kohya"})
    merged = tmp_path / "m.safetensors"
    merge_lora(base, path, merged, strength=0.7, precision="fp32", progress=False)
    m = open_checkpoint(merged)
    lora = read_lora(path)
    for x in targets:
        w0 = b.get(x.component, x.weight_key)
        expected = w0 + 0.7 * lora.modules[x.lora_name].delta(x.shape)
        torch.testing.assert_close(m.get(x.component, x.weight_key), expected)


def test_lora_with_unknown_layers_is_refused(pair, tmp_path):
    base, _ = pair
    tensors = {"lora_unet_not_a_layer_to_q.lora_down.weight": torch.zeros(2, 8),
               "lora_unet_not_a_layer_to_q.lora_up.weight": torch.zeros(8, 2)}
    path = write_lora(tmp_path / "bad.safetensors", tensors, {})
    with pytest.raises(LoraFileError, match="not in the base model"):
        merge_lora(base, path, tmp_path / "m.safetensors", progress=False)
    assert not (tmp_path / "m.safetensors").exists()
    odd = write_lora(tmp_path / "odd.safetensors", {"lora_unet_x.weird_suffix": torch.zeros(2)}, {})
    with pytest.raises(LoraFileError, match="unknown suffixes"):
        read_lora(odd)


def test_wrong_architecture_lora_and_truncated_and_pickle(pair, tiny_sd15_dir, tmp_path):
    base, tuned = pair
    lora = tmp_path / "x.safetensors"
    extract_lora(base, tuned, lora, rank=4, progress=False)
    with pytest.raises(LoraFileError, match="sdxl LoRA"):
        merge_lora(tiny_sd15_dir, lora, tmp_path / "m.safetensors", progress=False)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(lora.read_bytes()[:-100])
    with pytest.raises(LoraFileError, match="truncated"):
        read_lora(cut)
    pt = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, pt)
    with pytest.raises(LoraFileError, match="pickle"):
        read_lora(pt)


def test_written_hashes_equal_sd_scripts_recipe(tmp_path):
    """sshs_* computed from disk equal the in-memory recipe (serialise with ss_* metadata only, hash)."""
    from helpers.lora.formats import addnet_hashes

    g = torch.Generator().manual_seed(0)
    tensors = {f"lora_unet_l{i}.lora_down.weight": torch.randn(8, 300, generator=g).half() for i in range(300)}
    meta = {"ss_network_dim": "8", "modelspec.title": "x"}
    path = write_lora(tmp_path / "h.safetensors", tensors, meta)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        written, back = f.metadata(), f.get_tensor("lora_unet_l7.lora_down.weight")
    assert (written["sshs_model_hash"], written["sshs_legacy_hash"]) == addnet_hashes(tensors, meta)
    assert written["modelspec.title"] == "x" and torch.equal(back, tensors["lora_unet_l7.lora_down.weight"])


def test_merge_refuses_to_overwrite(pair, tmp_path):
    base, tuned = pair
    lora = tmp_path / "l.safetensors"
    extract_lora(base, tuned, lora, rank=2, progress=False)
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="already exists"):
        merge_lora(base, lora, out, progress=False)
    assert out.read_bytes() == b"precious"
