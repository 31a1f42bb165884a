"""Every strategy × decide_every ∈ {epoch, step} trains two epochs on digits through ``fit``: the signals
each rule needs reach it at every decision point."""
import pytest

from labkit.strategies import STRATEGIES
from labkit.train import TrainConfig, fit

PARAMS = {   # what a strategy needs beyond the bounds to build
    "confidence": {"num_classes": 10}, "epoch": {"milestones": {1: 64}}, "progressive": {"target": 128},
}


@pytest.mark.parametrize("decide_every", ["epoch", "step"])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_decides_at_every_decision_point(name, decide_every):
    config = TrainConfig(dataset="digits", model="mlp", epochs=2, lr=0.05, quick=False, device="cpu",
                         strategy=name, decide_every=decide_every, memory_budget_mb=64 if name == "memory" else None,
                         strategy_params={"b_init": 32, "min_batch": 16, "max_batch": 256, **PARAMS.get(name, {})})
    history = fit(config, progress=False)
    assert list(history.epoch) == [1, 2]
    assert history.reason.str.len().gt(0).all()
    assert history.test_acc.iloc[-1] > 0.3                      # it trained (chance is 0.1)


def test_memory_strategy_without_a_budget_on_a_cpu_stops_before_training():
    config = TrainConfig(dataset="digits", model="mlp", epochs=2, device="cpu", quick=False, strategy="memory",
                         strategy_params={"b_init": 32})
    with pytest.raises(ValueError, match="needs a budget on a CPU: set memory_budget_mb"):
        fit(config, progress=False)
