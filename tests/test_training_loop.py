"""Full fine-tuning end to end on tiny SDXL / SD 1.5: loss goes down, files load, bad input stops cleanly.

The kill-and-resume test lives in ``test_training_resume.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.config import build_config, from_dict, validate
from helpers.training.config import TrainConfig


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # each in-process run may pick its own mixed precision
    yield
    AcceleratorState._reset_state(True)


def make_dataset(root, n=3):
    """A few small random images with captions: a 2-repeat kohya folder and plain images, two aspect ratios."""
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (96, 64), (64, 64), (64, 96)]
    for i in range(n):
        folder = root / "2_thing" if i == 0 else root
        folder.mkdir(parents=True, exist_ok=True)
        w, h = sizes[i % len(sizes)]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"thing, red, blue, number {i}", encoding="utf-8")
    return root


def tiny_config(model_dir, dataset, **overrides) -> TrainConfig:
    data = {"model": {"base_model": str(model_dir)},
            "data": {"dataset": str(dataset), "resolution": 64, "min_bucket_side": 32, "max_bucket_side": 128,
                     "bucket_step": 32, "num_workers": 0},
            "optimizer": {"learning_rate": 1e-3},
            "saving": {"save_every_n_epochs": 0, "state_every_n_steps": 0, "state_every_n_minutes": 0.0,
                       "save_precision": "fp32"},
            "epochs": 2, "batch_size": 2, "seed": 1, "device": "cpu"}
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    return from_dict(TrainConfig, data)


def fixed_loss(bundle, cfg: TrainConfig, seeds=range(8)) -> float:
    """Mean loss of a model over the dataset's first batch at fixed seeds (same noise and timesteps)."""
    import dataclasses

    from helpers.training.components import model_family
    from helpers.training.data import build_training_data, collate_samples
    from helpers.training.loop import compute_loss

    plain = dataclasses.replace(cfg.data, cache_latents="off", flip=False)  # the same pixels for every model
    data = build_training_data(plain, cfg.data.dataset, batch_size=cfg.batch_size, seed=0)
    batch = collate_samples([data.dataset[s] for s in data.batches(0)[0]])
    total = 0.0
    with torch.no_grad():
        for seed in seeds:
            batch["seeds"] = [seed] * len(batch["captions"])
            total += compute_loss(batch, family=model_family(bundle.arch), unet=bundle.unet, vae=bundle.vae,
                                  tokenizers=bundle.tokenizers, text_encoders=bundle.text_encoders,
                                  unet_dtype=torch.float32, alphas_cumprod=bundle.noise_scheduler.alphas_cumprod,
                                  objective=cfg.objective, prediction=bundle.prediction, train_text=False).item()
    return total / len(seeds)


