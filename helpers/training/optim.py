"""Optimizers for full fine-tuning, and the learning rate each parameter group actually gets.

AdamW (torch); AdamW8bit, PagedAdamW8bit, Lion and Lion8bit (bitsandbytes: 8-bit states are ~1/4 of the
32-bit ones; "paged" states move to CPU memory under pressure; all run on CPU too); Prodigy (prodigyopt:
estimates the step size d, so the learning rate is a multiplier, usually 1); ADOPT (here: torch has none and the
reference package needs private torch internals); Adafactor (transformers) with a fixed learning rate or in its
relative-step mode, where it picks its own. One parameter group per trained model so the text encoders get
their own learning rates (0 = frozen: not in any group). Learning-rate schedules live in
``training.schedules``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from helpers.config import option

OptimizerName = Literal["AdamW", "AdamW8bit", "PagedAdamW8bit", "Lion", "Lion8bit", "Prodigy", "ADOPT",
                        "Adafactor"]
SchedulerName = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]

# each optimizer's own (β1, β2, ε) when the config leaves them empty (their papers' / packages' defaults)
DEFAULT_BETAS_EPS = {"AdamW": (0.9, 0.999, 1e-8), "AdamW8bit": (0.9, 0.999, 1e-8),
                     "PagedAdamW8bit": (0.9, 0.999, 1e-8), "Lion": (0.9, 0.99, 0.0), "Lion8bit": (0.9, 0.99, 0.0),
                     "Prodigy": (0.9, 0.999, 1e-8), "ADOPT": (0.9, 0.9999, 1e-6), "Adafactor": (0.0, 0.0, 0.0)}


@dataclass
class OptimizerConfig:
    """How the weights move."""

    optimizer: OptimizerName = option("AdamW", help="AdamW; AdamW8bit saves ~75% of optimizer memory "
                                      "(PagedAdamW8bit also pages it to CPU: ~2x slower, the guide says); Lion/"
                                      "Lion8bit: sign updates, use ~10x lower LR; Prodigy: adapts the step, "
                                      "LR = 1; ADOPT; Adafactor")
    learning_rate: float = option(1e-6, min=0.0, max=10.0, help="U-Net learning rate (the guide: 1e-6 for SDXL "
                                  "with AdamW, 1e-7 with Lion; Prodigy: 1)")
    train_text_encoder: bool = option(False, help="also train the text encoder(s)")
    learning_rate_te1: float | None = option(None, min=0.0, max=10.0, help="text encoder 1 learning rate; "
                                             "empty = U-Net's, 0 = frozen")
    learning_rate_te2: float | None = option(None, min=0.0, max=10.0, help="SDXL text encoder 2 learning rate; "
                                             "empty = U-Net's, 0 = frozen")
    lr_scheduler: SchedulerName = option("constant", help="how the learning rate changes over the run "
                                         "(diffusers' schedules, step for step)")
    lr_warmup_steps: int = option(0, min=0, max=1_000_000, help="optimizer steps of linear warm-up from 0",
                                  group="advanced")
    lr_cycles: int = option(1, min=1, max=10_000, help="cosine_with_restarts: number of cosine cycles (hard "
                            "restarts) over the run", group="advanced")
    lr_power: float = option(1.0, min=0.01, max=100.0, help="polynomial: decay power (1 = linear)",
                             group="advanced")
    lr_end_ratio: float = option(0.0, min=0.0, max=1.0, help="polynomial: final LR as a fraction of each "
                                 "group's LR (sd-scripts' fixed lr_end 1e-7 is 0.1 at LR 1e-6)", group="advanced")
    gradient_accumulation_steps: int = option(1, min=1, max=1024, help="batches per optimizer step")
    max_grad_norm: float = option(1.0, min=0.0, max=1e6, help="clip the gradient norm (0 = off)", group="advanced")
    weight_decay: float = option(0.01, min=0.0, max=10.0, help="decoupled weight decay", group="advanced")
    adam_beta1: float | None = option(None, min=0.0, max=1.0, help="β1 (momentum); empty = the optimizer's "
                                      "own (0.9 for all)", group="advanced")
    adam_beta2: float | None = option(None, min=0.0, max=1.0, help="β2; empty = the optimizer's own (AdamW/"
                                      "Prodigy 0.999, Lion 0.99, ADOPT 0.9999)", group="advanced")
    adam_epsilon: float | None = option(None, min=0.0, max=1.0, help="ε; empty = the optimizer's own "
                                        "(1e-8; ADOPT 1e-6)", group="advanced")
    prodigy_d_coef: float = option(1.0, min=0.0, max=1000.0, help="Prodigy: multiplies the estimated step "
                                   "size d (< 1 = more careful)", group="advanced")
    prodigy_d0: float = option(1e-6, min=0.0, max=1.0, help="Prodigy: initial estimate of d", group="advanced")
    prodigy_safeguard_warmup: bool = option(False, help="Prodigy: keep d from growing too fast during LR "
                                            "warm-up (recommended with warm-up)", group="advanced")
    prodigy_use_bias_correction: bool = option(False, help="Prodigy: Adam's bias correction",
                                               group="advanced")
    adafactor_relative_step: bool = option(False, help="Adafactor picks its own LR (min(1e-2, 1/√step) × "
                                           "parameter scale): learning rates and schedule are ignored",
                                           group="advanced")
    adafactor_warmup_init: bool = option(False, help="Adafactor relative step: start from 1e-6·step instead "
                                         "of 1e-2", group="advanced")

    def problems(self) -> dict[str, str]:
        """Field problems between this section's own settings (keys without the section prefix)."""
        out: dict[str, str] = {}
        if self.lr_scheduler == "constant" and self.lr_warmup_steps:
            out["lr_warmup_steps"] = "the constant schedule has no warm-up: use constant_with_warmup"
        if self.optimizer == "Adafactor" and self.adafactor_relative_step and self.lr_scheduler != "constant":
            out["lr_scheduler"] = ("Adafactor's relative step sets the learning rate itself: use the constant "
                                   "schedule, or turn off adafactor_relative_step")
        if self.optimizer == "Prodigy" and self.learning_rate > 2.0:
            out["learning_rate"] = "Prodigy's learning rate multiplies its own step size: use about 1"
        return out

    def optimizer_arguments(self) -> dict:
        """Keyword arguments for ``build_optimizer`` (betas/ε filled with the optimizer's own defaults)."""
        b1, b2, eps = DEFAULT_BETAS_EPS[self.optimizer]
        return {"weight_decay": self.weight_decay,
                "betas": (b1 if self.adam_beta1 is None else self.adam_beta1,
                          b2 if self.adam_beta2 is None else self.adam_beta2),
                "eps": eps if self.adam_epsilon is None else self.adam_epsilon,
                "d_coef": self.prodigy_d_coef, "d0": self.prodigy_d0,
                "safeguard_warmup": self.prodigy_safeguard_warmup,
                "use_bias_correction": self.prodigy_use_bias_correction,
                "relative_step": self.adafactor_relative_step, "warmup_init": self.adafactor_warmup_init}


