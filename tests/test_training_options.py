"""Every objective, EMA, stage and logging option reaches the training run: each test fails when the option is
ignored. The pure formulas are tested in ``test_training_objective.py`` / ``test_training_optim.py``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.training.config import ObjectiveConfig
from tests.test_training_loop import make_dataset, tiny_config


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def v_model(tiny_sd15_v_dir):
    from helpers.models import load_model

    return load_model(str(tiny_sd15_v_dir))


def objective_loss(bundle, objective: ObjectiveConfig, masks: torch.Tensor | None = None) -> float:
    """The loop's loss on one fixed batch of latents (fixed seeds) with these objective settings."""
    from helpers.training.components import model_family
    from helpers.training.loop import compute_loss, noise_schedule
    from helpers.training.progress import RunMonitor

    g = torch.Generator().manual_seed(0)
    batch = {"latents": torch.randn(2, 4, 8, 8, generator=g) + 0.5, "captions": ["a red thing", "blue"],
             "original_sizes": torch.tensor([[64, 64]] * 2), "crop_top_lefts": torch.tensor([[0, 0]] * 2),
             "target_sizes": torch.tensor([[64, 64]] * 2), "seeds": [11, 12]}
    if masks is not None:
        batch["masks"] = masks
    alphas = noise_schedule(bundle.noise_scheduler.alphas_cumprod, objective.zero_terminal_snr, bundle.prediction,
                            RunMonitor(".", enabled=False))
    with torch.no_grad():
        return compute_loss(batch, family=model_family(bundle.arch), unet=bundle.unet, vae=bundle.vae,
                            tokenizers=bundle.tokenizers, text_encoders=bundle.text_encoders, unet_dtype=torch.float32,
                            alphas_cumprod=alphas, objective=objective, prediction=bundle.prediction,
                            train_text=False).item()


# (option settings, the settings they are compared with): the loss must differ
OPTIONS = {
    "min_snr_gamma": ({"min_snr_gamma": 5.0}, {}),
    "soft_min_snr": ({"min_snr_gamma": 5.0, "soft_min_snr": True}, {"min_snr_gamma": 5.0}),
    "debiased_estimation": ({"debiased_estimation": True}, {}),
    "zero_terminal_snr": ({"zero_terminal_snr": True, "min_timestep": 900}, {"min_timestep": 900}),
    "noise_offset": ({"noise_offset": 0.1}, {}),
    "noise_offset_random_strength": ({"noise_offset": 0.1, "noise_offset_random_strength": True},
                                     {"noise_offset": 0.1}),
    "adaptive_noise_scale": ({"noise_offset": 0.1, "adaptive_noise_scale": 0.5}, {"noise_offset": 0.1}),
    "multires_noise_iterations": ({"multires_noise_iterations": 4}, {}),
    "multires_noise_discount": ({"multires_noise_iterations": 4, "multires_noise_discount": 0.8},
                                {"multires_noise_iterations": 4}),
    "ip_noise_gamma": ({"ip_noise_gamma": 0.1}, {}),
    "ip_noise_gamma_random_strength": ({"ip_noise_gamma": 0.1, "ip_noise_gamma_random_strength": True},
                                       {"ip_noise_gamma": 0.1}),
    "min_timestep": ({"min_timestep": 500}, {}),
    "max_timestep": ({"max_timestep": 100}, {}),
    "timestep_sampling": ({"timestep_sampling": "logit_normal"}, {}),
    "logit_mean": ({"timestep_sampling": "logit_normal", "logit_mean": -1.0}, {"timestep_sampling": "logit_normal"}),
    "logit_std": ({"timestep_sampling": "logit_normal", "logit_std": 2.0}, {"timestep_sampling": "logit_normal"}),
    "loss_type": ({"loss_type": "l1"}, {}),
    "huber": ({"loss_type": "huber"}, {}),
    "smooth_l1": ({"loss_type": "smooth_l1"}, {"loss_type": "huber"}),
    "huber_schedule": ({"loss_type": "huber", "huber_schedule": "constant"}, {"loss_type": "huber"}),
    "huber_c": ({"loss_type": "huber", "huber_c": 0.5}, {"loss_type": "huber"}),
    "huber_scale": ({"loss_type": "huber", "huber_schedule": "exponential", "huber_scale": 2.0},
                    {"loss_type": "huber", "huber_schedule": "exponential"}),
}


def test_every_objective_field_has_a_case():
    fields = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    covered = {k for on, _off in OPTIONS.values() for k in on}
    assert fields <= covered, fields - covered


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_objective_option_changes_the_loss(name, v_model):
    on, off = OPTIONS[name]
    assert objective_loss(v_model, ObjectiveConfig(**on)) != pytest.approx(objective_loss(v_model, ObjectiveConfig(**off)),
                                                                          rel=1e-6, abs=0)


