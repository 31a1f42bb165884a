"""``WindowController``: tune the batching window to a p99 latency target with AIMD, above a floor.

A longer window makes bigger batches (fewer model calls per request, more requests per second from the same
GPU), but every request may wait longer. After every ``every`` served requests the batcher measures their
p99 latency L, the median model call c of their batches (the service time of one batch) and the share f of
their batches that closed full (at ``max_batch``), and calls ``step(p99_ms=L, service_ms=c, full_share=f)``:

    w ← w                     if L > T and f ≥ f_full   overloaded: hold (the queue, not the window, is late)
    w ← max(w_floor, β·w)     if L > T                  multiplicative decrease: back off fast
    w ← min(w_max, w + α)     if L < s·T                additive increase: probe slowly
    w ← w                     if s·T ≤ L ≤ T            inside the band: hold

then w ← min(w_max, max(w_floor, w)), with the floor w_floor = max(w_min, c): never shorter than one
batch's service time (a step without ``service_ms`` has the floor w_min). T = ``target_p99_ms``,
β = ``decrease`` (0.5), α = ``increase_ms`` (0.5 ms), s = ``slack`` (0.8), f_full = ``full_share`` (0.5),
bounds [``min_ms``, ``max_ms``] (max defaults to T: a lone request waits the whole window). Under light
load L ≈ w + compute, so w grows until L nears T; a burst that pushes L over T halves w at once.

Overload. Offered more requests than the model can answer at ``max_batch``, every request waits in the
queue behind the batches before it, and L grows with the queue however short the window is. The rule
without the overload clause and the floor blamed the window: it halved w toward w_min = 0.1 ms, which
can only make the batches that close before the queue refills smaller: fewer requests per model call, a
longer queue (``results/bench_serving.csv``, H100, 8× the one-by-one rate: the window ended at 0.1 and
1.1 ms, p99 384 and 102 ms, against 46 and 52 ms with a fixed 10 ms window). A batch that closed
full did not wait for its window, so shrinking the window cannot make it sooner: the controller holds. The
latency of an overloaded server is bounded by refusing what it cannot answer in time, not by the window:
``TimeWindowBatcher(max_queue=...)`` (see ``labkit.serving.batcher``). CPU simulation (a model sleeping
2 + 0.1·B ms, ``max_batch=8``, T = 10 ms, ``every=64``, Poisson load at 8× the one-by-one rate for 3 s,
threads generator, 2 cores): before, the window fell to 0.1 ms and the p99 was 1.59 s; with the floor it
holds at ≥ one batch (3.4 ms) but the unbounded queue still makes the p99 1.7 s; with ``max_queue=8`` as
well the served p99 is 8.8–10.6 ms, the window climbs to max_ms = 10 ms, and 34–36 % of the requests are
refused with ``Overloaded``.

When the load falls, L drops below s·T and the window climbs back by α per decision from the floor.

Additive increase with multiplicative decrease is the rule of TCP congestion control (Jacobson 1988; Chiu
& Jain 1989 show it converges); Clipper (Crankshaw et al., NSDI 2017, "Adaptive Batching") uses it to fit
its batch size to a latency objective. Here it moves the window and ``max_batch`` caps the batch.

Example::

    controller = WindowController(target_p99_ms=10, window_ms=1)
    with TimeWindowBatcher(model, max_batch=64, controller=controller) as server:
        ...                                  # serve; the batcher calls controller.step(p99_ms=..., ...)
    print(controller.window_ms, controller.history[-1].reason)

Chapter: Time-window batching for inference.
"""
from __future__ import annotations

from dataclasses import dataclass

from labkit.checks import check_float, check_int
from labkit.state import Stateful


@dataclass(frozen=True)
class WindowDecision:
    """After call ``step``, with an observed p99 of ``p99_ms``, the window went ``old_ms`` → ``new_ms``;
    ``floor_ms`` was the floor, ``full_share`` the share of full batches."""
    step: int
    old_ms: float
    new_ms: float
    p99_ms: float
    reason: str
    floor_ms: float = 0.0
    full_share: float = 0.0


class WindowController(Stateful):
    """AIMD on the batching window above a floor of one batch's service time (module docstring has the rule).

    Args:
        target_p99_ms: T, the p99 latency to stay under (> 0).
        window_ms: the window before the first step (default 1 ms), inside [min_ms, max_ms].
        min_ms, max_ms: bounds of the window (defaults 0.1 ms and T); the floor is max(min_ms, service_ms).
        decrease: β in (0, 1), the factor applied above the target (default 0.5).
        increase_ms: α > 0, added when L < slack·T (default 0.5 ms).
        slack: s in (0, 1]; the band [s·T, T] holds the window (default 0.8; 1 means no band).
        every: served requests per decision, whose p99 is L (default 256; >= 1).
        full_share: f_full in (0, 1]; above the target, the window holds when at least this share of the
            period's batches closed full: they were late from queueing, not from the window (default 0.5).
    """

    records = {"history": WindowDecision}

    def __init__(self, target_p99_ms: float, *, window_ms: float = 1.0, min_ms: float = 0.1,
                 max_ms: float | None = None, decrease: float = 0.5, increase_ms: float = 0.5,
                 slack: float = 0.8, every: int = 256, full_share: float = 0.5):
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
        self.full_share = check_float("full_share", full_share, low=0.0, high=1.0, low_open=True)
        self.steps = 0
        self.history: list[WindowDecision] = []

    def step(self, *, p99_ms: float, service_ms: float | None = None, full_share: float = 0.0) -> float:
        """One decision from the p99 latency of the last ``every`` requests, the median service time of
        their batches (ms; None: no floor above ``min_ms``) and the share of them that closed full;
        returns the new window (ms)."""
        latency = check_float("p99_ms", p99_ms, low=0.0)
        full = check_float("full_share", full_share, low=0.0, high=1.0)
        floor = self.floor_ms(service_ms)
        old, target = self.window_ms, self.target_p99_ms
        if latency > target and full >= self.full_share:
            new = old
            reason = (f"hold (overloaded): p99 {latency:.3g} ms > target {target:g} ms with {full:.0%} of batches "
                      f"full: requests waited in the queue, not for the window")
        elif latency > target:
            new = self.decrease * old
            reason = f"decrease: p99 {latency:.3g} ms > target {target:g} ms"
        elif latency < self.slack * target:
            new = old + self.increase_ms
            reason = f"increase: p99 {latency:.3g} ms < {self.slack:g}·target ({self.slack * target:.3g} ms)"
        else:
            new, reason = old, f"hold: p99 {latency:.3g} ms within [{self.slack:g}·target, target]"
        clamped = min(self.max_ms, max(floor, new))
        if clamped > new:
            source = "one batch's service time" if floor > self.min_ms else "min_ms"
            reason += f"; raised to the floor {floor:.3g} ms ({source})"
        self.steps += 1
        self.window_ms = clamped
        self.history.append(WindowDecision(self.steps, old, clamped, latency, reason, floor, full))
        return clamped

    def floor_ms(self, service_ms: float | None = None) -> float:
        """The lowest window a step may set: max(min_ms, service_ms), at most max_ms."""
        if service_ms is None:
            return self.min_ms
        service = check_float("service_ms", service_ms, low=0.0)
        return min(self.max_ms, max(self.min_ms, service))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(window_ms={self.window_ms:g}, target_p99_ms={self.target_p99_ms:g}, "
                f"steps={self.steps}, bounds=[{self.min_ms:g}, {self.max_ms:g}])")
