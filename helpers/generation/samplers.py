"""Samplers by the names people know (A1111's), made from the model's own noise schedule.

Owns the name table (A1111 names, plus kohya sd-scripts' ``--ss`` / ``--sample_sampler`` spellings and
ComfyUI-style ones as aliases) and ``make_scheduler``, which builds the diffusers scheduler from the
training noise schedule of the loaded model (betas, ``steps_offset``, spacing) with its prediction type.
Mapping follows diffusers' "A1111/k-diffusion -> diffusers" table in its scheduler docs.

Zero-terminal-SNR models (v-prediction fine-tunes such as the hyperfusion card in ``seeds/``) need the betas
rescaled so the last step is pure noise and "trailing" timestep spacing so sampling starts there; source:
Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed" §3.1/§3.3. Only samplers whose
diffusers scheduler supports ``rescale_betas_zero_snr`` are allowed for them.
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any


class SamplerError(ValueError):
    """An unknown sampler name, or a sampler that cannot serve this model; the message lists what can."""


@dataclass(frozen=True)
class Sampler:
    """One sampler: the A1111 name, the diffusers scheduler class and the config changes it needs."""

    name: str
    scheduler: str
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", aliases=("euler_a", "k_euler_a", "euler_ancestral")),
    Sampler("Euler", "EulerDiscreteScheduler", aliases=("k_euler",)),
    Sampler("Heun", "HeunDiscreteScheduler", aliases=("k_heun",)),
    Sampler("LMS", "LMSDiscreteScheduler", aliases=("k_lms",)),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", aliases=("dpm_2_a", "k_dpm_2_a", "dpm2_ancestral")),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
            aliases=("dpmsolver++", "dpmpp_2m", "k_dpmpp_2m")),
    Sampler("DPM++ 2M Karras", "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
            aliases=("dpmpp_2m_karras", "k_dpmpp_2m_karras")),
    Sampler("DDIM", "DDIMScheduler", {"set_alpha_to_one": False}, aliases=("ddim",)),
    Sampler("UniPC", "UniPCMultistepScheduler", aliases=("unipc", "uni_pc")),
)
SAMPLER_NAMES = tuple(s.name for s in SAMPLERS)


def _key(name: str) -> str:
    """Spelling-insensitive key: case, spaces, '_', '-' and '++' vs 'pp' do not matter."""
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("++", "pp"))


_BY_KEY = {_key(alias): s for s in SAMPLERS for alias in (s.name, *s.aliases)}


def find_sampler(name: str) -> Sampler:
    """The sampler called ``name`` (A1111, kohya or ComfyUI spelling); unknown names list the choices."""
    found = _BY_KEY.get(_key(str(name)))
    if found is not None:
        return found
    close = difflib.get_close_matches(str(name), list(SAMPLER_NAMES), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise SamplerError(f"unknown sampler {name!r}{hint}; choose one of: {', '.join(SAMPLER_NAMES)}")


def make_scheduler(name: str, base_config: dict[str, Any], prediction: str, *, zero_terminal_snr: bool = False):
    """A diffusers scheduler for sampler ``name`` on the model's noise schedule ``base_config``."""
    import diffusers

    sampler = find_sampler(name)
    cls = getattr(diffusers, sampler.scheduler)
    accepted = inspect.signature(cls.__init__).parameters
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_") and k in accepted}
    config.update(sampler.options)
    config["prediction_type"] = prediction
    if zero_terminal_snr:
        if "rescale_betas_zero_snr" not in accepted:
            able = [s.name for s in SAMPLERS if "rescale_betas_zero_snr"
                    in inspect.signature(getattr(diffusers, s.scheduler).__init__).parameters]
            raise SamplerError(f"sampler {sampler.name!r} cannot sample a zero-terminal-SNR model (its scheduler "
                               f"has no zero-SNR schedule); use one of: {', '.join(able)}")
        # the last training step is pure noise: sampling must start exactly there (Lin et al. 2023 §3.3)
        config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return cls.from_config(config)
