"""``WindowController``: tune the batching window to a p99 latency target with AIMD.

A longer window makes bigger batches (fewer model calls per request, more requests per second from the same
GPU), but every request may wait longer. After every ``every`` served requests the batcher measures their
p99 latency L and calls ``step(p99_ms=L)``:

    w ← max(w_min, β·w)       if L > T          multiplicative decrease: back off fast
    w ← min(w_max, w + α)     if L < s·T        additive increase: probe slowly
    w ← w                     if s·T ≤ L ≤ T    inside the band: hold

with T = ``target_p99_ms``, β = ``decrease`` (0.5), α = ``increase_ms`` (0.5 ms), s = ``slack`` (0.8) and
bounds [``min_ms``, ``max_ms``] (max defaults to T: a lone request waits the whole window). Under light load
L ≈ w + compute, so w grows until L nears T; a burst that pushes L over T halves w at once.

Additive increase with multiplicative decrease is the rule of TCP congestion control (Jacobson 1988; Chiu
& Jain 1989 show it converges); Clipper (Crankshaw et al., NSDI 2017, "Adaptive Batching") uses it to fit
its batch size to a latency objective. Here it moves the window and ``max_batch`` caps the batch.

Example::

    controller = WindowController(target_p99_ms=10, window_ms=1)
    with TimeWindowBatcher(model, max_batch=64, controller=controller) as server:
        ...                                  # serve; the batcher calls controller.step(p99_ms=...)
    print(controller.window_ms, controller.history[-1].reason)

Chapter: Time-window batching for inference.
"""
from __future__ import annotations

from dataclasses import dataclass

from labkit.checks import check_float, check_int
from labkit.state import Stateful


@dataclass(frozen=True)
class WindowDecision:
    """After call ``step``, with an observed p99 of ``p99_ms``, the window went ``old_ms`` → ``new_ms``."""
    step: int
    old_ms: float
    new_ms: float
    p99_ms: float
    reason: str


class WindowController(Stateful):
    """AIMD on the batching window (module docstring has the rule).

    Args:
        target_p99_ms: T, the p99 latency to stay under (> 0).
        window_ms: the window before the first step (default 1 ms), inside [min_ms, max_ms].
        min_ms, max_ms: bounds of the window (defaults 0.1 ms and T).
        decrease: β in (0, 1), the factor applied above the target (default 0.5).
        increase_ms: α > 0, added when L < slack·T (default 0.5 ms).
        slack: s in (0, 1]; the band [s·T, T] holds the window (default 0.8; 1 means no band).
        every: served requests per decision, whose p99 is L (default 256; >= 1).
    """

    records = {"history": WindowDecision}

    def __init__(self, target_p99_ms: float, *, window_ms: float = 1.0, min_ms: float = 0.1,
                 max_ms: float | None = None, decrease: float = 0.5, increase_ms: float = 0.5,
                 slack: float = 0.8, every: int = 256):
        self.target_p99_ms = check_float("target_p99_ms", target_p99_ms, low=0.0, low_open=True)
        self.min_ms = check_float("min_ms", min_ms, low=0.0, low_open=True)
        self.max_ms = (self.target_p99_ms if max_ms is None
                       else check_float("max_ms", max_ms, low=0.0, low_open=True))
        if self.min_ms > self.max_ms:
            raise ValueError(f"min_ms={self.min_ms:g} is greater than max_ms={self.max_ms:g} (max_ms defaults to "
                             f"target_p99_ms): expected min_ms <= max_ms")
        self.window_ms = check_float("window_ms", window_ms, low=self.min_ms, high=self.max_ms)
        self.decrease = check_float("decrease", decrease, low=0.0, high=1.0, low_open=True, high_open=True)
        self.increase_ms = check_float("increase_ms", increase_ms, low=0.0, low_open=True)
        self.slack = check_float("slack", slack, low=0.0, high=1.0, low_open=True)
        self.every = check_int("every", every, low=1)
        self.steps = 0
        self.history: list[WindowDecision] = []

    def step(self, *, p99_ms: float) -> float:
        """One decision from the p99 latency of the last ``every`` requests; returns the new window (ms)."""
        latency = check_float("p99_ms", p99_ms, low=0.0)
        old, target = self.window_ms, self.target_p99_ms
        if latency > target:
            new = max(self.min_ms, self.decrease * old)
            reason = f"decrease: p99 {latency:.3g} ms > target {target:g} ms"
        elif latency < self.slack * target:
            new = min(self.max_ms, old + self.increase_ms)
            reason = f"increase: p99 {latency:.3g} ms < {self.slack:g}·target ({self.slack * target:.3g} ms)"
        else:
            new, reason = old, f"hold: p99 {latency:.3g} ms within [{self.slack:g}·target, target]"
        self.steps += 1
        self.window_ms = new
        self.history.append(WindowDecision(self.steps, old, new, latency, reason))
        return new

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(window_ms={self.window_ms:g}, target_p99_ms={self.target_p99_ms:g}, "
                f"steps={self.steps}, bounds=[{self.min_ms:g}, {self.max_ms:g}])")
