"""Optimizers and learning-rate schedules for full fine-tuning.

AdamW (torch), AdamW8bit (bitsandbytes: 8-bit moment states, ~1/4 of AdamW's optimizer memory; runs on CPU
too), Adafactor with a fixed learning rate (transformers). One parameter group per trained model so the text
encoders get their own learning rates (0 = frozen: not in any group). Schedules are one pure multiplier
function under a ``LambdaLR``, so their state saves and resumes exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from helpers.config import option

OptimizerName = Literal["AdamW", "AdamW8bit", "Adafactor"]
SchedulerName = Literal["constant", "constant_with_warmup", "cosine", "linear"]


@dataclass
class OptimizerConfig:
    """How the weights move."""

    optimizer: OptimizerName = option("AdamW", help="AdamW; AdamW8bit (bitsandbytes) saves ~75% of optimizer "
                                      "memory; Adafactor uses a fixed learning rate")
    learning_rate: float = option(1e-6, min=0.0, max=1.0, help="U-Net learning rate (the guide: 1e-6 for SDXL)")
    train_text_encoder: bool = option(False, help="also train the text encoder(s)")
    learning_rate_te1: float | None = option(None, min=0.0, max=1.0, help="text encoder 1 learning rate; "
                                             "empty = U-Net's, 0 = frozen")
    learning_rate_te2: float | None = option(None, min=0.0, max=1.0, help="SDXL text encoder 2 learning rate; "
                                             "empty = U-Net's, 0 = frozen")
    lr_scheduler: SchedulerName = option("constant", help="how the learning rate changes over the run")
    lr_warmup_steps: int = option(0, min=0, max=1_000_000, help="optimizer steps of linear warm-up",
                                  group="advanced")
    gradient_accumulation_steps: int = option(1, min=1, max=1024, help="batches per optimizer step")
    max_grad_norm: float = option(1.0, min=0.0, max=1e6, help="clip the gradient norm (0 = off)", group="advanced")
    weight_decay: float = option(0.01, min=0.0, max=1.0, help="AdamW weight decay", group="advanced")
    adam_beta1: float = option(0.9, min=0.0, max=1.0, help="AdamW β1", group="advanced")
    adam_beta2: float = option(0.999, min=0.0, max=1.0, help="AdamW β2", group="advanced")
    adam_epsilon: float = option(1e-8, min=0.0, max=1.0, help="AdamW ε", group="advanced")


def build_optimizer(groups: list[dict], name: str, *, weight_decay: float, betas: tuple[float, float],
                    eps: float) -> torch.optim.Optimizer:
    """The optimizer over parameter groups ``[{"params": [...], "lr": x, "name": ...}]``."""
    if name == "AdamW":
        return torch.optim.AdamW(groups, weight_decay=weight_decay, betas=betas, eps=eps, foreach=True)
    if name == "AdamW8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, weight_decay=weight_decay, betas=betas, eps=eps)
    if name == "Adafactor":
        from transformers.optimization import Adafactor

        # fixed-LR recipe (sd-scripts docs/train_SDXL-en.md): no relative step, no parameter scaling
        return Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=weight_decay)
    raise ValueError(f"optimizer must be AdamW, AdamW8bit or Adafactor, got {name!r}")


def lr_multiplier(step: int, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor at optimizer step ``step`` (0-based): linear warm-up, then the schedule.

    Source: transformers ``get_{constant,cosine,linear}_schedule_with_warmup``, except that warm-up starts at
    1/(warmup+1) instead of 0 so the first optimizer step is not spent at learning rate 0.
    """
    if schedule != "constant" and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule in ("constant", "constant_with_warmup"):
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    raise ValueError(f"lr_scheduler must be constant, constant_with_warmup, cosine or linear, got {schedule!r}")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int,
                       total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over ``lr_multiplier`` (its state is just the step count)."""
    import functools

    fn = functools.partial(lr_multiplier, schedule=schedule, warmup_steps=warmup_steps, total_steps=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
