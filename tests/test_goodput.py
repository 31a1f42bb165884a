"""The goodput model and strategy against independent computations: numpy's least squares, a brute-force
argmax over every integer batch, and a synthetic GPU whose step time and memory are known lines."""
import json
import math

import numpy as np
import pytest

from labkit.goodput import AffineFit, best_batch, efficiency, goodput, optimum
from labkit.strategies.goodput import GoodputBased


def test_affine_fit_is_least_squares_over_the_distinct_sizes():
    fit = AffineFit()
    readings = [(64, 1.0), (64, 1.2), (128, 1.5), (256, 2.6), (512, 4.4), (512, 4.6)]
    for x, y in readings:
        fit.observe(x, y)
    xs, ys = np.array([64, 128, 256, 512]), np.array([1.1, 1.5, 2.6, 4.5])   # one mean per size
    slope, intercept = np.polyfit(xs, ys, 1)
    assert fit.line() == pytest.approx((intercept, slope))
    resid = ys - (intercept + slope * xs)
    s2 = resid @ resid / (len(xs) - 2)
    se = math.sqrt(s2 * (1 / 4 + (300 - xs.mean()) ** 2 / ((xs - xs.mean()) ** 2).sum()))
    assert fit.band(300) == pytest.approx(2 * se)
    assert fit.predict(300) == pytest.approx(intercept + slope * 300)
    one = AffineFit()
    one.observe(64, 2.0)
    assert one.line() is None and one.predict(1000) == 2.0 and math.isnan(one.band(64))


@pytest.mark.parametrize("alpha,beta,b_noise", [(0.01, 1e-5, 500), (0.002, 4e-6, 3000), (0.05, 1e-6, 50)])
def test_the_optimum_is_the_argmax_of_goodput(alpha, beta, b_noise):
    grid = np.arange(1, 200_000)
    values = grid / (alpha + beta * grid) * (b_noise + 64) / (b_noise + grid)
    assert optimum(alpha, beta, b_noise) == pytest.approx(grid[values.argmax()], abs=1)
    assert optimum(alpha, beta, b_noise) == pytest.approx(math.sqrt(alpha * b_noise / beta))
    assert goodput(100, alpha, beta, b_noise, 64) == pytest.approx(values[99])
    assert efficiency(64, 64, b_noise) == 1.0 and efficiency(128, 64, b_noise) < 1.0


def test_best_batch_is_the_brute_force_argmax_and_stays_in_range():
    rng = np.random.default_rng(0)
    for _ in range(300):
        alpha, beta, b_noise = rng.uniform(1e-4, 0.05), rng.uniform(1e-7, 1e-4), rng.uniform(1, 5000)
        low = int(rng.integers(1, 500))
        high = low + int(rng.integers(0, 2000))
        sizes = np.arange(low, high + 1)
        brute = sizes[np.argmax(sizes / (alpha + beta * sizes) / (b_noise + sizes))]
        assert best_batch(alpha, beta, b_noise, low, high, base_batch=32) == brute
    assert best_batch(0.01, 0.0, 100, 8, 1024) == 1024          # time flat in B: the largest allowed
    assert best_batch(0.0, 1e-5, 100, 8, 1024) == 8             # no overhead to amortise: the smallest
    with pytest.raises(ValueError, match="low=9 is greater than high=8"):
        best_batch(0.01, 1e-5, 100, 9, 8)


class SyntheticGPU:
    """Step time α + β·B (plus seeded noise), memory use u₀ + s·B of the budget."""

    def __init__(self, alpha=0.02, beta=2e-5, u0=0.1, slope=1e-3, noise=0.0, seed=0):
        self.alpha, self.beta, self.u0, self.slope, self.noise = alpha, beta, u0, slope, noise
        self.rng = np.random.default_rng(seed)

    def signals(self, batch, gns):
        jitter = 1 + self.noise * self.rng.standard_normal()
        return dict(gns=gns, step_time=(self.alpha + self.beta * batch) * jitter, memory=self.u0 + self.slope * batch)


