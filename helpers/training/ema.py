"""Exponential moving average (EMA) of the trained weights: the smoothed model saved and sampled instead.

``ExponentialMovingAverage`` keeps an fp32 shadow copy of every trained parameter (on the training device,
or on the CPU to save GPU memory at some speed), updated after optimizer steps: θ_ema ← θ_ema − (1 − β)·
(θ_ema − θ). β follows diffusers' ``EMAModel`` schedule (warm-up, ``start_step`` ~ its ``update_after_step``),
so with ``update_every = 1`` the two agree exactly. Its state (shadows + update count) is part of the training
state, so a resumed run continues the same average. ``swapped_into`` puts the EMA weights into the live modules
for a block (saving a checkpoint, sampling) and puts the trained ones back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch

from helpers.config import option


@dataclass
class EmaConfig:
    """An exponential moving average of the weights (the guide's A100 config: decay 0.9995)."""

    enabled: bool = option(False, help="keep an EMA of the trained weights and save it as the model (needs "
                           "memory for one more fp32 copy of the trained weights)")
    decay: float = option(0.9999, min=0.0, max=1.0, help="β: the average covers roughly the last 1/(1 − β) "
                          "steps (0.9995 ≈ 2,000)")
    warmup: Literal["steps", "power", "off"] = option(
        "steps", help="how β ramps up: 'steps' (1 + t)/(10 + t) (diffusers' default), 'power' 1 − (1 + t)^−p, "
        "'off' = β from the first update", group="advanced")
    warmup_power: float = option(2 / 3, min=0.01, max=10.0, help="p of the 'power' warm-up (2/3 for long "
                                 "runs, 3/4 for short ones)", group="advanced")
    start_step: int = option(0, min=0, max=10_000_000, help="before this optimizer step the EMA just copies "
                             "the weights", group="advanced")
    update_every: int = option(1, min=1, max=10_000, help="update every N optimizer steps (β^N per update, "
                               "so the averaging window stays the same)", group="advanced")
    device: Literal["auto", "cpu"] = option("auto", help="where the EMA copy lives: auto = beside the weights "
                                            "(fast), cpu = saves GPU memory, but each update copies the weights "
                                            "out (SDXL: seconds per update: raise update_every)")
    save_trained_too: bool = option(False, help="also save the raw trained weights beside each EMA model file "
                                    "(<name>-noema.safetensors)")


def ema_decay(update_step: int, decay: float, warmup: str = "steps", power: float = 2 / 3,
              start_step: int = 0) -> float:
    """β for the update at optimizer step ``update_step`` (1-based): 0 (a plain copy) until ``start_step`` + 1,
    then the warm-up, capped at ``decay``.

    Source: diffusers ``training_utils.EMAModel.get_decay`` ((1 + t)/(10 + t), or 1 − (1 + t/γ)^−p with γ = 1,
    Karras et al.'s "power" warm-up), with t = step − start_step − 1.
    """
    t = max(0, update_step - start_step - 1)
    if t <= 0:
        return 0.0
    if warmup == "off":
        return decay
    ramp = 1 - (1 + t) ** -power if warmup == "power" else (1 + t) / (10 + t)
    return min(ramp, decay)


class ExponentialMovingAverage:
    """fp32 shadows of the trainable parameters of named modules (``{"unet": ..., "te1": ...}``)."""

    def __init__(self, modules: dict[str, torch.nn.Module], *, decay: float, warmup: str = "steps",
                 power: float = 2 / 3, start_step: int = 0, update_every: int = 1,
                 device: torch.device | str | None = None):
        self.decay, self.warmup, self.power = decay, warmup, power
        self.start_step, self.update_every = start_step, update_every
        self.params = {f"{m}.{n}": p for m, module in modules.items()
                       for n, p in module.named_parameters() if p.requires_grad}
        self.shadow = {k: p.detach().to(device or p.device, torch.float32, copy=True) for k, p in self.params.items()}
        self.last_decay = 0.0

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """Move the average towards the weights after optimizer step ``step`` (1-based); False when not due."""
        if step % self.update_every:
            return False
        beta = ema_decay(step, self.decay, self.warmup, self.power, self.start_step)
        self.last_decay = beta = beta ** self.update_every
        by_device: dict[torch.device, tuple[list, list]] = {}
        for key, param in self.params.items():
            shadow = self.shadow[key]
            lists = by_device.setdefault(shadow.device, ([], []))
            lists[0].append(shadow)
            lists[1].append(param.detach().to(shadow.device, torch.float32, non_blocking=True))
        for shadows, weights in by_device.values():
            torch._foreach_lerp_(shadows, weights, 1.0 - beta)  # s ← s + (1 − β)(θ − s): one fused kernel per list
        return True

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadows by parameter name (safetensors-ready)."""
        return dict(self.shadow)

    def load_state_dict(self, shadows: dict[str, torch.Tensor]) -> None:
        missing, extra = set(self.shadow) - set(shadows), set(shadows) - set(self.shadow)
        if missing or extra:
            raise ValueError(f"the saved EMA does not match the trained weights ({len(missing)} missing, "
                             f"{len(extra)} unexpected, e.g. {sorted(missing or extra)[:2]}): it was saved by a "
                             "run that trained other models")
        for key, value in shadows.items():
            self.shadow[key].copy_(value)

    @contextlib.contextmanager
    def swapped_into(self, modules: dict[str, torch.nn.Module] | None = None):
        """Inside the block the trained parameters hold the EMA weights (cast to their dtype); after it, the
        trained weights again, bit for bit. ``modules`` defaults to the ones the EMA was built on."""
        params = self.params if modules is None else {
            f"{m}.{n}": p for m, module in modules.items() for n, p in module.named_parameters() if p.requires_grad}
        saved = {}
        with torch.no_grad():
            for key, param in params.items():
                saved[key] = param.detach().to("cpu", copy=True)
                param.copy_(self.shadow[key].to(param.device, param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for key, param in params.items():
                    param.copy_(saved[key].to(param.device))
