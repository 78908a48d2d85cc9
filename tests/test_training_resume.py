"""The headline guarantee: a run killed with SIGKILL and resumed with ``--resume latest`` reproduces the
per-step losses and the bit-identical final weights of an uninterrupted run (CPU, one thread).

Real processes (``python -m helpers.training``), a real ``kill -9`` while training runs, twice (a second
resume must not double-count), with everything that carries randomness or position switched on: random
crop, flip with no-flip tags, colour jitter, persistent loader workers, every caption option (keep separator,
fixed and important tags, shuffle, tag / implication / short-caption / caption dropout, dropout every N
epochs, tag and caption mixing from .captions.json, wildcards, prefix/suffix, 150-token prompts),
text-encoder training, gradient accumulation with a short last chunk per epoch, a warm-up + cosine
schedule, min-SNR, noise offset, pyramid noise, input perturbation, EMA (both files saved), and two stages
(resolution and text-encoder LR change at epoch 1; the first kill lands in the second stage, so the resume
crosses the boundary).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.config import from_dict, save_config
from helpers.training.config import TrainConfig
from helpers.training.progress import read_log, step_losses

REPO = Path(__file__).resolve().parent.parent


def add_caption_material(dataset: Path) -> Path:
    """Keep separators and a wildcard in one caption file, .captions.json records (tags + a long natural
    caption) beside the others, and an implications CSV; returns the CSV."""
    from helpers.captioning.sidecar import CaptionRecord

    images = sorted(dataset.rglob("*.png"))
    images[0].with_suffix(".txt").write_text("thing ||| {red|green}, blue, color, number 0 ||| masterpiece",
                                             encoding="utf-8")
    for index, image in enumerate(images[1:], start=1):
        record = CaptionRecord(tags=["thing", "red", "blue", "color", f"number {index}", "masterpiece"], keep=1,
                               captions={"florence": "A small square picture of random coloured noise, with red "
                                         f"and blue dots all over it, number {index} of the set."})
        image.with_suffix(".captions.json").write_text(record.to_json(), encoding="utf-8")
    implications = dataset.parent / "implications.csv"
    implications.write_text("antecedent_name,consequent_name\nred,color\nblue,color\n", encoding="utf-8")
    return implications


def make_run(tmp_path: Path, name: str, model_dir: Path, dataset: Path) -> Path:
    cfg = from_dict(TrainConfig, {
        "model": {"base_model": str(model_dir)},
        "data": {"dataset": str(dataset), "resolution": 64, "min_bucket_side": 32, "max_bucket_side": 128,
                 "bucket_step": 32, "random_crop": True, "flip": True, "no_flip_tags": ["number 1"],
                 "color_jitter": 0.1, "hue_jitter": 0.03, "num_workers": 1, "persistent_workers": True},
        "captions": {"shuffle_caption": True, "keep_tokens": 1, "tag_dropout": 0.2, "caption_dropout": 0.1,
                     "caption_dropout_every_n_epochs": 3, "short_caption_chance": 0.3,
                     "implications_csv": str(add_caption_material(dataset)), "implication_dropout": 0.5,
                     "fixed_tags": ["masterpiece"], "important_tags": ["number*"], "wildcards": True,
                     "caption_prefix": "sks", "caption_suffix": "by tunebook", "mix_tags": 0.5,
                     "mix_caption": 0.3, "mix_both": 0.2, "max_token_length": 150},
        "optimizer": {"learning_rate": 1e-3, "train_text_encoder": True, "gradient_accumulation_steps": 2,
                      "lr_scheduler": "cosine", "lr_warmup_steps": 2},
        "objective": {"min_snr_gamma": 5.0, "noise_offset": 0.05, "multires_noise_iterations": 3,
                      "ip_noise_gamma": 0.05, "ip_noise_gamma_random_strength": True},
        "ema": {"enabled": True, "decay": 0.9, "save_trained_too": True},
        # two stages: the second at another resolution with a lower text-encoder LR (hyperfusion's shape)
        "stages": [{"epochs": 1}, {"epochs": 2, "resolution": 96, "learning_rate_te1": 5e-4}],
        "saving": {"save_every_n_epochs": 0, "state_every_n_steps": 2, "state_every_n_minutes": 0.0,
                   "save_precision": "fp32", "keep_last_states": 2},
        "epochs": 3, "batch_size": 1, "seed": 3, "device": "cpu"})
    run = tmp_path / "runs" / name
    save_config(cfg, run / "config.toml")
    return run


def start(run: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "helpers.training", str(run / "config.toml"), "--progress",
                             "off", *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kill_after_step(proc: subprocess.Popen, log: Path, step: int, timeout: float = 120) -> int:
    """SIGKILL the trainer as soon as its log shows ``step`` (or later); returns the last step logged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = max(step_losses(log), default=0)
        if done >= step:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return done
        if proc.poll() is not None:
            pytest.fail(f"trainer exited before step {step}: {proc.stdout.read().decode()[-2000:]}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("trainer too slow")


def kill_while_reference_trains(killed: Path, reference: Path, step: int) -> int:
    """Start ``killed`` as a trainer process and SIGKILL it once its log shows ``step``, watched from a thread
    while the uninterrupted ``reference`` run trains in this process (same code, same single thread); returns the
    last step the killed run logged."""
    import threading

    from accelerate.state import AcceleratorState

    from helpers.config import load_config
    from helpers.training.loop import train

    proc = start(killed)
    result: dict = {}
    watcher = threading.Thread(target=lambda: result.update(first=kill_after_step(proc, killed / "log.jsonl", step)))
    watcher.start()
    AcceleratorState._reset_state(True)
    train(load_config(TrainConfig, reference / "config.toml"), reference, show_progress=False)
    watcher.join()
    return result["first"]


def final_weights(run: Path, suffix: str = "") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / f"{run.name}{suffix}.safetensors"))


