"""Optimizers against their papers' update rules, schedules against diffusers' ``get_scheduler``, stages."""

from __future__ import annotations

import pytest
import torch

from helpers.training import optim
from helpers.training.schedules import LearningRateSchedule, RunPlan, StageConfig, stage_learning_rates


def _param(seed=0, n=4096):
    torch.manual_seed(seed)
    return torch.nn.Parameter(torch.randn(n))


def _grads(steps, n=4096, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) for _ in range(steps)]


def _run(opt, p, grads):
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
    return p.detach().clone()


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                                  "polynomial"])
def test_each_schedule_matches_diffusers_step_by_step(name):
    from diffusers.optimization import get_scheduler

    total, warmup = 40, 0 if name == "constant" else 7
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    ref = get_scheduler(name, sgd, num_warmup_steps=warmup, num_training_steps=total, num_cycles=3, power=2.0)
    ours = []
    for step in range(total):
        expected = sgd.param_groups[0]["lr"]
        # diffusers' polynomial decays to lr_end = 1e-7 absolute: 1e-4 of this LR
        factor = optim.lr_multiplier(step, name, warmup, total, cycles=3, power=2.0, end_ratio=1e-4)
        assert 1e-3 * factor == pytest.approx(expected, rel=1e-9, abs=1e-15), (name, step)
        ours.append(factor)
        sgd.step()
        ref.step()
    if name != "constant":
        assert ours[0] == 0.0 and ours[warmup] == pytest.approx(1.0)  # warm-up from 0, as diffusers
    if name == "cosine_with_restarts":
        assert sum(ours[i + 1] > ours[i] + 0.5 for i in range(total - 1)) == 2  # three cycles: two restarts


def test_schedule_sets_stage_learning_rates_per_group_and_resumes():
    params = {name: torch.nn.Parameter(torch.zeros(2)) for name in ("unet", "te1")}
    opt = torch.optim.SGD([{"params": [p], "lr": 0.0, "name": n} for n, p in params.items()])
    # hyperfusion: 10 epochs with TE 1e-6, then 6 epochs with TE 1e-7 (here 3 steps per epoch in stage 1)
    stages = [StageConfig(epochs=10), StageConfig(epochs=6, resolution=1024, learning_rate_te1=1e-7)]
    lrs = [stage_learning_rates(s, ["unet", "te1"], unet=4e-6, te1=1e-6, te2=None) for s in stages]
    plan = RunPlan(epochs=[10, 6], steps_per_epoch=[3, 2], learning_rates=lrs)
    assert plan.total_steps == 42 and plan.first_step(1) == 30
    assert [plan.stage_of_epoch(e) for e in (0, 9, 10, 15)] == [0, 0, 1, 1]
    sched = LearningRateSchedule(opt, plan, "linear", warmup_steps=0, total_steps=plan.total_steps)
    seen = []
    for _ in range(plan.total_steps):
        seen.append([g["lr"] for g in opt.param_groups])
        sched.step()
    assert seen[29][1] == pytest.approx(1e-6 * (42 - 29) / 42) and seen[30][1] == pytest.approx(1e-7 * 12 / 42)
    assert seen[30][0] == pytest.approx(4e-6 * 12 / 42)  # the U-Net keeps its LR across the boundary
    # resume at step 31 into a fresh schedule: same LRs; an edited config LR wins and is reported
    state = {"step": 31, "base_learning_rates": {"unet": 4e-6, "te1": 1e-7}}
    again = LearningRateSchedule(opt, plan, "linear", warmup_steps=0, total_steps=42)
    again.load_state_dict(state)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(seen[31])
    assert again.changes_since(state) == {}
    edited = RunPlan(plan.epochs, plan.steps_per_epoch,
                     [lrs[0], {"unet": 2e-6, "te1": 1e-7}])
    changed = LearningRateSchedule(opt, edited, "linear", warmup_steps=0, total_steps=42)
    changed.load_state_dict(state)
    assert changed.changes_since(state) == {"unet": (4e-6, 2e-6)}
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-6 * 11 / 42)
    # a state written by the old LambdaLR schedule (step in last_epoch, base LRs by position)
    old = {"last_epoch": 31, "base_lrs": [4e-6, 1e-6]}
    changed.load_state_dict(old)
    assert changed.step_count == 31 and changed.changes_since(old) == {"unet": (4e-6, 2e-6), "te1": (1e-6, 1e-7)}