def test_masked_loss_from_alpha_reaches_the_batch_and_the_loss(tmp_path, v_model):
    from helpers.training.data import DataConfig, DataError, build_training_data, collate_samples

    root = tmp_path / "ds"
    root.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 4), dtype=np.uint8)
    pixels[:, :, 3] = 255
    pixels[:, 32:, 3] = 0  # right half transparent: not trained
    Image.fromarray(pixels, "RGBA").save(root / "a.png")
    (root / "a.txt").write_text("a thing", encoding="utf-8")
    cfg = DataConfig(dataset=str(root), resolution=64, bucket_step=32, min_bucket_side=32, max_bucket_side=128,
                     num_workers=0, masks="alpha", flip=True)
    data = build_training_data(cfg, root, batch_size=1, seed=0)
    masks = []
    for epoch in range(6):  # flips move the transparent half to the left
        batch = collate_samples([data.dataset[s] for s in data.batches(epoch)[0]])
        masks.append(batch["masks"])
        assert batch["masks"].shape == (1, 1, 64, 64)
        assert set(batch["masks"].unique().tolist()) == {0.0, 1.0}
    halves = {(m[0, 0, :, :32].mean().item(), m[0, 0, :, 32:].mean().item()) for m in masks}
    assert halves == {(1.0, 0.0), (0.0, 1.0)}
    full = objective_loss(v_model, ObjectiveConfig())
    assert objective_loss(v_model, ObjectiveConfig(), masks=torch.cat([masks[0]] * 2)) < 0.75 * full
    # mask images in a folder: one is missing -> a clear error before training
    folder = dataclasses.replace(cfg, masks="folder")
    with pytest.raises(DataError, match=r"no mask in .*_masks.*data.masks = 'off'"):
        build_training_data(folder, root, batch_size=1, seed=0)
    (root / "_masks").mkdir()
    Image.new("L", (64, 64), 255).save(root / "_masks" / "a.png")
    batch = collate_samples([build_training_data(folder, root, batch_size=1, seed=0).dataset[
        data.batches(0)[0][0]]])
    assert batch["masks"].min().item() == 1.0


def test_zero_terminal_snr_on_epsilon_is_a_field_error_or_a_warning(tiny_sd15_dir, tmp_path):
    from helpers.config import validate
    from helpers.training.loop import train

    explicit = tiny_config(tiny_sd15_dir, make_dataset(tmp_path / "ds"), **{
        "objective.zero_terminal_snr": True, "model.prediction": "epsilon"})
    assert "v_prediction" in validate(explicit)["objective.zero_terminal_snr"]
    auto = tiny_config(tiny_sd15_dir, make_dataset(tmp_path / "ds"), **{"objective.zero_terminal_snr": True,
                                                                          "epochs": 1})
    assert validate(auto) == {}
    train(auto, tmp_path / "run", show_progress=False)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert any("epsilon model" in w for w in status["warnings"])


def test_stages_change_resolution_and_learning_rates_and_keep_optimizer_state(tiny_sd15_dir, tmp_path):
    from helpers.training.loop import train
    from helpers.training.progress import read_log

    cfg = tiny_config(tiny_sd15_dir, make_dataset(tmp_path / "ds"), **{
        "optimizer.train_text_encoder": True, "optimizer.learning_rate_te1": 1e-3, "epochs": 3,
        "stages": [{"epochs": 1, "resolution": 64}, {"epochs": 2, "resolution": 128, "learning_rate_te1": 1e-4}],
        "saving.state_every_n_steps": 8})
    result = train(cfg, tmp_path / "run", show_progress=False)
    log = read_log(tmp_path / "run" / "log.jsonl")
    data = [r for r in log if r.get("event") == "data"]
    assert [d["resolution"] for d in data] == [64, 128]
    assert data[0]["report"]["buckets"] != data[1]["report"]["buckets"]
    steps = [r for r in log if "event" not in r]
    # stage 1: one epoch of 2 steps at 64²; stage 2: two epochs of 3 steps at 128² with the text encoder's LR cut
    assert [r["lrs"]["te1"] for r in steps] == [1e-3] * 2 + [1e-4] * 6
    assert all(r["lrs"]["unet"] == 1e-3 for r in steps)
    state = torch.load(tmp_path / "run" / "state" / f"step-{result['steps']:08d}" / "optimizer.pt",
                       weights_only=True)
    assert {int(s["step"]) for s in state["state"].values()} == {8}  # one AdamW, never restarted


