"""The text-encoder output cache: the same loss as encoding every step, refused (field named, why said) when a
caption can change or a text encoder trains, and a run trains with it from memory and from disk."""

from __future__ import annotations

import pytest
import torch

from helpers.config import validate
from helpers.training.te_cache import FIELD, TextEncoderCache, cache_problems, dataset_captions
from tests.test_training_loop import make_dataset, tiny_config


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_loss_with_the_cache_equals_the_loss_without(arch, tiny_sdxl_dir, tiny_sd15_dir, tmp_path):
    from helpers.models import load_model
    from helpers.training.components import model_family
    from helpers.training.data import build_training_data, collate_samples
    from helpers.training.loop import compute_loss

    cfg = tiny_config(tiny_sdxl_dir if arch == "sdxl" else tiny_sd15_dir, make_dataset(tmp_path / "d", n=3))
    bundle = load_model(cfg.model.base_model)
    family = model_family(bundle.arch)
    data = build_training_data(cfg.data, cfg.data.dataset, batch_size=2, seed=0)
    batch = collate_samples([data.dataset[s] for s in data.batches(0)[0]])
    cache = TextEncoderCache(family, bundle.tokenizers, bundle.text_encoders, torch.device("cpu"),
                             folder=tmp_path / "te")
    assert cache.fill(dataset_captions(data), show_progress=False) == 3
    settings = dict(family=family, unet=bundle.unet, vae=bundle.vae, tokenizers=bundle.tokenizers,
                    text_encoders=bundle.text_encoders, unet_dtype=torch.float32,
                    alphas_cumprod=bundle.noise_scheduler.alphas_cumprod, objective=cfg.objective,
                    prediction=bundle.prediction, train_text=False)
    with torch.no_grad():
        plain = compute_loss(batch, **settings)
        cached = compute_loss(batch, **settings, text_cache=cache)
        # a second cache over the same folder reads the files the first wrote
        again = TextEncoderCache(family, bundle.tokenizers, bundle.text_encoders, torch.device("cpu"),
                                 folder=tmp_path / "te")
        from_disk = compute_loss(batch, **settings, text_cache=again)
    assert len(list((tmp_path / "te").rglob("*.safetensors"))) == 3 and not again.memory.keys() - cache.memory.keys()
    assert cached.item() == pytest.approx(plain.item(), rel=1e-6, abs=1e-7)  # batch-of-one encodes vs a batch
    assert from_disk.item() == cached.item()


@pytest.mark.parametrize("setting, field", [
    ({"captions.shuffle_caption": True}, "captions.shuffle_caption"),
    ({"captions.tag_dropout": 0.15}, "captions.tag_dropout"),
    ({"captions.caption_dropout": 0.1}, "captions.caption_dropout"),
    ({"captions.wildcards": True}, "captions.wildcards"),
    ({"optimizer.train_text_encoder": True}, "optimizer.train_text_encoder"),
    ({"network.algo": "lora", "network.train_text_encoder": True}, "network.train_text_encoder"),
])
def test_the_cache_is_refused_naming_the_field_and_why(setting, field, tmp_path):
    cfg = tiny_config(tmp_path / "m", tmp_path / "d", **{"data.cache_text_encoder_outputs": "memory", **setting})
    problem = validate(cfg)[FIELD]
    assert field in problem and ("each step" in problem or "changes every step" in problem)
    ok = tiny_config(tmp_path / "m", tmp_path / "d", **{"data.cache_text_encoder_outputs": "disk"})
    assert cache_problems(ok) == {} and FIELD not in validate(ok)
    # a text encoder with learning rate 0 stays frozen: nothing to refuse
    frozen = tiny_config(tmp_path / "m", tmp_path / "d", **{"data.cache_text_encoder_outputs": "memory",
                                                             "optimizer.train_text_encoder": True,
                                                             "optimizer.learning_rate_te1": 0.0,
                                                             "optimizer.learning_rate_te2": 0.0})
    assert cache_problems(frozen) == {}


def test_a_run_with_the_disk_cache_trains_and_keeps_the_cache(tiny_sd15_dir, tmp_path):
    from helpers.training.loop import train
    from helpers.training.progress import step_losses

    cfg = tiny_config(tiny_sd15_dir, make_dataset(tmp_path / "d", n=3), **{
        "data.cache_text_encoder_outputs": "disk", "data.cache_latents": "memory", "max_steps": 2})
    result = train(cfg, tmp_path / "run", cache_dir=tmp_path / "cache", show_progress=False)
    assert result["steps"] == 2 and len(step_losses(tmp_path / "run" / "log.jsonl")) == 2
    assert len(list((tmp_path / "cache" / "text_encoder_outputs").rglob("*.safetensors"))) == 3
