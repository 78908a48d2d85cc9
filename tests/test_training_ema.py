"""EMA against diffusers' ``EMAModel``, its swap in and out, and its state round trip."""

from __future__ import annotations

import pytest
import torch

from helpers.training.ema import ExponentialMovingAverage, ema_decay


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def _train_steps(model, steps, on_step):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        x = torch.randn(5, 8, generator=g)
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        on_step(step)


@pytest.mark.parametrize("warmup,start", [("steps", 0), ("power", 0), ("steps", 3)])
def test_matches_diffusers_ema_model_over_10_steps(warmup, start):
    from diffusers.training_utils import EMAModel

    model = _model()
    ours = ExponentialMovingAverage({"unet": model}, decay=0.9, warmup=warmup, power=0.75, start_step=start)
    ref = EMAModel(model.parameters(), decay=0.9, update_after_step=start, use_ema_warmup=warmup == "power",
                   power=0.75, inv_gamma=1.0)

    def both(step):
        ours.update(step)
        ref.step(model.parameters())
        assert ours.last_decay == pytest.approx(ref.cur_decay_value)
        shadows = list(ours.state_dict().values())
        assert all(torch.allclose(a, b, atol=1e-7, rtol=0) for a, b in zip(shadows, ref.shadow_params, strict=True))

    _train_steps(model, 10, both)
    assert ours.last_decay > 0.4  # the warm-up has moved on


def test_decay_schedule_by_hand():
    assert [ema_decay(s, 0.999) for s in (1, 2, 3)] == pytest.approx([0.0, 2 / 11, 3 / 12])
    assert ema_decay(10_000, 0.999) == 0.999
    assert ema_decay(2, 0.999, "off") == 0.999 and ema_decay(1, 0.999, "off") == 0.0
    assert ema_decay(5, 0.999, "power", 0.5) == pytest.approx(1 - 5 ** -0.5)
    assert ema_decay(4, 0.999, start_step=3) == 0.0 and ema_decay(5, 0.999, start_step=3) == pytest.approx(2 / 11)


def test_update_every_n_steps_keeps_the_averaging_window():
    model = _model()
    every = ExponentialMovingAverage({"unet": model}, decay=0.9, warmup="off", update_every=2, device="cpu")
    updated = []
    _train_steps(model, 4, lambda step: updated.append(every.update(step)))
    assert updated == [False, True, False, True] and every.last_decay == pytest.approx(0.81)


def test_swapped_into_holds_the_average_then_restores_exactly():
    model = _model()
    ema = ExponentialMovingAverage({"unet": model}, decay=0.5, warmup="off")
    _train_steps(model, 3, ema.update)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped_into():
        inside = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())  # bit for bit back
    assert all(torch.equal(inside[k], ema.shadow[f"unet.{k}"]) for k in trained)
    assert not torch.equal(inside["0.weight"], trained["0.weight"])


def test_state_round_trip_and_mismatch():
    model = _model()
    ema = ExponentialMovingAverage({"unet": model}, decay=0.9)
    _train_steps(model, 3, ema.update)
    other = ExponentialMovingAverage({"unet": _model(5)}, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.shadow.values(), ema.shadow.values(), strict=True))
    with pytest.raises(ValueError, match="does not match the trained weights"):
        ExponentialMovingAverage({"te1": _model()}, decay=0.9).load_state_dict(ema.state_dict())
