"""Samples during training: when they are due, what they write and log, and that they leave the run untouched."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from helpers.generation.parameters import parse_parameters, read_png_parameters
from helpers.generation.training_samples import SamplingConfig, TrainingSamples, sample_file_name


def _plan(tmp_path, **fields) -> TrainingSamples:
    cfg = SamplingConfig(**{"prompts": ["a red circle --s 3", "a blue square --d 99 --s 2"], "steps": 3, **fields})
    events = []
    plan = TrainingSamples(cfg, tmp_path / "samples", resolution=64, run_name="run1",
                           log_event=lambda name, **f: events.append((name, f)))
    plan.events = events
    return plan


def test_when_samples_are_due(tmp_path):
    plan = _plan(tmp_path, every_n_epochs=2, every_n_steps=5, at_start=True)
    assert plan.due(0, 0)
    assert [s for s in range(1, 13) if plan.due(s, 0)] == [5, 10]
    assert plan.due(7, 1, epoch_end=True) and not plan.due(7, 2, epoch_end=True)  # the end of every 2nd epoch
    assert plan.due(13, 2, final=True)  # the last step always gets samples
    assert not _plan(tmp_path, at_start=False).due(0, 0)
    assert not _plan(tmp_path, prompts=[]).enabled  # no prompts, no samples
    off = TrainingSamples(SamplingConfig(prompts=["x"]), tmp_path / "s2", resolution=64, run_name="r", enabled=False)
    assert not off.due(0, 0)  # not the main process


def test_sampling_writes_named_images_and_leaves_the_run_as_it_was(tmp_path, tiny_sdxl_dir):
    from helpers.models import load_model

    bundle = load_model(tiny_sdxl_dir)
    bundle.unet.train(), bundle.text_encoders[0].eval(), bundle.text_encoders[1].train()
    plan = _plan(tmp_path)
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    expected = (torch.rand(4), random.random(), np.random.rand())
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    weights = {k: v.clone() for k, v in bundle.unet.state_dict().items()}
    files = plan.maybe_sample(bundle, 0, 0)
    assert (torch.rand(4), random.random(), np.random.rand())[1:] == expected[1:]
    torch.manual_seed(3)
    assert torch.equal(torch.rand(4), expected[0])
    assert all(torch.equal(v, weights[k]) for k, v in bundle.unet.state_dict().items())
    assert bundle.unet.training and not bundle.text_encoders[0].training and bundle.text_encoders[1].training
    assert [f.name for f in files] == [sample_file_name(0, 0, 0), sample_file_name(0, 0, 1)]
    assert files[0].name == "step-000000_epoch-000_prompt-01.png"
    second = parse_parameters(read_png_parameters(files[1]))
    assert (second.prompt, second.seed, second.steps, second.width) == ("a blue square", 99, 2, 64)
    assert second.extra == {"Training step": "0", "Epoch": "0"} and second.model == "run1"
    first = parse_parameters(read_png_parameters(files[0]))
    assert first.seed == 1234  # the config's seed + prompt index 0
    name, fields = plan.events[0]
    assert name == "samples" and fields["step"] == 0 and [i["prompt_index"] for i in fields["images"]] == [0, 1]
    assert plan.maybe_sample(bundle, 0, 0) == []  # the same step is not sampled twice
    again = _plan(tmp_path)  # a resumed run sees what the first start wrote
    assert 0 in again.sampled and not again.due(0, 0)


def test_samples_use_the_swapped_in_weights_only_when_due(tmp_path, tiny_sdxl_dir):
    """With EMA on the loop passes ``ema.swapped_into``: sampling draws with those weights, and a step with no
    samples due never pays for the swap."""
    import contextlib

    from helpers.models import load_model

    bundle = load_model(tiny_sdxl_dir)
    plan, entered = _plan(tmp_path, every_n_steps=2, at_start=False), []

    @contextlib.contextmanager
    def zeroed_unet():  # a stand-in for EMA weights that changes every image
        saved = {k: v.clone() for k, v in bundle.unet.state_dict().items()}
        entered.append(True)
        with torch.no_grad():
            for p in bundle.unet.parameters():
                p.zero_()
        yield
        bundle.unet.load_state_dict(saved)

    assert plan.maybe_sample(bundle, 1, 0, weights=zeroed_unet) == [] and not entered  # not due: no swap
    plain = plan.maybe_sample(bundle, 2, 0)
    swapped = plan.maybe_sample(bundle, 4, 0, weights=zeroed_unet)
    assert entered == [True]
    from PIL import Image

    # same prompt, seed and settings at both steps: only the weights differ
    assert not np.array_equal(np.asarray(Image.open(plain[0])), np.asarray(Image.open(swapped[0])))


def test_bad_prompts_stop_before_training(tmp_path):
    from helpers.generation.prompts import PromptFileError

    with pytest.raises(PromptFileError, match="sampling.prompts, line 2: --w: width must be a multiple of 8"):
        TrainingSamples(SamplingConfig(prompts=["ok", "bad --w 100"]), tmp_path, resolution=64, run_name="r")


def test_preserve_rng_restores_every_generator():
    from helpers.generation.training_samples import preserve_rng

    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    with preserve_rng(torch.device("cpu")):
        torch.rand(10), random.random(), np.random.rand(3)
    after = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    assert torch.equal(after[0], torch.rand(2)) and after[1:] == (random.random(), np.random.rand())


@pytest.fixture
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.usefixtures("_fresh_accelerate_state")
def test_sampling_on_gives_the_same_weights_as_sampling_off(tmp_path, tiny_sdxl_dir):
    """The acceptance test: samples at the start, every step and at epoch ends change nothing the run computes."""
    from helpers.training.loop import train
    from helpers.training.progress import read_log
    from tests.test_training_loop import make_dataset, tiny_config

    dataset = make_dataset(tmp_path / "ds")
    common = {"optimizer.train_text_encoder": True, "data.flip": True, "objective.noise_offset": 0.05}
    off = train(tiny_config(tiny_sdxl_dir, dataset, **common), tmp_path / "off", show_progress=False)
    on_cfg = tiny_config(tiny_sdxl_dir, dataset, **common, **{
        "sampling.prompts": ["a red thing --s 2", "a blue thing --ss DDIM --s 2"], "sampling.every_n_steps": 1})
    on = train(on_cfg, tmp_path / "on", show_progress=False)
    a, b = _weights(off["final"]), _weights(on["final"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_log(tmp_path / "on" / "log.jsonl") if r.get("event") == "samples"]
    assert steps == list(range(0, on["steps"] + 1))  # the base model at step 0, then every step
    names = sorted(p.name for p in (tmp_path / "on" / "samples").glob("*.png"))
    assert names[:2] == ["step-000000_epoch-000_prompt-01.png", "step-000000_epoch-000_prompt-02.png"]
    assert names[-1] == f"step-{on['steps']:06d}_epoch-002_prompt-02.png"
    assert not list((tmp_path / "off" / "samples").glob("*.png"))


@pytest.mark.usefixtures("_fresh_accelerate_state")
def test_resume_does_not_sample_a_step_again(tmp_path, tiny_sdxl_dir):
    from helpers.training.loop import train
    from helpers.training.progress import read_log
    from tests.test_training_loop import make_dataset, tiny_config

    dataset = make_dataset(tmp_path / "ds")
    sampling = {"sampling.prompts": ["a red thing --s 2"], "sampling.every_n_steps": 1, "saving.state_every_n_steps": 2}
    train(tiny_config(tiny_sdxl_dir, dataset, max_steps=2, **sampling), tmp_path / "r", show_progress=False)
    first = (tmp_path / "r" / "samples" / "step-000002_epoch-001_prompt-01.png").stat().st_mtime_ns
    train(tiny_config(tiny_sdxl_dir, dataset, max_steps=4, **sampling), tmp_path / "r", resume="latest",
          show_progress=False)
    steps = [r["step"] for r in read_log(tmp_path / "r" / "log.jsonl") if r.get("event") == "samples"]
    assert steps == [0, 1, 2, 3, 4]  # step 2 (where the state was) is not sampled again after the resume
    assert (tmp_path / "r" / "samples" / "step-000002_epoch-001_prompt-01.png").stat().st_mtime_ns == first


def test_monitor_shows_a_row_per_prompt_over_time(tmp_path):
    """The notebook 04 panel: built from the log's samples events, each prompt's images in one row, by step."""
    from PIL import Image

    from helpers.training.progress import RunMonitor
    from helpers.ui.monitor import TrainingMonitor
    from helpers.workspace import RunPaths
    from tests.pictures import assert_picture, ink

    run = RunPaths(tmp_path / "run").create()
    writer = RunMonitor(run, show_bar=False)
    colours = {(0, 0): (255, 0, 0), (0, 1): (0, 0, 255), (5, 0): (0, 255, 0), (5, 1): (255, 255, 0)}
    for step in (0, 5):
        images = []
        for index in (0, 1):
            name = sample_file_name(step, step and 1, index)
            Image.new("RGB", (64, 64), colours[(step, index)]).save(run.samples / name)
            images.append({"file": name, "prompt_index": index, "prompt": f"prompt {index + 1}"})
        writer.event("samples", step=step, epoch=step and 1, images=images)
    monitor = TrainingMonitor(run)
    monitor.refresh()
    assert monitor.samples.layout.display == ""
    picture = assert_picture(monitor.samples.value)
    assert picture.width > 2 * 160 and picture.height > 2 * 160  # two rounds across, two prompts down
    for colour in colours.values():
        assert ink(picture, colour) > 100 * 100  # every image of every round is on it
    red_x = [x for x in range(picture.width) if picture.getpixel((x, picture.height // 2 - 100)) == (255, 0, 0)]
    green_x = [x for x in range(picture.width) if picture.getpixel((x, picture.height // 2 - 100)) == (0, 255, 0)]
    assert red_x and green_x and max(red_x) < min(green_x)  # prompt 1 at the start, then at step 5, left to right
