"""``GoodputBased``: the batch that maximises goodput = throughput × statistical efficiency, within memory.

At each decision the strategy adds the step time measured at the current batch to an online fit
t(B) ≈ α + β·B (``labkit.goodput.AffineFit``), smooths the gradient noise scale like ``GNSBased``, and
moves to the B in [B/a, B·a] ∩ [min_batch, max_batch] ∩ [.., memory ceiling] with the highest predicted
goodput (``labkit.goodput.best_batch``: B* = √(α·B_noise/β), clamped). With ``memory`` readings (peak use
as a share of the budget, as ``MemoryBased`` reads it) a second affine fit u(B) ≈ u₀ + s·B gives the
ceiling B where u = ``memory_target`` (one reading: B·target/u). Every reading is kept in ``readings``, so
``replay(readings)`` rebuilds the same decisions from the log alone. Chapter: Goodput.
"""
from __future__ import annotations

import math

from labkit.checks import check_float, check_int
from labkit.goodput import AffineFit, best_batch, efficiency, goodput, optimum
from labkit.strategies.base import Param, Strategy


class GoodputBased(Strategy):
    """Pollux's goodput rule on one GPU (Qiao et al., OSDI '21): B ← argmax B/t(B) · E(B).

    Args:
        reference_batch: B₀ of the efficiency E(B) = (B_noise + B₀)/(B_noise + B) (default: b_init).
        alpha: smoothing of the noise scale, ĝ ← α·gns + (1 − α)·ĝ (default 0.3).
        a: the most the batch moves per decision, a factor (default 2).
        memory_target: the share of the memory budget the ceiling allows (default 0.9).
    """

    name = "goodput"
    uses = ("gns", "step_time", "memory")
    requires = ("gns", "step_time")
    params = {
        "reference_batch": Param("B₀ of the efficiency E(B) = (B_noise + B₀)/(B_noise + B) (default: b_init)",
                                 "B₀"),
        "alpha": Param("smoothing of the noise scale, in (0, 1]", "α", [0.1, 0.3, 0.5, 0.7, 0.9]),
        "a": Param("the most the batch moves per decision, a factor", "a", [1.25, 1.5, 2.0, 4.0]),
        "memory_target": Param("the share of the memory budget the ceiling allows", "memory target"),
    }

    def __init__(self, b_init: int = 32, *, reference_batch: int | None = None, alpha: float = 0.3,
                 a: float = 2.0, memory_target: float = 0.9, **bounds):
        super().__init__(b_init, **bounds)
        self.reference_batch = check_int("reference_batch", b_init if reference_batch is None else reference_batch, low=1)
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.a = check_float("a", a, low=1.0, low_open=True)
        self.memory_target = check_float("memory_target", memory_target, low=0.0, high=1.0, low_open=True)
        self.smoothed: float | None = None
        self.times = AffineFit()
        self.memory = AffineFit()
        self.readings: list[dict[str, float]] = []

    def _decide(self, gns: float, step_time: float, memory: float | None = None) -> tuple[float, str]:
        reading = {"gns": gns, "step_time": step_time, **({} if memory is None else {"memory": memory})}
        self.readings.append(reading)
        batch = self.batch_size
        self.times.observe(batch, check_float("signal step_time", step_time, low=0.0, low_open=True))
        if memory is not None:
            self.memory.observe(batch, check_float("signal memory", memory, low=0.0, low_open=True))
        if gns > 0:        # unbiased estimators can dip below zero when the signal is tiny: not a reading
            self.smoothed = gns if self.smoothed is None else self.alpha * gns + (1 - self.alpha) * self.smoothed
        if self.smoothed is None:
            return self.value, f"hold: no positive noise-scale reading yet ({gns:.3g})"
        alpha, beta = self.times.line() or (step_time, 0.0)
        ceiling = self._ceiling()
        high = min(self.max_batch, math.floor(self.value * self.a), ceiling)
        high = max(self.min_batch, high - high % self.multiple_of)   # rounding never lifts B over the ceiling
        low = min(max(self.min_batch, math.ceil(self.value / self.a)), high)   # memory overrides the ×a limit
        new = best_batch(alpha, beta, self.smoothed, low, high, self.reference_batch)
        star = optimum(alpha, beta, self.smoothed)
        now, then = (goodput(b, alpha, beta, self.smoothed, self.reference_batch) if alpha + beta * b > 0 else math.nan
                     for b in (batch, new))
        limit = "" if ceiling >= self.max_batch else f", memory ceiling {ceiling}"
        return float(new), (f"goodput: t(B) = {alpha:.3g} {'−' if beta < 0 else '+'} {abs(beta):.3g}·B s, "
                            f"B_noise {self.smoothed:.0f}, "
                            f"B* {star:.0f}{limit}; E {efficiency(new, self.reference_batch, self.smoothed):.2f}, "
                            f"{then:.0f} vs {now:.0f} samples/s at {batch}")

    def _ceiling(self) -> int:
        """The largest batch whose predicted memory use stays at ``memory_target`` (max_batch without
        readings, or when the fitted use does not grow with B)."""
        if not self.memory.points:
            return self.max_batch
        line = self.memory.line()
        if line is None:
            x, _, u = self.memory.points[0]
            return max(1, math.floor(x * self.memory_target / u))
        u0, slope = line
        return self.max_batch if slope <= 0 else max(1, math.floor((self.memory_target - u0) / slope + 1e-9))

    def replay(self, readings: list[dict[str, float]]) -> list[int]:
        """Feed a log of readings (another run's ``readings``) to this strategy; return the batch sizes."""
        return [self.step(**reading) for reading in readings]

    def _check(self) -> None:
        super()._check()
        if self.smoothed is not None:
            check_float("smoothed", self.smoothed, low=0.0, low_open=True)
