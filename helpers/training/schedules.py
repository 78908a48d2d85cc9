"""Learning-rate schedules over a run, and multi-stage runs (resolution or learning rates that change at an epoch).

A run is one or more stages (``[[stages]]`` in the config: epochs each, optionally a new resolution and new
per-model learning rates; hyperfusion: 10 epochs at 768², then 6 at 1024² with the text-encoder LR dropped
from 1e-6 to 1e-7). ``RunPlan`` knows where each stage starts in epochs and optimizer steps;
``LearningRateSchedule`` sets every parameter group's LR each step to its stage's base LR × the schedule
multiplier (``optim.lr_multiplier``), so the schedule's shape spans the whole run while the optimizer and its
state carry on across stages.

Resume policy: the config wins. A resumed run takes its learning rates from the config it is started with
(the saved schedule only supplies the step count); when they differ from the saved ones,
``LearningRateSchedule.changes_since`` lists them and the loop logs a ``learning_rate_changed`` event and a
warning, so lowering the LR after a NaN and resuming does what it says.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass

import torch

from helpers.config import option
from helpers.training.optim import lr_multiplier


@dataclass
class StageConfig:
    """One stage of a multi-stage run: its epochs, and what differs from the run's settings (empty = same)."""

    epochs: int = option(1, min=1, max=100_000, help="epochs in this stage (the stages' epochs add up to the "
                         "run's epochs)")
    resolution: int | None = option(None, min=64, max=4096, unit="px", help="training resolution in this "
                                    "stage; empty = data.resolution")
    learning_rate: float | None = option(None, min=0.0, max=10.0, help="U-Net learning rate from this stage on; "
                                         "empty = optimizer.learning_rate")
    learning_rate_te1: float | None = option(None, min=0.0, max=10.0, help="text encoder 1 learning rate in "
                                             "this stage; empty = optimizer's")
    learning_rate_te2: float | None = option(None, min=0.0, max=10.0, help="text encoder 2 learning rate in "
                                             "this stage; empty = optimizer's")


def stage_problems(stages: list[StageConfig], *, epochs: int, bucket_step: int,
                   trained_groups: set[str]) -> dict[str, str]:
    """Field problems of a stage list (keys like ``stages[1].resolution``), found before anything loads."""
    out: dict[str, str] = {}
    if stages and sum(s.epochs for s in stages) != epochs:
        listed = " + ".join(str(s.epochs) for s in stages)
        out["stages"] = (f"the stages' epochs add up to {listed} = {sum(s.epochs for s in stages)}, but epochs "
                         f"is {epochs}: make them agree")
    for index, stage in enumerate(stages):
        if stage.resolution is not None and stage.resolution % bucket_step:
            out[f"stages[{index}].resolution"] = (f"{stage.resolution} is not divisible by the bucket step "
                                                   f"{bucket_step}")
        for group in ("te1", "te2"):
            lr = getattr(stage, f"learning_rate_{group}")
            if lr and group not in trained_groups:
                out[f"stages[{index}].learning_rate_{group}"] = (
                    f"{group} is not trained in this run (train_text_encoder off or its LR is 0), so a stage "
                    "cannot start training it: train it from the start with a small LR instead")
    return out


def stage_learning_rates(stage: StageConfig, groups: list[str], *, unet: float, te1: float | None,
                         te2: float | None) -> dict[str, float]:
    """The base LR of each trained group in ``stage``: the stage's own value, else the run's; a text encoder
    with no LR of its own follows the U-Net's, the stage's U-Net LR included."""
    unet_lr = unet if stage.learning_rate is None else stage.learning_rate
    run_level = {"te1": te1, "te2": te2}
    out = {}
    for group in groups:
        own = None if group == "unet" else getattr(stage, f"learning_rate_{group}")
        out[group] = unet_lr if group == "unet" else own if own is not None else (
            run_level[group] if run_level[group] is not None else unet_lr)
    return out


@dataclass
class RunPlan:
    """Where each stage starts, in epochs and optimizer steps, and the base learning rates it trains with."""

    epochs: list[int]
    steps_per_epoch: list[int]
    learning_rates: list[dict[str, float]]

    @property
    def total_steps(self) -> int:
        return sum(e * s for e, s in zip(self.epochs, self.steps_per_epoch, strict=True))

    def stage_of_epoch(self, epoch: int) -> int:
        starts = [sum(self.epochs[:i]) for i in range(len(self.epochs))]
        return max(0, bisect.bisect_right(starts, epoch) - 1)

    def first_step(self, stage: int) -> int:
        return sum(e * s for e, s in zip(self.epochs[:stage], self.steps_per_epoch[:stage], strict=True))

    def stage_of_step(self, step: int) -> int:
        starts = [self.first_step(i) for i in range(len(self.epochs))]
        return max(0, bisect.bisect_right(starts, step) - 1)


class LearningRateSchedule:
    """Sets each param group's ``lr`` to (its stage's base LR) × (the schedule's multiplier) at every step.

    Like a ``torch.optim.lr_scheduler.LambdaLR`` stepped after each optimizer step, but the base LR may change
    at stage boundaries and comes from the config on resume. Its state is the step count (plus the base LRs
    it used, to report changes). Adafactor's relative-step groups (``lr`` None) are left alone.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, plan: RunPlan, schedule: str, *, warmup_steps: int,
                 total_steps: int, cycles: int = 1, power: float = 1.0, end_ratio: float = 0.0):
        self.optimizer, self.plan = optimizer, plan
        self.multiplier = functools.partial(lr_multiplier, schedule=schedule, warmup_steps=warmup_steps,
                                            total_steps=total_steps, cycles=cycles, power=power,
                                            end_ratio=end_ratio)
        self.step_count = 0
        self.apply()

    def base_learning_rates(self, step: int | None = None) -> dict[str, float]:
        return self.plan.learning_rates[self.plan.stage_of_step(self.step_count if step is None else step)]

    def apply(self) -> None:
        base, factor = self.base_learning_rates(), self.multiplier(self.step_count)
        for group in self.optimizer.param_groups:
            if group.get("lr") is not None:
                group["lr"] = base[group["name"]] * factor

    def step(self) -> None:
        self.step_count += 1
        self.apply()

    def get_last_lr(self) -> list[float]:
        return [g.get("lr") or 0.0 for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step": self.step_count, "base_learning_rates": self.base_learning_rates()}

    def load_state_dict(self, state: dict) -> None:
        # a LambdaLR state (states saved before stages existed) counts steps in last_epoch
        self.step_count = int(state["step"] if "step" in state else state["last_epoch"])
        self.apply()

    def changes_since(self, state: dict) -> dict[str, tuple[float, float]]:
        """{group: (saved base LR, config's base LR)} where the config now differs from a saved state."""
        saved = state.get("base_learning_rates")
        if saved is None and "base_lrs" in state:  # LambdaLR: base LRs by group position
            names = [g.get("name", str(i)) for i, g in enumerate(self.optimizer.param_groups)]
            saved = dict(zip(names, state["base_lrs"], strict=False))
        current = self.base_learning_rates(int(state.get("step", state.get("last_epoch", 0))))
        return {name: (saved[name], lr) for name, lr in current.items()
                if saved and name in saved and saved[name] is not None and saved[name] != lr}