@pytest.mark.parametrize("family", ["sdxl", "sd15_v"])
def test_fine_tune_lowers_loss_and_writes_single_file(family, tiny_sdxl_dir, tiny_sd15_v_dir, tmp_path):
    from helpers.models import load_model
    from helpers.training.loop import train
    from helpers.training.progress import read_log

    model_dir = tiny_sdxl_dir if family == "sdxl" else tiny_sd15_v_dir
    dataset = make_dataset(tmp_path / "ds")
    extra = {"data.cache_latents": "disk", "data.flip": True} if family == "sd15_v" else {}
    cfg = tiny_config(model_dir, dataset, **{"optimizer.train_text_encoder": True, "epochs": 3,
                                             "objective.min_snr_gamma": 5.0, "saving.save_every_n_epochs": 1,
                                             "saving.keep_last": 1, **extra})
    run = tmp_path / "runs" / "r"
    result = train(cfg, run, cache_dir=tmp_path / "cache", show_progress=False)
    if extra:  # trained from the disk latent cache: 3 images x (plain, flipped)
        assert len(list((tmp_path / "cache" / "latents").glob("*/*.safetensors"))) == 6
    final = run / "checkpoints" / "r.safetensors"
    assert result["final"] == str(final) and final.exists()
    # periodic files: one per epoch except the last (the final file covers it), only the newest kept
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["r-e0002.safetensors", "r.safetensors"]
    bundle = load_model(str(final))
    assert bundle.arch == ("sdxl" if family == "sdxl" else "sd15")
    assert bundle.prediction == ("epsilon" if family == "sdxl" else "v_prediction")
    base = load_model(str(model_dir))
    changed = [n for n, p in bundle.unet.state_dict().items() if not torch.equal(p, base.unet.state_dict()[n])]
    assert len(changed) > 100
    te_changed = any(not torch.equal(p, base.text_encoders[0].state_dict()[n])
                     for n, p in bundle.text_encoders[0].state_dict().items())
    assert te_changed  # the text encoder trained too
    before, after = fixed_loss(base, cfg), fixed_loss(bundle, cfg)
    assert after < before * 0.9, (before, after)
    steps = [r for r in read_log(run / "log.jsonl") if "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 7))  # 4 samples/epoch, batch 2 -> 2 steps x 3 epochs
    for key in ("epoch", "loss", "lr", "images_per_s", "s_per_step", "peak_memory_gb", "eta_s"):
        assert key in steps[-1]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 6 and status["last_checkpoint"] == str(final)


@pytest.mark.parametrize("optimizer", ["AdamW", "AdamW8bit", "Adafactor"])
def test_each_optimizer_steps_the_weights_and_lowers_a_loss(optimizer):
    from helpers.training.optim import build_optimizer

    torch.manual_seed(0)
    x, truth = torch.randn(128, 64), torch.randn(96, 64)
    weight = torch.nn.Parameter(torch.zeros(96, 64))  # 6,144 elements: bitsandbytes keeps 8-bit states from 4,096
    bias = torch.nn.Parameter(torch.zeros(96))
    opt = build_optimizer([{"params": [weight, bias], "lr": 2e-2, "name": "unet"}], optimizer, weight_decay=0.0,
                          betas=(0.9, 0.999), eps=1e-8)

    def loss() -> torch.Tensor:
        return ((x @ weight.T + bias - x @ truth.T) ** 2).mean()

    start = loss().item()
    for _ in range(40):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert weight.abs().sum() > 0 and bias.abs().sum() > 0  # both groups' tensors moved
    assert loss().item() < 0.5 * start, (start, loss().item())
    states = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    if optimizer == "AdamW8bit":
        assert any(t.dtype == torch.uint8 for t in states)  # 8-bit moments for the large tensor


@pytest.mark.parametrize("optimizer", ["AdamW8bit", "Adafactor"])
def test_other_optimizers_train(optimizer, tiny_sd15_dir, tmp_path):
    from helpers.models import load_model
    from helpers.training.loop import train

    cfg = tiny_config(tiny_sd15_dir, make_dataset(tmp_path / "ds"), **{"optimizer.optimizer": optimizer,
                      "epochs": 1, "saving.state_every_n_steps": 1, "optimizer.lr_scheduler": "cosine",
                      "optimizer.lr_warmup_steps": 1})
    result = train(cfg, tmp_path / "run", show_progress=False)
    state = torch.load(tmp_path / "run" / "state" / "step-00000002" / "optimizer.pt", weights_only=True)
    assert state["state"], "no optimizer state was saved to resume from"
    tuned, base = load_model(result["final"]), load_model(str(tiny_sd15_dir))
    moved = [n for n, p in tuned.unet.state_dict().items() if not torch.equal(p, base.unet.state_dict()[n])]
    assert len(moved) > 100, "the optimizer did not move the U-Net's weights"


def test_bf16_mixed_precision_and_gradient_checkpointing(tiny_sdxl_dir, tmp_path):
    from helpers.training.loop import train

    cfg = tiny_config(tiny_sdxl_dir, make_dataset(tmp_path / "ds"), **{
        "precision.mixed_precision": "bf16", "precision.gradient_checkpointing": True, "epochs": 1,
        "optimizer.gradient_accumulation_steps": 2})
    result = train(cfg, tmp_path / "run", show_progress=False)
    assert result["steps"] == 1  # 2 batches per epoch, accumulated into one optimizer step


def test_nan_loss_stops_with_likely_cause(tiny_sd15_dir, tmp_path):
    from helpers.training.loop import TrainingError, train

    cfg = tiny_config(tiny_sd15_dir, make_dataset(tmp_path / "ds"), **{"optimizer.learning_rate": 1.0,
                                                                        "optimizer.max_grad_norm": 0.0,
                                                                        "epochs": 5})
    with pytest.raises(TrainingError, match="learning rate is too high"):
        train(cfg, tmp_path / "run", show_progress=False)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "NaN" in status["error"]
    assert not (tmp_path / "run" / "checkpoints" / "run.safetensors").exists()


def test_config_checks_name_the_field():
    cfg = build_config(TrainConfig, overrides={"model": {"base_model": "x"}, "data": {"dataset": "d",
                       "resolution": 1000}, "precision": {"vae_precision": "fp16"}})
    problems = validate(cfg)
    assert "not divisible by the bucket step 64" in problems["data.resolution"]
    assert "fp16" in problems["precision.vae_precision"]
    cfg = build_config(TrainConfig, overrides={"data": {"cache_latents": "disk", "random_crop": True}})
    assert {"model.base_model", "data.dataset", "data.cache_latents"} <= set(validate(cfg))


@pytest.mark.parametrize("name", ["sdxl_finetune_a6000", "sdxl_finetune_a100", "demo_tiny"])
def test_templates_build_and_only_lack_paths(name):
    cfg = build_config(TrainConfig, template=name)
    assert set(validate(cfg)) <= {"model.base_model", "data.dataset"}
    if name.startswith("sdxl"):
        o = cfg.optimizer
        assert (o.optimizer, o.learning_rate, o.lr_scheduler, o.train_text_encoder) == ("AdamW8bit", 1e-6,
                                                                                         "constant", True)
        assert (cfg.epochs, cfg.data.repeats, o.gradient_accumulation_steps) == (100, 2, 3)
        assert cfg.precision.mixed_precision == "fp16" and cfg.precision.vae_precision == "fp32"
        assert cfg.data.random_crop and cfg.data.cache_latents == "off" and cfg.objective.min_snr_gamma == 5


def test_cli_bad_inputs_exit_2_with_message(tmp_path, tiny_sd15_dir, capsys):
    from helpers.training.__main__ import main

    bad = tmp_path / "bad.toml"
    bad.write_text('format_version = 1\nepochz = 3\n[model]\nbase_model = "x"\n', encoding="utf-8")
    assert main([str(bad)]) == 2
    assert "epochz" in capsys.readouterr().err
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    cfg = run / "config.toml"
    cfg.write_text(f'format_version = 1\ndevice = "cpu"\n[model]\nbase_model = "{tiny_sd15_dir}"\n'
                   f'[data]\ndataset = "{tmp_path / "nowhere"}"\nresolution = 64\nbucket_step = 32\n',
                   encoding="utf-8")
    assert main([str(cfg), "--progress", "off"]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert json.loads((run / "status.json").read_text())["state"] == "failed"
    ds = make_dataset(tmp_path / "ds", n=1)
    (ds / "broken.png").write_bytes(b"not an image")
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "nowhere"), str(ds)) + 'on_bad_data = "stop"\n',
                   encoding="utf-8")
    assert main([str(cfg), "--check"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main([str(cfg), "--resume", "latest", "--progress", "off"]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_cli_refuses_wrong_architecture_and_pickle(tmp_path, tiny_sdxl_dir, capsys):
    from helpers.training.__main__ import main

    ds = make_dataset(tmp_path / "ds", n=1)
    pickle_file = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, pickle_file)
    for model, arch, expected in [(tiny_sdxl_dir, "sd15", "SDXL"), (pickle_file, "auto", "pickle")]:
        run = tmp_path / "runs" / f"r-{arch}"
        run.mkdir(parents=True)
        (run / "config.toml").write_text(
            f'format_version = 1\ndevice = "cpu"\n[model]\nbase_model = "{model}"\narch = "{arch}"\n'
            f'[data]\ndataset = "{ds}"\nresolution = 64\nbucket_step = 32\n', encoding="utf-8")
        assert main([str(run / "config.toml"), "--progress", "off"]) == 2
        assert expected in capsys.readouterr().err