def build_optimizer(groups: list[dict], name: str, *, weight_decay: float, betas: tuple[float, float],
                    eps: float, d_coef: float = 1.0, d0: float = 1e-6, safeguard_warmup: bool = False,
                    use_bias_correction: bool = False, relative_step: bool = False,
                    warmup_init: bool = False) -> torch.optim.Optimizer:
    """The optimizer over parameter groups ``[{"params": [...], "lr": x, "name": ...}]``."""
    if name == "AdamW":
        return torch.optim.AdamW(groups, weight_decay=weight_decay, betas=betas, eps=eps, foreach=True)
    if name in ("AdamW8bit", "PagedAdamW8bit", "Lion", "Lion8bit"):
        import bitsandbytes as bnb

        cls = getattr(bnb.optim, name)
        extra = {} if name.startswith("Lion") else {"eps": eps}
        return cls(groups, weight_decay=weight_decay, betas=betas, **extra)
    if name == "Prodigy":
        from prodigyopt import Prodigy

        return Prodigy(groups, betas=betas, eps=eps, weight_decay=weight_decay, d_coef=d_coef, d0=d0,
                       safeguard_warmup=safeguard_warmup, use_bias_correction=use_bias_correction)
    if name == "ADOPT":
        return Adopt(groups, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "Adafactor":
        from transformers.optimization import Adafactor

        if relative_step:  # the LR comes from the step count and each parameter's scale
            groups = [{k: v for k, v in g.items() if k != "lr"} for g in groups]
            return Adafactor(groups, lr=None, relative_step=True, scale_parameter=True, warmup_init=warmup_init,
                             weight_decay=weight_decay)
        # fixed-LR recipe (sd-scripts docs/train_SDXL-en.md): no relative step, no parameter scaling
        return Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OptimizerName.__args__)}, got {name!r}")