def run(strategy, gpu, gns, steps):
    return [strategy.step(**gpu.signals(strategy.batch_size, gns)) for _ in range(steps)]


def test_the_strategy_settles_at_the_analytic_optimum():
    gpu = SyntheticGPU(alpha=0.02, beta=2e-5, slope=1e-5)            # memory never binds below 8000
    strategy = GoodputBased(64, max_batch=8192)
    sizes = run(strategy, gpu, gns=900.0, steps=12)
    star = math.sqrt(0.02 * 900 / 2e-5)                               # 948.7
    assert sizes[-1] == best_batch(0.02, 2e-5, 900.0, 8, 8192) == round(star)
    assert all(b2 <= 2 * b1 for b1, b2 in zip([64, *sizes], sizes))  # at most ×a per decision
    assert "B* 949" in strategy.history[-1].reason


def test_the_memory_ceiling_binds():
    gpu = SyntheticGPU(alpha=0.5, beta=1e-6, u0=0.1, slope=1e-3)      # B* huge; u = 0.9 at B = 800
    strategy = GoodputBased(64, max_batch=4096, memory_target=0.9)
    sizes = run(strategy, gpu, gns=5000.0, steps=10)
    assert max(sizes) <= 800 and sizes[-1] == 800
    assert "memory ceiling 800" in strategy.history[-1].reason
    rounded = GoodputBased(64, min_batch=32, max_batch=4096, multiple_of=32, memory_target=0.88)  # ceiling 780
    assert max(run(rounded, gpu, gns=5000.0, steps=10)) == 768                        # not 780 → 768/800


def test_the_memory_ceiling_overrides_the_step_limit():
    strategy = GoodputBased(1024, max_batch=4096)                      # one reading: B·0.9/u = 1024·0.9/3
    assert strategy.step(gns=1000.0, step_time=0.03, memory=3.0) == 307    # not 512 = B/a
    assert "memory ceiling 307" in strategy.history[-1].reason
    falling = GoodputBased(64, max_batch=4096)
    falling.step(gns=1000.0, step_time=0.03)
    falling.step(gns=1000.0, step_time=0.02)                           # slower at 64 than at 128
    assert "t(B) = 0.04 − 0.000156·B s" in falling.history[-1].reason


def test_bounds_hold_under_noisy_signals_and_decisions_replay_from_the_log():
    gpu = SyntheticGPU(noise=0.3, seed=1)
    strategy = GoodputBased(32, min_batch=16, max_batch=2048, multiple_of=16)
    sizes = run(strategy, gpu, gns=400.0, steps=30)
    ceiling = math.floor((0.9 - 0.1) / 1e-3)
    assert all(16 <= b <= min(2048, ceiling + 16) and b % 16 == 0 for b in sizes)
    again = GoodputBased(32, min_batch=16, max_batch=2048, multiple_of=16)
    assert again.replay(json.loads(json.dumps(strategy.readings))) == sizes
    assert [d.reason for d in again.history] == [d.reason for d in strategy.history]


def test_state_round_trip_mid_run_continues_identically():
    gpu_a, gpu_b = SyntheticGPU(noise=0.2, seed=3), SyntheticGPU(noise=0.2, seed=3)
    a = GoodputBased(64, max_batch=4096)
    run(a, gpu_a, gns=700.0, steps=5)
    run(GoodputBased(64, max_batch=4096), gpu_b, gns=700.0, steps=5)    # keep gpu_b's noise in step
    b = GoodputBased(64, max_batch=4096)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert run(a, gpu_a, gns=700.0, steps=6) == run(b, gpu_b, gns=700.0, steps=6)


def test_no_noise_reading_yet_holds_and_a_missing_signal_is_named():
    strategy = GoodputBased(64)
    assert strategy.step(gns=-3.0, step_time=0.01) == 64
    assert strategy.history[-1].reason.startswith("hold: no positive noise-scale reading")
    with pytest.raises(TypeError, match="step_time"):
        strategy.step(gns=100.0)
    with pytest.raises(ValueError, match="step_time"):
        strategy.step(gns=100.0, step_time=0.0)