def test_stage_learning_rates_follow_the_unet_unless_set():
    stage = StageConfig(epochs=1, learning_rate=2e-6)
    assert stage_learning_rates(stage, ["unet", "te1", "te2"], unet=1e-6, te1=None, te2=5e-7) == {
        "unet": 2e-6, "te1": 2e-6, "te2": 5e-7}
    assert stage_learning_rates(StageConfig(epochs=1), ["unet", "te1"], unet=1e-6, te1=None, te2=None) == {
        "unet": 1e-6, "te1": 1e-6}


# ---------------------------------------------------------------- optimizers


def test_lion_follows_the_paper_update():
    lr, wd, (b1, b2) = 1e-2, 0.1, (0.9, 0.99)
    p = _param()
    opt = optim.build_optimizer([{"params": [p], "lr": lr, "name": "unet"}], "Lion", weight_decay=wd,
                                betas=(b1, b2), eps=0.0)
    grads = _grads(5)
    theta, m = p.detach().clone(), torch.zeros_like(p)
    for g in grads:  # Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2
        c = b1 * m + (1 - b1) * g
        theta = theta * (1 - lr * wd) - lr * torch.sign(c)
        m = b2 * m + (1 - b2) * g
    assert torch.allclose(_run(opt, p, grads), theta, atol=1e-6)


def test_adopt_follows_the_paper_update():
    lr, wd, (b1, b2), eps = 1e-2, 0.01, (0.9, 0.9999), 1e-6
    p = _param(n=64)
    opt = optim.build_optimizer([{"params": [p], "lr": lr, "name": "unet"}], "ADOPT", weight_decay=wd,
                                betas=(b1, b2), eps=eps)
    assert isinstance(opt, optim.Adopt)
    grads = _grads(6, n=64)
    grads[3] = grads[3] * 100  # a spike: clipped at step^¼
    theta, m, v = p.detach().clone().double(), torch.zeros(64).double(), None
    for k, g in enumerate(g.double() for g in grads):
        if k == 0:
            v = g * g
            continue
        normed = (g / v.sqrt().clamp(min=eps)).clamp(-k ** 0.25, k ** 0.25)
        m = b1 * m + (1 - b1) * normed
        theta = theta - lr * wd * theta - lr * m
        v = b2 * v + (1 - b2) * g * g
    assert torch.allclose(_run(opt, p, grads).double(), theta, atol=1e-6)


@pytest.mark.parametrize("name", ["Lion8bit", "PagedAdamW8bit", "AdamW8bit"])
def test_bitsandbytes_optimizers_keep_8bit_state(name):
    import bitsandbytes as bnb

    p = _param()
    opt = optim.build_optimizer([{"params": [p], "lr": 1e-3, "name": "unet"}], name, weight_decay=0.0,
                                betas=(0.9, 0.99), eps=1e-8)
    assert type(opt) is getattr(bnb.optim, name)
    before = p.detach().clone()
    _run(opt, p, _grads(2))
    assert not torch.equal(before, p.detach())
    assert any(t.dtype == torch.uint8 for t in opt.state[p].values() if torch.is_tensor(t))