def effective_learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The step size each group really uses: Prodigy's d·lr, Adafactor's relative step, else the group's lr."""
    out, inner = {}, getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
    for index, group in enumerate(inner.param_groups):
        name = group.get("name", str(index))
        if "d" in group and "d_coef" in group:  # Prodigy
            out[name] = float(group["d"] * group["lr"])
        elif group.get("relative_step"):
            state = next((inner.state[p] for p in group["params"] if p in inner.state), None)
            out[name] = float(type(inner)._get_lr(group, state)) if state else 0.0
        else:
            out[name] = group["lr"]
    return out


class Adopt(torch.optim.Optimizer):
    """ADOPT: Adam that normalises the gradient by the second moment of the PREVIOUS steps, then takes momentum.

    Source: Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any β2 with the Optimal Rate",
    arXiv:2411.02853, Algorithm 2 with the clipped variant of its reference code (clip at step^¼):
    step 0 only sets v = g²; then m ← β1·m + (1 − β1)·clip(g / max(√v, ε)), θ ← θ − lr·m (decoupled weight
    decay θ ← θ − lr·wd·θ first), v ← β2·v + (1 − β2)·g².
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.9999), eps: float = 1e-6,
                 weight_decay: float = 0.0, clip: Callable[[int], float] | None = lambda step: step ** 0.25):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.clip = clip

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = p.grad.float(), self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                step = int(state["step"].item())
                state["step"] += 1
                if step == 0:
                    state["exp_avg_sq"].addcmul_(grad, grad)
                    continue
                normed = grad / state["exp_avg_sq"].sqrt().clamp(min=group["eps"])
                if self.clip is not None:
                    bound = self.clip(step)
                    normed.clamp_(-bound, bound)
                state["exp_avg"].lerp_(normed, 1 - beta1)
                update = state["exp_avg"] + group["weight_decay"] * p.float()
                p.add_((-group["lr"] * update).to(p.dtype))
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        return loss


def lr_multiplier(step: int, schedule: str, warmup_steps: int, total_steps: int, *, cycles: int = 1,
                  power: float = 1.0, end_ratio: float = 0.0) -> float:
    """Learning-rate factor at optimizer step ``step`` (0-based): linear warm-up from 0, then the schedule.

    Source: diffusers ``optimization.get_scheduler`` (= transformers'), value for value: ``cosine`` is a half
    cosine to 0, ``cosine_with_restarts`` ``cycles`` hard-restarted cosines, ``polynomial`` decays to
    ``end_ratio`` (diffusers' ``lr_end / lr_init``) with ``power``.
    """
    if schedule == "constant":
        return 1.0
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if schedule == "constant_with_warmup":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if schedule == "cosine_with_restarts":
        return 0.0 if progress >= 1.0 else max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))
    if schedule == "polynomial":
        if step > total_steps:
            return end_ratio
        return (1.0 - end_ratio) * (1.0 - progress) ** power + end_ratio
    raise ValueError(f"lr_scheduler must be one of {', '.join(SchedulerName.__args__)}, got {schedule!r}")
