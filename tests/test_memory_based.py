"""The memory strategy (``MemoryBased``), the loop's memory signal (``MemoryWatch``) and OOM recovery, on CPU."""
import math

import pandas as pd
import pytest
import torch

import labkit.strategies as s
from labkit.data import load
from labkit.memory import MemoryCapExceeded, MemoryWatch, StepMemory
from labkit.models import build_model
from labkit.train import TrainConfig, fit
from labkit.widgets import MemoryModel, trajectory

BOUNDS = dict(min_batch=8, max_batch=65536)


@pytest.mark.parametrize("base, per_example, target", [(0.05, 2e-4, 0.8), (0.3, 1e-5, 0.7), (0.0, 1e-3, 0.5)])
def test_affine_memory_converges_to_the_batch_that_uses_the_target(base, per_example, target):
    model = MemoryModel(base, per_example)
    expected = (target - base) / per_example                 # solve base + per_example·B = target by hand
    strategy = s.build("memory", b_init=32, target=target, low=target - 0.05, high=target + 0.05, a=4, **BOUNDS)
    sizes = trajectory(strategy, 30, {"memory": model})
    assert abs(sizes[-1] - expected) <= 1                    # rounding to an int
    # at most ×a per decision, up to rounding
    assert all(new <= 4 * (old + 0.5) + 0.5 for old, new in zip(sizes, sizes[1:]))


def test_first_move_is_proportional_and_capped_by_a():
    strategy = s.build("memory", b_init=100, target=0.8, low=0.6, high=0.9, a=2, **BOUNDS)
    assert strategy.step(memory=0.5) == 160                  # 100 · 0.8 / 0.5, one reading: no slope yet
    strategy = s.build("memory", b_init=100, target=0.8, low=0.6, high=0.9, a=2, **BOUNDS)
    assert strategy.step(memory=0.1) == 200                  # 100 · 8 = 800, capped at ×2
    strategy = s.build("memory", b_init=100, target=0.8, low=0.6, high=0.9, a=2, **BOUNDS)
    assert strategy.step(memory=0.95) == 84                  # 100 · 0.8 / 0.95 = 84.2: shrinks past the target
    assert strategy.step(memory=0.7) == 84                   # inside [low, high]: hold
    assert strategy.history[-1].reason.startswith("hold")


def test_oom_halves_and_growth_never_returns_to_a_failed_batch():
    strategy = s.build("memory", b_init=1024, multiple_of=8, **BOUNDS)
    assert strategy.oom() == 512
    assert "out of memory at batch 1024" in strategy.history[-1].reason
    for _ in range(5):
        strategy.step(memory=0.1)                            # wants to grow ×2 each time
    assert strategy.batch_size == 1016                       # the largest multiple of 8 below 1024
    at_min = s.build("memory", b_init=8, **BOUNDS)
    assert at_min.oom() == 8                                 # nothing smaller: the loop raises


@pytest.mark.parametrize("params, words", [
    (dict(target=0.95, low=0.6, high=0.9), "target=0.95"),
    (dict(target=0.0), "target=0"),
    (dict(a=1.0), "a=1"),
    (dict(high=1.5), "high=1.5"),
])
def test_bad_parameters_are_refused(params, words):
    with pytest.raises(ValueError, match=words):
        s.build("memory", **params)


def test_negative_or_missing_signal_is_refused():
    with pytest.raises(ValueError, match="memory=-0.1"):
        s.build("memory").step(memory=-0.1)
    with pytest.raises(TypeError, match="memory"):
        s.build("memory").step(loss=1.0)


def test_state_dict_round_trip_continues_identically():
    model = MemoryModel(0.1, 1e-4)
    first = s.build("memory", b_init=64, **BOUNDS)
    trajectory(first, 3, {"memory": model})
    first.oom()
    twin = s.build("memory", b_init=64, **BOUNDS)
    twin.load_state_dict(first.state_dict())
    assert trajectory(first, 10, {"memory": model}) == trajectory(twin, 10, {"memory": model})


def test_cpu_watch_checks_the_estimate_against_the_budget():
    model = build_model("mlp", (1, 8, 8), 10)
    example = torch.randn(1, 1, 8, 8)
    estimate = StepMemory.of(model, example)
    watch = MemoryWatch(model, example, budget_bytes=estimate(100))
    watch.before(100)
    assert watch.after() == pytest.approx(1.0)
    watch.before(50)
    assert watch.after() == pytest.approx(estimate(50) / estimate(100))
    with pytest.raises(MemoryCapExceeded, match="batch 101"):
        watch.before(101)
    assert watch.end_epoch()[1] == pytest.approx(1.0) and watch.end_epoch()[1] == 0.0   # the peak resets
    assert MemoryWatch(model, example).after() is None       # no budget on a CPU: no signal


def _budget_mb(batch: int) -> float:
    """A budget that fits ``batch`` digits examples in the mlp step (StepMemory's estimate)."""
    model = build_model("mlp", (1, 8, 8), 10)
    return StepMemory.of(model, torch.zeros(1, 1, 8, 8))(batch) / 2**20


def test_training_recovers_from_oom_without_skipping_samples(tmp_path):
    config = TrainConfig(dataset="digits", model="mlp", epochs=2, lr=0.05, quick=False, device="cpu",
                         strategy="memory", memory_budget_mb=_budget_mb(300),
                         strategy_params=dict(b_init=512, min_batch=8, max_batch=1024))
    history = fit(config, tmp_path, progress=False)
    n = len(load("digits").y_train)
    # the first batch of 512 does not fit: its 512 samples are retried as two batches of 256, and the rest
    # of the epoch is served in batches of 256 (full batches only): none of the 512 is skipped
    assert history.oom_retries.iloc[0] == 1
    assert history.samples.iloc[0] == 512 + 256 * ((n - 512) // 256)
    decisions = pd.read_csv(tmp_path / "decisions.csv")
    assert decisions.reason.iloc[0] == "halve: out of memory at batch 512"
    assert (history.peak_mem_mb <= config.memory_budget_mb + 1e-9).all()
    assert history.batch_size.iloc[-1] < 300 and math.isfinite(history.train_loss.iloc[-1])


def test_other_strategies_stop_with_advice_when_out_of_memory():
    config = TrainConfig(dataset="digits", model="mlp", epochs=1, quick=False, device="cpu", strategy="fixed",
                         memory_budget_mb=_budget_mb(100), strategy_params=dict(b_init=256, max_batch=1024))
    with pytest.raises(MemoryCapExceeded, match="use strategy 'memory'"):
        fit(config, progress=False)