def test_kill_9_and_resume_latest_reproduces_losses_and_weights(tiny_sdxl_dir, tmp_path):


    from tests.test_training_loop import make_dataset

    dataset = make_dataset(tmp_path / "ds", n=3)  # 4 samples/epoch -> 4 batches -> 2 steps/epoch, 6 in all
    reference = make_run(tmp_path, "reference", tiny_sdxl_dir, dataset)
    killed = make_run(tmp_path, "killed", tiny_sdxl_dir, dataset)
    # first kill mid-run (state every 2 steps: the resumed run must redo what was lost)
    first = kill_while_reference_trains(killed, reference, 3)
    # second kill after resuming: counters must continue, not restart or double-count
    proc = start(killed, "--resume", "latest")
    second = kill_after_step(proc, killed / "log.jsonl", first + 1)
    proc = start(killed, "--resume", "latest")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()[-3000:]

    ref_losses, res_losses = step_losses(reference / "log.jsonl"), step_losses(killed / "log.jsonl")
    assert sorted(ref_losses) == list(range(1, 7)) and second < 6
    assert res_losses == ref_losses  # exact floats, step by step
    resumes = [r for r in read_log(killed / "log.jsonl") if r.get("event") == "resume"]
    assert len(resumes) == 2 and all(r["step"] % 2 == 0 for r in resumes)  # states are at even steps
    for suffix in ("", "-noema"):  # the EMA model and the trained weights beside it
        ref_w, res_w = final_weights(reference, suffix), final_weights(killed, suffix)
        assert ref_w.keys() == res_w.keys()
        assert all(torch.equal(ref_w[k], res_w[k]) for k in ref_w)  # bit-identical, every tensor
    assert not all(torch.equal(final_weights(killed)[k], v) for k, v in final_weights(killed, "-noema").items())
    assert not list((killed / "state").glob(".tmp-*"))  # no half-written state left behind


def test_resume_with_changed_config_says_so(tiny_sd15_dir, tmp_path, capsys):
    from accelerate.state import AcceleratorState

    from helpers.config import load_config
    from helpers.training.loop import TrainingError, train
    from tests.test_training_loop import make_dataset

    AcceleratorState._reset_state(True)
    run = make_run(tmp_path, "r", tiny_sd15_dir, make_dataset(tmp_path / "ds", n=2))
    cfg = load_config(TrainConfig, run / "config.toml")
    cfg.epochs, cfg.stages = 1, []
    train(cfg, run, show_progress=False)
    with pytest.raises(TrainingError, match="already holds training state"):
        train(cfg, run, show_progress=False)  # a fresh start never mixes with an earlier run's state
    cfg.optimizer.learning_rate = 2e-3
    cfg.data.num_workers = 1  # does not change the computation: not reported
    cfg.optimizer.lr_scheduler, cfg.optimizer.lr_warmup_steps = "constant", 0
    cfg.epochs = 2  # one more epoch, trained at the edited LR
    train(cfg, run, resume="latest", show_progress=False)
    err = capsys.readouterr().err
    assert "will not match an uninterrupted one" in err and "optimizer.learning_rate" in err
    assert "num_workers" not in err
    # the edited LR wins, and says so: an event with the numbers and a warning the notebook monitor shows
    changed = [r for r in read_log(run / "log.jsonl") if r.get("event") == "learning_rate_changed"]
    assert changed and changed[0]["groups"]["unet"] == [1e-3, 2e-3]
    status = json.loads((run / "status.json").read_text())
    assert any("unet 0.001 -> 0.002" in w for w in status["warnings"])
    resumed = [r for r in read_log(run / "log.jsonl") if "event" not in r and r["step"] > changed[0]["step"]]
    assert [r["step"] for r in resumed] == [3, 4] and all(r["lrs"]["unet"] == pytest.approx(2e-3) for r in resumed)
    with pytest.raises(TrainingError, match="no training state"):
        train(cfg, tmp_path / "runs" / "empty", resume="latest", show_progress=False)


def test_state_save_refuses_when_disk_is_short_and_keeps_previous(tmp_path, monkeypatch):
    import shutil

    from helpers.training import checkpoints as ckpt

    weights = {"w": torch.ones(1000)}
    trainer = {"step": 1, "epoch": 0, "batch_in_epoch": 1, "config": {}, "scheduler": {}, "scaler": None,
               "rng": ckpt.capture_rng_states()}
    first = ckpt.save_training_state(tmp_path / "state", 1, weights=weights, optimizer_state={}, trainer=trainer)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(ckpt.SaveError, match=r"needs 0\.00 GB.*Free space"):
        ckpt.save_training_state(tmp_path / "state", 2, weights=weights, optimizer_state={}, trainer=trainer)
    assert ckpt.find_latest_state(tmp_path / "state") == first
    assert torch.equal(ckpt.load_training_state(first)["weights"]["w"], weights["w"])


def test_rng_states_round_trip_through_a_state_folder(tmp_path):
    import random

    import numpy as np

    from helpers.training import checkpoints as ckpt

    trainer = {"step": 1, "epoch": 0, "batch_in_epoch": 0, "config": {}, "scheduler": {}, "scaler": None,
               "rng": ckpt.capture_rng_states()}
    expected = (torch.rand(3), np.random.rand(3), random.random())
    path = ckpt.save_training_state(tmp_path / "state", 1, weights={"w": torch.zeros(2)}, optimizer_state={},
                                    trainer=trainer)
    torch.rand(5), np.random.rand(5), random.random()  # move every generator on
    ckpt.restore_rng_states(ckpt.load_training_state(path)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]
