"""Goodput: the batch size that makes the most training progress per second, from what training measures.

A step at batch B takes t(B) seconds and, with gradient noise scale B_noise, does the work of
E(B)·B/B₀ samples at the base batch B₀ (McCandlish et al. 2018; Pollux, Qiao et al. OSDI '21, §3):

    t(B) ≈ α + β·B                               step time, fitted to the sizes seen so far
    E(B) = (B_noise + B₀) / (B_noise + B)        statistical efficiency, 1 at B₀, falling as B grows
    goodput(B) = B / t(B) · E(B)                 useful samples per second

Setting d log goodput / dB = 1/B − β/(α + β·B) − 1/(B_noise + B) to zero gives α·B_noise = β·B², so

    B* = √(α·B_noise / β)

the one maximum (goodput rises below B*, falls above it). Fixed overhead α pushes B up, per-sample cost β
and a small noise scale pull it down. With fewer than two sizes timed there is no slope: the model assumes
the step time does not grow with B (t = the one reading), which favours growing, so the next decision has
a second size to fit. Chapter: Goodput.
"""
from __future__ import annotations

import math

from labkit.checks import check_float, check_int
from labkit.state import Stateful


class AffineFit(Stateful):
    """y ≈ a + b·x by least squares over the distinct x seen, each weighted once by the mean of its readings
    (a size timed a thousand times does not outvote one timed twice). ``observe`` adds a reading;
    ``line()`` is (a, b), or None before two distinct x; ``band(x)`` is 2 standard errors of the fitted
    line at x, s·√(1/k + (x − x̄)²/Sxx)·2 with s² the residual variance over k ≥ 3 sizes (nan below)."""

    def __init__(self):
        self.points: list[list[float]] = []          # [x, count, mean y], sorted by x; JSON-safe

    def observe(self, x: float, y: float) -> None:
        x, y = check_float("x", x), check_float("y", y)
        for point in self.points:
            if point[0] == x:
                point[1] += 1
                point[2] += (y - point[2]) / point[1]
                return
        self.points = sorted([*self.points, [x, 1, y]])

    def line(self) -> tuple[float, float] | None:
        if len(self.points) < 2:
            return None
        xs, ys = zip(*((p[0], p[2]) for p in self.points))
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
        return my - b * mx, b

    def predict(self, x: float) -> float:
        a, b = self.line() or (self.points[0][2], 0.0)
        return a + b * x

    def band(self, x: float) -> float:
        k = len(self.points)
        if k < 3:
            return math.nan
        a, b = self.line()
        xs = [p[0] for p in self.points]
        mx = sum(xs) / k
        s2 = sum((p[2] - a - b * p[0]) ** 2 for p in self.points) / (k - 2)
        return 2 * math.sqrt(s2 * (1 / k + (x - mx) ** 2 / sum((v - mx) ** 2 for v in xs)))

    def _check(self) -> None:
        for x, count, _ in self.points:
            check_float("x", x)
            check_int("count", count, low=1)


def efficiency(batch: float, base_batch: float, b_noise: float) -> float:
    """E(B) = (B_noise + B₀)/(B_noise + B): the share of a step's samples that count, relative to B₀."""
    return (b_noise + base_batch) / (b_noise + batch)


def goodput(batch: float, alpha: float, beta: float, b_noise: float, base_batch: float) -> float:
    """B / (α + β·B) · E(B): useful samples per second at batch B."""
    return batch / (alpha + beta * batch) * efficiency(batch, base_batch, b_noise)


def optimum(alpha: float, beta: float, b_noise: float) -> float:
    """B* = √(α·B_noise/β), the unconstrained maximum of goodput; inf when β ≤ 0 (time does not grow with
    B), 0 when α ≤ 0 or B_noise ≤ 0 (no overhead to amortise, or no noise to average)."""
    if beta <= 0:
        return math.inf
    return math.sqrt(max(alpha, 0.0) * max(b_noise, 0.0) / beta)


def best_batch(alpha: float, beta: float, b_noise: float, low: int, high: int, base_batch: int = 1) -> int:
    """The integer B in [low, high] with the highest goodput: goodput has one maximum, at B*, so it is
    ⌊B*⌋ or ⌈B*⌉ clamped to the range (the endpoints when B* lies outside it)."""
    low, high = check_int("low", low, low=1), check_int("high", high, low=1)
    if low > high:
        raise ValueError(f"low={low} is greater than high={high}: expected low <= high")
    star = optimum(alpha, beta, b_noise)
    if math.isinf(star):
        return high
    candidates = {min(max(b, low), high) for b in (math.floor(star), math.ceil(star))}
    if beta <= 0 or alpha + beta * low <= 0:
        return max(candidates)
    return max(sorted(candidates), key=lambda b: goodput(b, alpha, beta, b_noise, base_batch))
