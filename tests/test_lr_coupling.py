"""LRCoupling: batch-size coupling that multiplies the LR a user's scheduler set, never overwrites it."""
import math

import pytest
import torch

import labkit.strategies as s
from labkit.strategies import LRCoupling, adascale_gain


def sgd(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


@pytest.mark.parametrize("rule, f", [("linear", lambda r: r), ("sqrt", math.sqrt), ("none", lambda r: 1.0)])
def test_coupling_preserves_a_step_lr_decay_exactly(rule, f):
    optimizer = sgd(0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    strategy = s.build("exponential", b_init=32, a=2, max_batch=1024)
    coupling = LRCoupling(optimizer, batch_size=strategy.batch_size, rule=rule)
    for epoch in range(1, 5):
        optimizer.step()
        scheduler.step()                                   # the user's decay: ×0.5 per epoch
        coupling.step(strategy.step())                     # batch 32 → 64 → 128 → 256 → 512
        expected = 0.1 * 0.5 ** epoch * f(strategy.batch_size / 32)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)
    # the absolute rule of scaled_lr would have wiped the decay out: 0.1·√16 = 0.4, not 0.025
    assert s.scaled_lr(0.1, 32, 512, "sqrt") == pytest.approx(0.4)


def test_same_batch_is_a_no_op_and_every_group_is_scaled():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "lr": 0.01}])
    coupling = LRCoupling(optimizer, batch_size=64, rule="linear")
    assert coupling.step(64) == 1.0
    assert coupling.step(256) == 4.0
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.4, 0.04])


def test_adascale_gain_by_hand_and_its_bounds():
    # r = (B_noise + B0)·B / ((B_noise + B)·B0): B0 = 32, B = 128, B_noise = 96 → 128·128 / (224·32)
    assert adascale_gain(128, 32, 96.0) == pytest.approx(128 * 128 / (224 * 32))
    for noise in (0.0, 10.0, 1e3, 1e9):
        r = adascale_gain(256, 32, noise)
        assert 1.0 - 1e-12 <= r <= 256 / 32 + 1e-12
    assert adascale_gain(256, 32, 1e12) == pytest.approx(8.0, rel=1e-6)    # noise dominates: linear
    assert adascale_gain(256, 32, 0.0) == pytest.approx(1.0)               # no noise: no gain


def test_adascale_coupling_follows_the_gain_as_batch_and_noise_change():
    optimizer = sgd(0.1)
    coupling = LRCoupling(optimizer, batch_size=32, rule="adascale", b_noise=50.0)
    coupling.step(64, b_noise=80.0)
    coupling.step(128, b_noise=200.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * adascale_gain(128, 32, 200.0))
    with pytest.raises(ValueError, match="needs b_noise"):
        LRCoupling(sgd(), batch_size=32, rule="adascale")


def test_state_round_trip_and_bad_state():
    optimizer = sgd(0.1)
    coupling = LRCoupling(optimizer, batch_size=32, rule="sqrt")
    coupling.step(128)
    twin = LRCoupling(sgd(0.2), batch_size=32, rule="sqrt")
    twin.load_state_dict(coupling.state_dict())
    assert twin.factor(512) == coupling.factor(512) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="rule='linear'"):
        LRCoupling(sgd(), batch_size=32, rule="sqrt").load_state_dict({**coupling.state_dict(), "rule": "linear"})
    with pytest.raises(ValueError, match="keys"):
        twin.load_state_dict({"batch_size": 3})
    with pytest.raises(ValueError, match="rule='cubic'"):
        LRCoupling(sgd(), batch_size=32, rule="cubic")