def test_prodigy_options_reach_the_optimizer_and_change_its_steps():
    moved = {}
    for d_coef, safeguard in [(1.0, False), (0.25, False), (1.0, True)]:
        p = _param(n=256)
        start = p.detach().clone()
        # lr 0.5 as during a warm-up, where the safeguard matters
        opt = optim.build_optimizer([{"params": [p], "lr": 0.5, "name": "unet"}], "Prodigy", weight_decay=0.0,
                                    betas=(0.9, 0.999), eps=1e-8, d_coef=d_coef, d0=1e-6,
                                    safeguard_warmup=safeguard, use_bias_correction=False)
        group = opt.param_groups[0]
        assert (group["d_coef"], group["safeguard_warmup"], group["d0"]) == (d_coef, safeguard, 1e-6)
        for _ in range(20):  # a quadratic bowl: Prodigy's step-size estimate d grows towards the distance
            p.grad = p.detach() - 3.0
            opt.step()
        moved[(d_coef, safeguard)] = (p.detach() - start).norm().item()
        assert optim.effective_learning_rates(opt)["unet"] == pytest.approx(group["d"] * 0.5)
    assert moved[(0.25, False)] < 0.2 * moved[(1.0, False)]  # a smaller d_coef keeps d (and the steps) small
    assert moved[(1.0, True)] < 0.2 * moved[(1.0, False)]  # the safeguard holds d back while lr < 1


def test_adafactor_relative_step_ignores_the_learning_rate():
    finals = {}
    for relative in (True, False):
        for lr in (1e-5, 1e-2):
            p = _param(n=256)
            opt = optim.build_optimizer([{"params": [p], "lr": lr, "name": "unet"}], "Adafactor",
                                        weight_decay=0.0, betas=(0.0, 0.0), eps=0.0, relative_step=relative)
            finals[(relative, lr)] = _run(opt, p, _grads(3, n=256))
            if relative:
                rms = (p.detach().square().mean().sqrt()).item()
                assert optim.effective_learning_rates(opt)["unet"] == pytest.approx(1e-2 * rms, rel=1e-2)
    assert torch.equal(finals[(True, 1e-5)], finals[(True, 1e-2)])
    assert not torch.equal(finals[(False, 1e-5)], finals[(False, 1e-2)])


def test_optimizer_defaults_fill_empty_betas():
    from helpers.training.optim import OptimizerConfig

    lion = OptimizerConfig(optimizer="Lion").optimizer_arguments()
    assert lion["betas"] == (0.9, 0.99)
    adopt = OptimizerConfig(optimizer="ADOPT", adam_beta2=0.99).optimizer_arguments()
    assert adopt["betas"] == (0.9, 0.99) and adopt["eps"] == 1e-6
    prodigy = OptimizerConfig(optimizer="Prodigy", prodigy_d_coef=0.5, prodigy_d0=1e-5, prodigy_safeguard_warmup=True,
                              prodigy_use_bias_correction=True, weight_decay=0.1).optimizer_arguments()
    assert {k: prodigy[k] for k in ("d_coef", "d0", "safeguard_warmup", "use_bias_correction", "weight_decay")} == {
        "d_coef": 0.5, "d0": 1e-5, "safeguard_warmup": True, "use_bias_correction": True, "weight_decay": 0.1}
    adafactor = OptimizerConfig(optimizer="Adafactor", adafactor_relative_step=True,
                                adafactor_warmup_init=True).optimizer_arguments()
    assert adafactor["relative_step"] and adafactor["warmup_init"]
    with pytest.raises(ValueError, match="optimizer must be one of"):
        optim.build_optimizer([{"params": [_param()], "lr": 1.0}], "AdaCoor", weight_decay=0.0, betas=(0.9, 0.9),
                              eps=1e-8)


def test_bad_optimizer_and_schedule_settings_name_the_field():
    from helpers.config import ConfigError, build_config, validate
    from helpers.training.config import TrainConfig

    with pytest.raises(ConfigError) as err:
        build_config(TrainConfig, overrides={"optimizer": {"optimizer": "AdaCoor"}})
    assert "optimizer.optimizer" in err.value.problems and "'Lion8bit'" in err.value.problems["optimizer.optimizer"]
    with pytest.raises(ConfigError) as err:
        build_config(TrainConfig, overrides={"optimizer": {"lr_scheduler": "cosine_with_restarts", "lr_cycles": 0}})
    assert "optimizer.lr_cycles" in err.value.problems
    cfg = build_config(TrainConfig, overrides={"optimizer": {"optimizer": "Adafactor", "adafactor_relative_step": True,
                                                             "lr_scheduler": "cosine"}})
    assert "relative step" in validate(cfg)["optimizer.lr_scheduler"]
