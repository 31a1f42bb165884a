"""Signals a strategy reacts to: how the loss changes, and how confident the model is.

Loss change, three ways (lab sheet, task 4); each tracker's ``update(loss)`` returns the new reading, or
``None`` while it has too little history to say anything:

* ``LossDiff``:      Δ = loss_t − loss_{t−1}
* ``LossEMA``:       m_t = α·loss_t + (1 − α)·m_{t−1},  Δ = m_t − m_{t−1}   (m_0 = loss_0)
* ``LossVariance``:  var = 1/K · Σ_k (loss_k − mean)² over the last K values (the lab writes the sum
  Σ_k (loss_k − mean)², which is K times this; the mean keeps the number comparable across K)

Confidence (task 5): the softmax entropy H(p) = −Σ_i p_i log p_i, which is 0 for a one-hot prediction and
log C for the uniform one over C classes.

Everything here is plain Python except ``mean_entropy``, which works on a tensor's own methods (no torch
import), so strategies can use the trackers without touching a device.
Chapter: Loss-based batching; Confidence-based batching.
"""
from __future__ import annotations

import math
from collections import deque

from labkit.checks import check_float, check_int
from labkit.state import Stateful

DELTAS = ("diff", "ema", "variance")


class LossDiff(Stateful):
    """Δ = loss_t − loss_{t−1}; ``None`` on the first call."""

    def __init__(self):
        self.previous: float | None = None

    def update(self, loss: float) -> float | None:
        delta = None if self.previous is None else loss - self.previous
        self.previous = loss
        return delta

    def _check(self) -> None:
        if self.previous is not None:
            check_float("previous", self.previous)


class LossEMA(Stateful):
    """m_t = α·loss_t + (1 − α)·m_{t−1}; returns Δ = m_t − m_{t−1} (``None`` on the first call, m_0 = loss_0)."""

    def __init__(self, alpha: float = 0.3):
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.average: float | None = None

    def update(self, loss: float) -> float | None:
        if self.average is None:
            self.average = loss
            return None
        previous = self.average
        self.average = self.alpha * loss + (1.0 - self.alpha) * previous
        return self.average - previous

    def _check(self) -> None:
        check_float("alpha", self.alpha, low=0.0, high=1.0, low_open=True)
        if self.average is not None:
            check_float("average", self.average)


class LossVariance(Stateful):
    """var = 1/K · Σ (loss_k − mean)² over the last K = ``window`` losses; ``None`` until K are seen."""

    def __init__(self, window: int = 3):
        self.window = check_int("window", window, low=2)
        self.values: deque[float] = deque(maxlen=self.window)

    def update(self, loss: float) -> float | None:
        self.values.append(loss)
        if len(self.values) < self.window:
            return None
        return window_variance(self.values)

    @property
    def mean(self) -> float:
        return window_mean(self.values)

    def _check(self) -> None:
        window = check_int("window", self.window, low=2)
        if len(self.values) > window:
            raise ValueError(f"values holds {len(self.values)} losses: expected at most window={window}")
        for value in self.values:
            check_float("values entry", value)
        self.values = deque(self.values, maxlen=window)


SAFE = 1e150   # below this magnitude, the sums and squared deviations of a short window cannot overflow


def window_mean(values) -> float:
    """The mean of a short sequence; finite values give a finite mean (no overflow near the largest float)."""
    values = list(values)
    scale = max(map(abs, values))
    if scale < SAFE or not math.isfinite(scale):
        return sum(values) / len(values)
    return scale * (math.fsum(v / scale for v in values) / len(values))


def window_variance(values) -> float:
    """Population variance 1/K · Σ (x_k − mean)² of a short sequence. It never raises ``OverflowError``: for
    values of magnitude 1e150 and more the deviations are squared after scaling by the largest magnitude
    (``window_std``); a variance beyond the largest float (such losses that differ) is ``inf``."""
    values = list(values)
    if max(map(abs, values)) >= SAFE:
        std = window_std(values)
        return std * std
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def window_std(values) -> float:
    """Population standard deviation √(1/K · Σ (x_k − mean)²) of a short sequence, finite for any finite
    values: they are scaled by their largest magnitude before squaring."""
    values = list(values)
    scale = max(map(abs, values))
    if scale < SAFE or not math.isfinite(scale):
        return window_variance(values) ** 0.5 if math.isfinite(scale) else math.nan
    scaled = [v / scale for v in values]
    mean = math.fsum(scaled) / len(scaled)
    return scale * math.sqrt(math.fsum((x - mean) * (x - mean) for x in scaled) / len(scaled))


def loss_tracker(delta: str = "diff", *, alpha: float = 0.3, window: int = 3) -> Stateful:
    """The tracker for ``delta`` in ``DELTAS``."""
    if delta == "diff":
        return LossDiff()
    if delta == "ema":
        return LossEMA(alpha)
    if delta == "variance":
        return LossVariance(window)
    raise ValueError(f"delta={delta!r} is not allowed: expected one of {', '.join(map(repr, DELTAS))}")


def mean_entropy(logits):
    """Mean softmax entropy of a (N, C) logits tensor, in nats: mean_n −Σ_i p_ni log p_ni.

    Computed from ``log_softmax`` (stable for large logits) in float32; returns a 0-d tensor on the
    logits' device, so calling it inside the training loop does not force a CPU–GPU sync.
    """
    log_p = logits.float().log_softmax(dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1).mean()


def max_entropy(num_classes: int) -> float:
    """log C: the entropy of the uniform prediction over C classes, the upper end of H(p)."""
    return math.log(check_int("num_classes", num_classes, low=2))


def smoothed_target_entropy(num_classes: int, smoothing: float) -> float:
    """Entropy of a label-smoothed target, in nats: with q = 1 − ε + ε/C on the true class and ε/C on the others,
    H_ε = −q log q − (C − 1)(ε/C) log(ε/C)  (0 log 0 = 0; H_0 = 0, H_1 = log C).

    Cross-entropy against that target is lowest when the prediction equals it, so a model trained with label
    smoothing ε drifts toward a mean entropy of H_ε on the data it fits, not toward 0: a confidence rule whose
    ``low`` lies below H_ε / log C may never grow the batch.
    """
    c = check_int("num_classes", num_classes, low=2)
    eps = check_float("smoothing", smoothing, low=0.0, high=1.0)
    q, rest = 1 - eps + eps / c, eps / c
    return sum(-n * p * math.log(p) for n, p in ((1, q), (c - 1, rest)) if p > 0)
