"""Synthetic signal curves for simulating adaptive strategies without training anything.

Each function returns a plain list of floats, one reading per decision, and is deterministic for a given
``seed`` (it uses ``random.Random``, not a global generator). They stand in for the signals a training
loop measures (the per-epoch training loss, the mean softmax entropy, the gradient noise scale) until the
chapters can show recorded runs.

Shapes, with t = 0 … steps−1 and a noise draw ε_t ~ N(0, 1):

* loss:    L_t = (floor + (start − floor)·e^{−t/τ} + bump_t) · (1 + noise·ε_t)
* entropy: h_t = clip(end + (start − end)·e^{−t/τ} + bump_t + noise·ε_t, 0.01, 0.99),  H_t = h_t · log C
* gns:     B_simple,t = first · (last / first)^{t/(steps−1)} · e^{noise·ε_t}

and two signals of the batch itself, ``MemoryModel`` (memory use) and ``StepTimeModel`` (step time).

``bump_t`` is a short rise at ``bump_at`` (a fraction of the run) that decays over a few steps, like the
loss after a learning-rate restart or a harder slice of data: it gives the adaptive rules something to
react to. Chapter: Loss-based batching; Confidence-based batching.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from labkit.checks import check_float, check_int


def synthetic_loss(steps: int = 40, *, start: float = 2.3, floor: float = 0.35, tau: float | None = None,
                   noise: float = 0.03, bump: float = 0.25, bump_at: float = 0.55, seed: int = 0) -> list[float]:
    """A noisy, decaying training-loss curve (cross-entropy-like: starts near log 10 ≈ 2.3).

    Args:
        steps: number of readings.
        start, floor: the loss at t = 0 and the value it decays toward.
        tau: decay time in steps (default steps / 5).
        noise: relative standard deviation of the multiplicative noise (0.03 = 3 %).
        bump: height of the temporary rise, as a fraction of the loss where it happens (0 for none).
        bump_at: where the rise happens, as a fraction of the run.
        seed: the noise seed.
    """
    steps = check_int("steps", steps, low=1)
    floor = check_float("floor", floor, low=0.0)
    start = check_float("start", start, low=floor)
    tau = _tau(tau, steps)
    noise = check_float("noise", noise, low=0.0)
    rng = random.Random(seed)
    values = []
    for t in range(steps):
        smooth = floor + (start - floor) * math.exp(-t / tau)
        smooth *= 1.0 + _bump(t, steps, bump, bump_at)
        values.append(max(smooth * (1.0 + noise * rng.gauss(0.0, 1.0)), 1e-6))
    return values


def synthetic_entropy(steps: int = 40, *, num_classes: int = 10, start: float = 0.95, end: float = 0.08,
                      tau: float | None = None, noise: float = 0.03, bump: float = 0.3, bump_at: float = 0.55,
                      seed: int = 0) -> list[float]:
    """Mean softmax entropy in nats, falling from near log C (uncertain) toward ``end``·log C (confident).

    ``start`` and ``end`` are normalised entropies h = H / log C in [0, 1]; ``bump`` is added to h.
    """
    steps = check_int("steps", steps, low=1)
    log_c = math.log(check_int("num_classes", num_classes, low=2))
    start = check_float("start", start, low=0.0, high=1.0)
    end = check_float("end", end, low=0.0, high=1.0)
    tau = _tau(tau, steps)
    noise = check_float("noise", noise, low=0.0)
    rng = random.Random(seed)
    values = []
    for t in range(steps):
        h = end + (start - end) * math.exp(-t / tau) + bump * _bump(t, steps, 1.0, bump_at)
        h = min(max(h + noise * rng.gauss(0.0, 1.0), 0.01), 0.99)
        values.append(h * log_c)
    return values


def synthetic_gns(steps: int = 40, *, first: float = 64.0, last: float = 1024.0, noise: float = 0.25,
                  seed: int = 0) -> list[float]:
    """Gradient noise scale readings growing geometrically from ``first`` to ``last``, with log-normal noise.

    The noise scale tends to grow as the loss falls (McCandlish et al. 2018, §3), which is why a GNS-driven
    batch grows during training.
    """
    steps = check_int("steps", steps, low=1)
    first = check_float("first", first, low=0.0, low_open=True)
    last = check_float("last", last, low=0.0, low_open=True)
    noise = check_float("noise", noise, low=0.0)
    rng = random.Random(seed)
    span = max(steps - 1, 1)
    return [first * (last / first) ** (t / span) * math.exp(noise * rng.gauss(0.0, 1.0)) for t in range(steps)]


def default_signals(name: str, steps: int, *, num_classes: int = 10, seed: int = 0) -> dict[str, list[float]]:
    """The synthetic signals a strategy needs (by its ``requires``), ``{}`` for schedules."""
    from labkit.strategies import STRATEGIES, parameters

    parameters(name)  # raises a clear ValueError for an unknown name
    needs = STRATEGIES[name].requires
    signals = {}
    if "loss" in needs:
        signals["loss"] = synthetic_loss(steps, seed=seed)
    if "entropy" in needs:
        signals["entropy"] = synthetic_entropy(steps, num_classes=num_classes, seed=seed)
    if "gns" in needs:
        signals["gns"] = synthetic_gns(steps, seed=seed)
    if "memory" in needs:
        signals["memory"] = MemoryModel()
    if "step_time" in needs:
        signals["step_time"] = StepTimeModel()
    return signals


@dataclass(frozen=True)
class MemoryModel:
    """Peak memory of a training step as a fraction of the budget, affine in the batch size B:

        u(B) = base + per_example · B

    The defaults: weights, gradients and optimizer state take 5 % of the budget and each example 0.02 %,
    so the budget is full at B = 4750. A signal that depends on the batch (``trajectory`` calls it with
    the current B), unlike the loss curves above that only depend on time.
    """
    base: float = 0.05
    per_example: float = 2e-4

    def __post_init__(self):
        check_float("base", self.base, low=0.0)
        check_float("per_example", self.per_example, low=0.0, low_open=True)

    def __call__(self, batch: int) -> float:
        return self.base + self.per_example * batch

    def fits(self, usage: float = 1.0) -> int:
        """The largest batch whose usage is at most ``usage``: floor((usage − base) / per_example)."""
        return math.floor((usage - self.base) / self.per_example)


class StepTimeModel:
    """Seconds per training step, affine in the batch size B (``labkit.goodput``'s model), with noise:

        t(B) = (α + β·B)·(1 + noise·ε),   ε standard normal from its own seeded generator

    The defaults: 10 ms of fixed cost per step and 10 µs per example, no noise. Like ``MemoryModel``, a
    signal of the current batch (``trajectory`` feeds ``step_time=model(B_k)``)."""

    def __init__(self, alpha: float = 0.01, beta: float = 1e-5, noise: float = 0.0, seed: int = 0):
        self.alpha = check_float("alpha", alpha, low=0.0)
        self.beta = check_float("beta", beta, low=0.0)
        self.noise = check_float("noise", noise, low=0.0, high=0.5)
        self.rng = random.Random(check_int("seed", seed))

    def __call__(self, batch: int) -> float:
        jitter = 1 + self.noise * self.rng.gauss(0.0, 1.0) if self.noise else 1.0
        return (self.alpha + self.beta * batch) * max(jitter, 0.1)

    def __repr__(self) -> str:
        return f"StepTimeModel(alpha={self.alpha:g}, beta={self.beta:g}, noise={self.noise:g})"


def _tau(tau: float | None, steps: int) -> float:
    return max(steps / 5.0, 1.0) if tau is None else check_float("tau", tau, low=0.0, low_open=True)


def _bump(t: int, steps: int, height: float, at: float) -> float:
    """A rise of ``height`` at step round(at·steps) that halves every 1.5 steps afterwards."""
    t0 = round(check_float("bump_at", at, low=0.0, high=1.0) * steps)
    return 0.0 if t < t0 else height * 0.5 ** ((t - t0) / 1.5)
