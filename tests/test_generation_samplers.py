"""Samplers by A1111 / kohya names, v-prediction and zero-terminal-SNR scheduling, sampling without NaN."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.generation.samplers import SAMPLER_NAMES, SamplerError, find_sampler, make_scheduler
from helpers.models.export import standard_scheduler_config


@pytest.mark.parametrize("name, expected, cls", [
    ("Euler a", "Euler a", "EulerAncestralDiscreteScheduler"),
    ("k_euler_a", "Euler a", "EulerAncestralDiscreteScheduler"),
    ("euler", "Euler", "EulerDiscreteScheduler"),
    ("DPM++ 2M Karras", "DPM++ 2M Karras", "DPMSolverMultistepScheduler"),
    ("dpmpp_2m_karras", "DPM++ 2M Karras", "DPMSolverMultistepScheduler"),
    ("dpmsolver++", "DPM++ 2M", "DPMSolverMultistepScheduler"),
    ("ddim", "DDIM", "DDIMScheduler"),
    ("UniPC", "UniPC", "UniPCMultistepScheduler"),
])
def test_names_map_to_schedulers(name, expected, cls):
    assert find_sampler(name).name == expected
    sched = make_scheduler(name, standard_scheduler_config("epsilon"), "v_prediction")
    assert type(sched).__name__ == cls
    assert sched.config.prediction_type == "v_prediction" and sched.config.beta_schedule == "scaled_linear"
    assert sched.config.get("use_karras_sigmas", False) == expected.endswith("Karras")


def test_unknown_sampler_lists_the_choices():
    with pytest.raises(SamplerError) as exc:
        find_sampler("DPM++ 3M SDE")
    assert "unknown sampler 'DPM++ 3M SDE'" in str(exc.value) and "DPM++ 2M Karras" in str(exc.value)


def test_zero_terminal_snr_schedule():
    sched = make_scheduler("Euler", standard_scheduler_config("v_prediction"), "v_prediction", zero_terminal_snr=True)
    sched.set_timesteps(10)
    assert sched.config.rescale_betas_zero_snr and int(sched.timesteps[0]) == 999  # starts at pure noise
    with pytest.raises(SamplerError, match="cannot sample a zero-terminal-SNR model.*Euler a"):
        make_scheduler("Heun", standard_scheduler_config("v_prediction"), "v_prediction", zero_terminal_snr=True)


@pytest.fixture(scope="module")
def v_generator(tiny_sd15_v_dir):
    from helpers.generation.pipeline import ImageGenerator
    from helpers.models import load_model

    return ImageGenerator(load_model(tiny_sd15_v_dir), model_name="tiny-v")


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_v_prediction_samples_without_nan(v_generator, sampler):
    from helpers.generation.pipeline import ImageSettings

    assert v_generator.prediction == "v_prediction"
    settings = ImageSettings(prompt="a red square", sampler=sampler, steps=4, seed=3, width=64, height=64,
                             rescale_cfg=0.7)
    (plain,) = v_generator.generate(settings)  # a NaN anywhere raises GenerationError before an image exists
    pixels = np.asarray(plain.image)
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0
    if sampler in ("Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "UniPC"):
        v_generator.zero_terminal_snr = True
        try:
            (ztsnr,) = v_generator.generate(settings)
        finally:
            v_generator.zero_terminal_snr = False
        assert "Noise Schedule: Zero Terminal SNR" in ztsnr.infotext
        assert not np.array_equal(np.asarray(ztsnr.image), pixels)  # a different schedule, a different image