def test_ema_weights_are_saved_and_the_trained_ones_beside_them(tiny_sd15_dir, tmp_path):
    from helpers.training.loop import train
    from helpers.training.progress import read_log

    cfg = tiny_config(tiny_sd15_dir, make_dataset(tmp_path / "ds"), **{
        "ema.enabled": True, "ema.decay": 0.5, "ema.save_trained_too": True, "ema.device": "cpu",
        "saving.save_every_n_epochs": 1, "saving.keep_last": 1})
    train(cfg, tmp_path / "run", show_progress=False)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["run-e0001-noema.safetensors", "run-e0001.safetensors", "run-noema.safetensors",
                     "run.safetensors"]
    from helpers.models import load_model

    base = load_model(str(tiny_sd15_dir)).unet.state_dict()
    ema = load_model(str(tmp_path / "run" / "checkpoints" / "run.safetensors")).unet.state_dict()
    raw = load_model(str(tmp_path / "run" / "checkpoints" / "run-noema.safetensors")).unet.state_dict()
    distance = {name: sum((sd[k].float() - base[k].float()).norm().item() for k in base)
                for name, sd in (("ema", ema), ("raw", raw))}
    assert 0 < distance["ema"] < distance["raw"]  # the average lags behind the trained weights
    steps = [r for r in read_log(tmp_path / "run" / "log.jsonl") if "event" not in r]
    # a plain copy first, then the (1 + t)/(10 + t) warm-up (below the 0.5 cap for these steps)
    assert [r["ema_decay"] for r in steps] == pytest.approx([0.0, 2 / 11, 3 / 12, 4 / 13])


def test_tensorboard_events_are_written_into_the_run_folder(tiny_sd15_dir, tmp_path):
    from helpers.training.loop import train
    from tests.test_training_trackers import read_events

    cfg = tiny_config(tiny_sd15_dir, make_dataset(tmp_path / "ds"), **{"epochs": 1})
    train(cfg, tmp_path / "run", show_progress=False)
    files = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars = {(e["step"], tag) for e in read_events(files[0]) for tag in e.get("scalars", {})}
    assert {(1, "loss"), (2, "loss"), (1, "lr/unet"), (2, "images_per_s")} <= scalars
    off = tiny_config(tiny_sd15_dir, make_dataset(tmp_path / "ds"), **{"epochs": 1, "logging.tensorboard": False})
    train(off, tmp_path / "off", show_progress=False)
    assert not (tmp_path / "off" / "tensorboard").exists()


@pytest.mark.parametrize("optimizer,extra", [("Lion", {}), ("Lion8bit", {}), ("PagedAdamW8bit", {}),
                                             ("Prodigy", {"optimizer.learning_rate": 1.0}), ("ADOPT", {}),
                                             ("Adafactor", {"optimizer.adafactor_relative_step": True})])
def test_each_optimizer_trains_in_the_loop_and_logs_its_real_step_size(optimizer, extra, tiny_sd15_dir, tmp_path):
    from helpers.training.loop import train
    from helpers.training.progress import read_log

    cfg = tiny_config(tiny_sd15_dir, make_dataset(tmp_path / "ds"), **{"optimizer.optimizer": optimizer,
                                                                        "epochs": 1, **extra})
    train(cfg, tmp_path / "run", show_progress=False)
    steps = [r for r in read_log(tmp_path / "run" / "log.jsonl") if "event" not in r]
    assert len(steps) == 2 and all(np.isfinite(r["loss"]) for r in steps)
    lr = steps[-1]["lrs"]["unet"]
    if optimizer == "Prodigy":
        assert 0 < lr < 1.0  # d · lr, not the configured 1.0
    elif optimizer == "Adafactor":
        assert 0 < lr != 1e-3  # its own relative step, not the configured LR
    else:
        assert lr == 1e-3


@pytest.mark.parametrize("schedule,options,expected", [
    ("cosine_with_restarts", {"optimizer.lr_cycles": 2}, [1.0, 0.5, 1.0, 0.5]),
    ("polynomial", {"optimizer.lr_power": 2.0, "optimizer.lr_end_ratio": 0.2}, [1.0, 0.65, 0.4, 0.25]),
    ("linear", {"optimizer.lr_warmup_steps": 2}, [0.0, 0.5, 1.0, 0.5])])
def test_schedule_options_reach_the_loop(schedule, options, expected, tiny_sd15_dir, tmp_path):
    from helpers.training.loop import train
    from helpers.training.progress import read_log

    cfg = tiny_config(tiny_sd15_dir, make_dataset(tmp_path / "ds"), **{"optimizer.lr_scheduler": schedule,
                                                                        **options})
    train(cfg, tmp_path / "run", show_progress=False)
    lrs = [r["lrs"]["unet"] / 1e-3 for r in read_log(tmp_path / "run" / "log.jsonl") if "event" not in r]
    assert lrs == pytest.approx(expected)
