"""load_model: the same weights, tokenizers and noise schedule from a diffusers folder, our single file and a
Hub repo id (real snapshot_download against a local HF cache); strict, named errors for mismatches."""

from __future__ import annotations

import shutil

import pytest
import torch

from helpers.models import CheckpointError, load_model, open_checkpoint, save_single_file
from helpers.models.loader import load_tokenizers


def _pipeline_state(folder, arch):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if arch == "sdxl":
        pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True)
        tes = [pipe.text_encoder, pipe.text_encoder_2]
    else:
        pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None,
                                                       requires_safety_checker=False)
        tes = [pipe.text_encoder]
    return pipe, tes


def _assert_bundle_matches(bundle, pipe, tes):
    for ours, theirs in [(bundle.unet, pipe.unet), (bundle.vae, pipe.vae)] + list(zip(bundle.text_encoders, tes, strict=True)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert set(a) == set(b)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not any(p.is_meta for p in ours.parameters())
    references = [pipe.tokenizer] + ([pipe.tokenizer_2] if getattr(pipe, "tokenizer_2", None) else [])
    for tok, ref in zip(bundle.tokenizers, references, strict=True):
        ids = tok("a photo of a cat, best quality", padding="max_length", max_length=77).input_ids
        assert ids == ref("a photo of a cat, best quality", padding="max_length", max_length=77).input_ids


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir, tmp_path_factory):
    pipe, tes = _pipeline_state(tiny_sdxl_dir, "sdxl")
    path = save_single_file(pipe.unet, pipe.vae, tes, tmp_path_factory.mktemp("ld") / "sdxl.safetensors",
                            arch="sdxl", precision="fp32")
    return tiny_sdxl_dir, path, pipe, tes


def test_folder_and_single_file_give_the_same_models(sdxl):
    folder, path, pipe, tes = sdxl
    for source in (folder, path):
        bundle = load_model(source)
        assert (bundle.arch, bundle.prediction) == ("sdxl", "epsilon")
        assert len(bundle.text_encoders) == len(bundle.tokenizers) == 2
        _assert_bundle_matches(bundle, pipe, tes)
        assert type(bundle.noise_scheduler).__name__ == "DDPMScheduler"
        assert bundle.noise_scheduler.config.prediction_type == "epsilon"
        assert bundle.noise_scheduler.config.num_train_timesteps == 1000


def test_v_prediction_sd15_and_dtype(tiny_sd15_v_dir, tmp_path):
    pipe, tes = _pipeline_state(tiny_sd15_v_dir, "sd15")
    path = save_single_file(pipe.unet, pipe.vae, tes, tmp_path / "v.safetensors", arch="sd15", precision="fp32",
                            prediction="v_prediction")
    bundle = load_model(path)
    assert (bundle.arch, bundle.prediction) == ("sd15", "v_prediction")
    assert bundle.noise_scheduler.config.prediction_type == "v_prediction"
    _assert_bundle_matches(bundle, pipe, tes)
    half = load_model(tiny_sd15_v_dir, dtype=torch.bfloat16, prediction="epsilon")
    assert {p.dtype for p in half.unet.parameters()} == {torch.bfloat16}
    assert half.prediction == "epsilon" and half.noise_scheduler.config.prediction_type == "epsilon"


def test_declared_arch_must_match(sdxl):
    with pytest.raises(CheckpointError, match="SDXL model, but arch='sd15' was declared"):
        load_model(sdxl[1], arch="sd15")
    with pytest.raises(ValueError, match="arch must be"):
        load_model(sdxl[1], arch="flux")


def test_hub_repo_id_through_snapshot_download(tiny_sdxl_dir, tmp_path):
    """A repo already in the HF cache loads offline through the real huggingface_hub code path."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--tester--tiny-sdxl"
    shutil.copytree(tiny_sdxl_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    bundle = load_model("tester/tiny-sdxl", cache_dir=tmp_path / "hf")
    assert bundle.arch == "sdxl" and bundle.source == "tester/tiny-sdxl"
    with pytest.raises(CheckpointError, match="could not get 'tester/absent'.*Hugging Face Hub"):
        load_model("tester/absent", cache_dir=tmp_path / "hf")
    with pytest.raises(CheckpointError, match="no such file or folder, and not a Hub repo id"):
        load_model(str(tmp_path / "nowhere" / "x.safetensors"))


def test_unet_only_file_is_not_a_full_model(tiny_sdxl_dir):
    with pytest.raises(CheckpointError, match="has no vae, te1, te2"):
        load_model(tiny_sdxl_dir / "unet" / "diffusion_pytorch_model.safetensors")


def test_foreign_file_is_checked_against_shipped_configs(sdxl, tmp_path):
    """Without our config metadata a single file is built from the real SDXL-base configs; tiny widths don't fit."""
    _, _, pipe, tes = sdxl
    bare = save_single_file(pipe.unet.state_dict(), pipe.vae.state_dict(), [t.state_dict() for t in tes],
                            tmp_path / "bare.safetensors", arch="sdxl")
    assert "tunebook.configs" not in open_checkpoint(bare).metadata
    with pytest.raises(CheckpointError, match="unet does not match its sdxl config"):
        load_model(bare)


def test_tokenizers_for_real_vocab_need_the_hub_or_a_folder(tiny_sdxl_dir, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "real-vocab.safetensors"
    save_file({"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(49408, 2),
               "model.diffusion_model.input_blocks.11.0.in_layers.0.weight": torch.zeros(2)}, str(path))
    ck = open_checkpoint(path)
    with pytest.raises(CheckpointError, match="tokenizer is not stored in single-file.*tokenizers_from"):
        load_tokenizers(ck)
    with pytest.raises(CheckpointError, match=r"vocabulary sizes \[514\] do not match .* 49408"):
        load_tokenizers(ck, tokenizers_from=tiny_sdxl_dir)  # a folder of another family is refused, not used
