"""Validation loss during training (``helpers.training.validation``): held-out images are not trained on, the
number depends only on the weights, training with it is bit-identical to training without, it is charted beside
the training loss, its history continues on resume, and a set too small is refused by field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.config import ConfigError, validate
from helpers.training.config import TrainConfig
from helpers.training.progress import add_validation_losses, read_log, step_losses


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def make_images(folder, n, start=0):
    rng = np.random.default_rng(start)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        w, h = (64, 64) if i % 2 else (96, 64)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"thing, number {i}", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("val") / "ds", 6)


def config(model_dir, dataset, *, validation=None, **sections) -> TrainConfig:
    """``tests.test_training_loop.tiny_config`` with the validation loss on (2 held out, every 2 steps)."""
    from tests.test_training_loop import tiny_config

    overrides = {"validation.enabled": True, "validation.holdout_count": 2, "validation.every_n_steps": 2}
    for name, value in {"validation": validation or {}, **sections}.items():
        if isinstance(value, dict):
            overrides.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            overrides[name] = value
    return tiny_config(model_dir, dataset, **overrides)


def validation_events(run):
    return [r for r in read_log(run / "log.jsonl") if r.get("event") == "validation"]


def test_held_out_images_are_not_trained_on(tiny_sd15_dir, dataset, tmp_path, capsys):
    from helpers.training.data import build_training_data
    from helpers.training.loop import train
    from helpers.training.validation import held_out_images

    cfg = config(tiny_sd15_dir, dataset)
    held = held_out_images(dataset, cfg.validation)
    assert len(held) == 2 and held == held_out_images(dataset, cfg.validation)  # the seed fixes the slice
    training = build_training_data(cfg.data, dataset, batch_size=2, seed=1, exclude=held)
    trained = {p.path.name for p in training.dataset.items}
    assert len(trained) == 4 and not trained & set(held)
    assert training.report.held_out == held and "2 held out for the validation loss" in training.report.summary()

    run = tmp_path / "runs" / "held"
    train(cfg, run, show_progress=False)
    data_event = next(r for r in read_log(run / "log.jsonl") if r.get("event") == "data")
    assert data_event["report"]["images"] == 4 and data_event["report"]["held_out"] == held
    from helpers.training.__main__ import check_data
    from helpers.training.dryrun import _dataset_images
    from helpers.training.preflight import estimate_config

    # the dry run, the estimate and `--check` count only what trains
    assert _dataset_images(cfg, None, []) == 4
    assert estimate_config(cfg, None, gpu_name="NVIDIA A100-SXM4-80GB", vram_gb=80.0).total_images == 4 * 2
    assert check_data(cfg, None) == 0 and "2 held out for the validation loss" in capsys.readouterr().out
    events = validation_events(run)
    # 4 images, batch 2: 2 steps per epoch, 4 steps: validation at steps 0, 2 and 4
    assert [e["step"] for e in events] == [0, 2, 4]
    assert all(e["images"] == 2 and len(e["by_timestep"]) == 4 and e["seconds"] > 0 for e in events)
    assert events[-1]["loss"] != events[0]["loss"]  # it moves when the model does
    assert events[0]["timesteps"] == [125, 375, 625, 875]  # spread over the schedule
    written = b"".join(p.read_bytes() for p in (run / "tensorboard").glob("events.out.tfevents.*"))
    assert written.count(b"validation/loss") == 3  # TensorBoard too (W&B gets the same metrics dict)


def test_same_weights_give_the_same_number(tiny_sd15_dir, dataset, tmp_path):
    from helpers.training.loop import train

    cfg = config(tiny_sd15_dir, dataset, validation={"every_n_steps": 1}, optimizer={"learning_rate": 0.0})
    train(cfg, tmp_path / "runs" / "frozen", show_progress=False)
    losses = [e["loss"] for e in validation_events(tmp_path / "runs" / "frozen")]
    assert len(losses) == 5 and len(set(losses)) == 1, losses  # the weights never moved: one number, 5 times


def test_every_random_generator_and_mode_is_restored(dataset):
    """A loss that draws from the global RNGs (as dropout would) leaves them as they were; the models go back
    to training mode; the fixed noise is the same each round."""
    import random

    from helpers.training.validation import build_validation_set, held_out_images

    cfg = config("unused", dataset, validation={"holdout_count": 2})
    encode = lambda pixels, seed: torch.nn.functional.avg_pool2d(pixels, 8)[:, :3]  # noqa: E731
    vset = build_validation_set(cfg, dataset, held_out_images(dataset, cfg.validation), folder=None, encode=encode)
    model = torch.nn.Dropout(0.5)

    def loss(batch, noise, timesteps):
        assert not model.training and not torch.is_grad_enabled()
        torch.rand(3), random.random(), np.random.rand()  # noqa: B018
        return (noise - batch["latents"]).pow(2).mean() + timesteps.float().mean() / 1000

    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    first, second = vset.loss(loss, [model], torch.device("cpu")), vset.loss(loss, [model], torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert (np.random.get_state()[1] == states[2]).all() and model.training
    assert first == second and first["images"] == 2


def test_training_is_bit_identical_with_and_without_validation(tiny_sd15_dir, dataset, tmp_path):
    """A separate validation folder holds nothing out, so the two runs train on the same data; EMA on, so the
    validation rounds swap weights in and out."""
    from safetensors.torch import load_file

    from helpers.training.loop import train

    folder = make_images(tmp_path / "val", 2, start=10)
    runs = {}
    for name, enabled in (("plain", False), ("validated", True)):
        cfg = config(tiny_sd15_dir, dataset, validation={"enabled": enabled, "folder": str(folder),
                                                          "every_n_steps": 1},
                     objective={"noise_offset": 0.05, "ip_noise_gamma": 0.05},
                     ema={"enabled": True, "decay": 0.9})  # validated with the EMA weights swapped in and out
        runs[name] = tmp_path / "runs" / name
        train(cfg, runs[name], show_progress=False)
    assert len(validation_events(runs["validated"])) == 7 and not validation_events(runs["plain"])
    assert step_losses(runs["plain"] / "log.jsonl") == step_losses(runs["validated"] / "log.jsonl")
    a = load_file(runs["plain"] / "checkpoints" / "plain.safetensors")
    b = load_file(runs["validated"] / "checkpoints" / "validated.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_monitor_charts_both_series_and_history_continues_on_resume(tiny_sd15_dir, dataset, tmp_path,
                                                                     monkeypatch):
    from helpers.training.loop import train
    from helpers.ui import charts
    from helpers.ui.monitor import TrainingMonitor
    from helpers.workspace import RunPaths

    run = tmp_path / "runs" / "resumed"
    saving = {"save_every_n_epochs": 0, "state_every_n_steps": 3, "state_every_n_minutes": 0.0,
              "save_precision": "fp32"}
    train(config(tiny_sd15_dir, dataset, validation={"every_n_steps": 1}, max_steps=3, saving=saving), run,
          show_progress=False)
    before = add_validation_losses(read_log(run / "log.jsonl"), {})
    assert sorted(before) == [0, 1, 2, 3]
    train(config(tiny_sd15_dir, dataset, validation={"every_n_steps": 1}, saving=saving), run, resume="latest",
          show_progress=False)
    events = validation_events(run)
    assert [e["step"] for e in events] == [0, 1, 2, 3, 3, 4]  # the resumed run appends from where it stood
    assert events[3]["loss"] == events[4]["loss"]  # the restored weights give the same number

    drawn = []
    real = charts.line_chart
    monkeypatch.setattr(charts, "line_chart", lambda series, *a, **k: drawn.append(series) or real(series, *a, **k))
    monitor = TrainingMonitor(RunPaths(run))
    monitor.refresh()
    assert sorted(monitor._validation) == [0, 1, 2, 3, 4] and monitor.chart.layout.display == ""
    training, validation = drawn[-1].values()
    assert [s for s, _ in training] == [1, 2, 3, 4] and [s for s, _ in validation] == [0, 1, 2, 3, 4]
    assert "validation loss" in list(drawn[-1])[1]
    assert f"validation loss {events[-1]['loss']:.4f} (step 4)" in monitor.line.value


def test_problems_name_the_field(tiny_sd15_dir, tmp_path):
    from helpers.training.loop import train

    small = make_images(tmp_path / "small", 4)
    cfg = config(tiny_sd15_dir, small, validation={"holdout_count": 1})
    problems = validate(cfg)
    assert "validation.holdout_count" in problems and "leaves 3 to train on" in problems["validation.holdout_count"]
    cfg = config(tiny_sd15_dir, small, validation={"holdout_count": 0, "holdout_fraction": 0.25})
    assert "fewer than 4" in validate(cfg)["validation.holdout_fraction"]
    assert "validation.holdout_fraction" in validate(config(tiny_sd15_dir, small, validation={
        "holdout_count": 0, "holdout_fraction": 0.0}))
    # off, or a separate folder: nothing held out, nothing to refuse
    assert not [k for k in validate(config(tiny_sd15_dir, small, validation={"enabled": False}))
                if k.startswith("validation")]
    assert not [k for k in validate(config(tiny_sd15_dir, small, validation={"folder": str(tmp_path)}))
                if k.startswith("validation")]
    # the dry run counts what will train, and says the same
    from helpers.training.dryrun import _dataset_images

    errors = []
    assert _dataset_images(config(tiny_sd15_dir, small, validation={"enabled": False}), None, errors) == 4
    assert _dataset_images(config(tiny_sd15_dir, small, validation={"holdout_count": 1}), None, errors) == 0
    assert errors and errors[0].startswith("validation.holdout_count: holding out 1 of 4 images")
    # the trainer refuses it too, before loading any model (the base model here does not exist)
    with pytest.raises(ConfigError, match="validation.holdout_count"):
        train(config(tmp_path / "no-model", small, validation={"holdout_count": 1}), tmp_path / "runs" / "x",
              show_progress=False)
    with pytest.raises(ConfigError, match="validation.folder: .*no such folder"):
        train(config(tmp_path / "no-model", small, validation={"folder": str(tmp_path / "nope")}),
              tmp_path / "runs" / "y", show_progress=False)
