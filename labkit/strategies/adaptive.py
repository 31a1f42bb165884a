"""Adaptive strategies: the batch size follows a signal measured during training.

Chapters: Loss-based batching (task 4), Confidence-based batching (task 5), Gradient noise scale (task 6),
Memory-based batching.
"""
from __future__ import annotations

import math
from dataclasses import replace

from labkit.checks import check_choice, check_float, check_int
from labkit.signals import DELTAS, loss_tracker, max_entropy, window_std
from labkit.strategies.base import Adaptive, Decision, Param, Strategy


class LossBased(Adaptive):
    """Grow the batch while the loss falls, shrink it when the loss rises or fluctuates (lab task 4).

    The loss change is read one of three ways (``delta``, see ``labkit.signals``):

    * ``"diff"``:     Δ = loss_t − loss_{t−1}
    * ``"ema"``:      m_t = α·loss_t + (1 − α)·m_{t−1},  Δ = m_t − m_{t−1}
    * ``"variance"``: var = 1/K Σ (loss_k − mean)² over the last K = ``window`` losses

    Decision, with a relative ``tolerance`` τ (default 0.01 = 1 %):

    * diff / ema: Δ < −τ·|reference| → grow; Δ > τ·|reference| → shrink; otherwise hold. The reference is
      the previous loss (diff) or the previous average (ema).
    * variance: over the window of K losses, a fall from first to last by more than τ·|first| → grow, a
      rise by more than that → shrink; when it is flat, the variance decides: the loss has *settled* when
      its coefficient of variation √var / |mean| ≤ τ → grow, above τ it fluctuates → shrink. (Judging by
      the variance alone would read a steadily falling loss as a fluctuating one.)

    Growth follows ``change``: ``"linear"`` adds/subtracts ``a``, ``"exponential"`` multiplies/divides by ``a``.
    Until the tracker has enough history (1 loss for diff/ema, K for variance) the batch holds.

    Example::

        s = LossBased(b_init=32, a=2, delta="ema", alpha=0.3, min_batch=16, max_batch=512)
        for epoch in range(num_epochs):
            loss = train_one_epoch(batch_size=s.batch_size)
            s.step(loss=loss)
    """

    name = "loss"
    uses = ("loss",)
    requires = ("loss",)
    params = {
        "delta": Param("loss change: diff | ema | variance", "Δ mode", list(DELTAS)),
        "alpha": Param("EMA coefficient in (0, 1]", "α", [0.1, 0.3, 0.5, 0.7, 0.9], when=("delta", "ema")),
        "window": Param("K, the window of the loss variance", "K (window)", [2, 3, 5, 8],
                        when=("delta", "variance")),
        "tolerance": Param("relative loss change (or variation) treated as no change", "τ"),
    }

    def __init__(self, b_init: int = 32, *, a: float = 2.0, change: str = "exponential", delta: str = "diff",
                 alpha: float = 0.3, window: int = 3, tolerance: float = 0.01, **bounds):
        super().__init__(b_init, a=a, change=change, **bounds)
        self.delta = check_choice("delta", delta, DELTAS)
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.window = check_int("window", window, low=2)
        self.tolerance = check_float("tolerance", tolerance, low=0.0)
        self.tracker = loss_tracker(self.delta, alpha=self.alpha, window=self.window)

    def _decide(self, loss: float) -> tuple[float, str]:
        reference = self._reference()
        reading = self.tracker.update(loss)
        if reading is None:
            return self.value, f"hold: warming up the {self.delta} tracker"
        if self.delta == "variance":
            return self._judge_window(reading)
        threshold = self.tolerance * abs(reference)
        if reading < -threshold:
            return self._grown(), f"grow: loss fell (Δ {reading:.3g})"
        if reading > threshold:
            return self._shrunk(), f"shrink: loss rose (Δ {reading:.3g})"
        return self.value, f"hold: |Δ| {abs(reading):.3g} within tolerance"

    def _judge_window(self, variance: float) -> tuple[float, str]:
        first, last = self.tracker.values[0], self.tracker.values[-1]
        change = last - first
        if change < -self.tolerance * abs(first):
            return self._grown(), f"grow: loss fell over the window ({first:.3g} → {last:.3g})"
        if change > self.tolerance * abs(first):
            return self._shrunk(), f"shrink: loss rose over the window ({first:.3g} → {last:.3g})"
        mean = self.tracker.mean
        std = variance ** 0.5 if math.isfinite(variance) else window_std(self.tracker.values)  # huge losses
        cv = std / abs(mean) if mean else float("inf")
        if cv <= self.tolerance:
            return self._grown(), f"grow: loss settled (cv {cv:.3g} <= {self.tolerance:g})"
        return self._shrunk(), f"shrink: loss fluctuates (cv {cv:.3g} > {self.tolerance:g})"

    def _prepare(self, state) -> None:
        """The tracker's class follows the saved ``delta``: rebuild it before its state loads."""
        self.tracker = loss_tracker(check_choice("delta", state["delta"], DELTAS), alpha=state["alpha"],
                                    window=state["window"])

    def _check(self) -> None:
        super()._check()
        for name in ("alpha", "window"):
            if name in vars(self.tracker) and getattr(self.tracker, name) != getattr(self, name):
                raise ValueError(f"tracker.{name}={getattr(self.tracker, name)!r} differs from "
                                 f"{name}={getattr(self, name)!r}: expected the same value")

    def _reference(self) -> float:
        """The value the change is relative to: the previous loss or the previous average."""
        if self.delta == "diff":
            return self.tracker.previous or 0.0
        if self.delta == "ema":
            return self.tracker.average or 0.0
        return 0.0


class ConfidenceBased(Adaptive):
    """Follow the model's confidence, measured by its mean softmax entropy (lab task 5).

    H(p) = −Σ_i p_i log p_i lies in [0, log C]; the rule reads the normalised h = H / log C ∈ [0, 1]:
    h < ``low`` (confident) → grow; h > ``high`` (uncertain) → shrink; otherwise hold.
    Pass the mean entropy in nats as ``step(entropy=...)`` (``labkit.signals.mean_entropy`` computes it).
    """

    name = "confidence"
    uses = ("entropy",)
    requires = ("entropy",)
    params = {
        "num_classes": Param("C, the number of classes (the entropy is divided by log C)", "classes"),
        "low": Param("grow below this normalised entropy", "low (h)", [0.1, 0.2, 0.3, 0.4]),
        "high": Param("shrink above this normalised entropy", "high (h)", [0.5, 0.6, 0.7, 0.8]),
    }

    def __init__(self, b_init: int = 32, *, num_classes: int = 10, low: float = 0.2, high: float = 0.6,
                 a: float = 2.0, change: str = "exponential", **bounds):
        super().__init__(b_init, a=a, change=change, **bounds)
        self.num_classes = check_int("num_classes", num_classes, low=2)
        self.low = check_float("low", low, low=0.0, high=1.0)
        self.high = check_float("high", high, low=0.0, high=1.0)
        if self.low > self.high:
            raise ValueError(f"low={self.low:g} is greater than high={self.high:g}: expected low <= high")

    def _decide(self, entropy: float) -> tuple[float, str]:
        h_max = max_entropy(self.num_classes)
        if not -1e-6 <= entropy <= h_max + 1e-6:
            raise ValueError(f"signal entropy={entropy:g} is outside [0, log C] = [0, {h_max:.4f}] "
                             f"for num_classes={self.num_classes}: pass the mean entropy in nats")
        h = entropy / h_max
        if h < self.low:
            return self._grown(), f"grow: confident (h {h:.3f} < {self.low:g})"
        if h > self.high:
            return self._shrunk(), f"shrink: uncertain (h {h:.3f} > {self.high:g})"
        return self.value, f"hold: h {h:.3f} in [{self.low:g}, {self.high:g}]"


class GNSBased(Strategy):
    """Move the batch toward the gradient noise scale B_simple = tr(Σ)/‖G‖² (McCandlish et al. 2018, §2.2).

    Each ``step(gns=B_simple)`` smooths the reading, ĝ ← α·gns + (1 − α)·ĝ (ĝ starts at the first
    reading; a non-positive estimate, which unbiased estimators can give, is skipped), takes the target ``scale``·ĝ and moves there, but by at most a factor ``a`` per step:
    B ← clamp(target, B/a, B·a), then the usual bounds. Training near B_simple balances the number of
    steps against the number of samples (the paper's critical batch size).
    """

    name = "gns"
    uses = ("gns",)
    requires = ("gns",)
    params = {"alpha": Param("smoothing of the noise scale, in (0, 1]", "α", [0.1, 0.3, 0.5, 0.7, 0.9]),
              "a": Param("the most the batch moves per decision, a factor", "a", [1.25, 1.5, 2.0, 4.0]),
              "scale": Param("target = scale · B_simple", "scale", [0.5, 1.0, 2.0])}

    def __init__(self, b_init: int = 32, *, alpha: float = 0.3, a: float = 2.0, scale: float = 1.0, **bounds):
        super().__init__(b_init, **bounds)
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.a = check_float("a", a, low=1.0, low_open=True)
        self.scale = check_float("scale", scale, low=0.0, low_open=True)
        self.smoothed: float | None = None

    def _decide(self, gns: float) -> tuple[float, str]:
        if gns <= 0:  # unbiased estimators can dip below zero when the signal is tiny: not a reading
            return self.value, f"hold: ignored non-positive estimate {gns:.3g}"
        self.smoothed = gns if self.smoothed is None else self.alpha * gns + (1 - self.alpha) * self.smoothed
        target = self.scale * self.smoothed
        value = min(max(target, self.value / self.a), self.value * self.a)
        capped = "" if value == target else f", capped at ×{self.a:g}"
        return value, f"toward B_simple {self.smoothed:.1f}{capped}"

    def _check(self) -> None:
        super()._check()
        if self.smoothed is not None:
            check_float("smoothed", self.smoothed, low=0.0, low_open=True)


class MemoryBased(Strategy):
    """Fill the device's memory to a target: B follows the peak memory of training steps.

    The signal is the usage u = peak bytes of a step (or an epoch's steps) / the memory budget, which the
    training loop measures (``torch.cuda.max_memory_allocated``, reset per step, against the device's
    memory or a set budget; on a CPU, ``labkit.memory.StepMemory``'s estimate against a given budget).
    Inside [``low``, ``high``] the batch holds. Outside, it moves toward the batch expected to use
    ``target``: peak memory is close to affine in the batch, u(B) ≈ u_0 + s·B, so with two readings at
    different batches the slope s = Δu/ΔB gives B* = B + (target − u)/s; with one reading (or a slope
    that is not positive) the proportional guess B* = B·target/u, which undershoots a growth and
    overshoots a shrink while u_0 > 0 (the safe side both times). Each move is capped at a factor ``a``.

    ``oom()`` is the other half: the loop calls it when a step at the current batch ran out of memory.
    It halves the batch and remembers the failure, so no later growth returns to a batch that failed.
    """

    name = "memory"
    uses = ("memory",)
    requires = ("memory",)
    params = {
        "target": Param("the share of the memory budget aimed at, e.g. 0.8", "target share",
                        [0.5, 0.6, 0.7, 0.8, 0.9]),
        "low": Param("grow below this share of the memory budget", "low (memory share)", [0.3, 0.5, 0.6]),
        "high": Param("shrink above this share of the memory budget", "high (memory share)", [0.9, 0.95]),
        "a": Param("the most the batch moves per decision, a factor", "a", [1.5, 2.0, 4.0, 8.0]),
        "b_init": replace(Strategy.params["b_init"], options=[32, 256, 2048]),
        "max_batch": replace(Strategy.params["max_batch"], options=[1024, 4096, 16384]),
    }

    def __init__(self, b_init: int = 32, *, target: float = 0.8, low: float = 0.6, high: float = 0.9,
                 a: float = 2.0, **bounds):
        super().__init__(b_init, **bounds)
        self.target = check_float("target", target, low=0.0, high=1.0, low_open=True)
        self.low = check_float("low", low, low=0.0, high=1.0)
        self.high = check_float("high", high, low=0.0, high=1.0, low_open=True)
        if not self.low <= self.target <= self.high:
            raise ValueError(f"target={self.target:g} is outside [low, high] = [{self.low:g}, {self.high:g}]: "
                             f"expected low <= target <= high")
        self.a = check_float("a", a, low=1.0, low_open=True)
        self.readings: list[list[float]] = []    # [batch, usage] at the last two distinct batch sizes
        self.failed: int | None = None           # the smallest batch that ran out of memory

    def _decide(self, memory: float) -> tuple[float, str]:
        if memory < 0:
            raise ValueError(f"signal memory={memory:g} is negative: pass peak bytes / budget bytes (>= 0)")
        batch = self.batch_size
        if self.readings and self.readings[-1][0] == batch:
            self.readings[-1] = [batch, memory]
        else:
            self.readings = (self.readings + [[batch, memory]])[-2:]
        if self.low <= memory <= self.high:
            return self.value, f"hold: memory {memory:.0%} in [{self.low:.0%}, {self.high:.0%}]"
        slope = 0.0
        if len(self.readings) == 2:
            (b0, u0), (b1, u1) = self.readings
            slope = (u1 - u0) / (b1 - b0)
        if slope > 0:
            wanted, how = batch + (self.target - memory) / slope, "affine fit"
        elif memory > 0:
            wanted, how = batch * self.target / memory, "proportional"
        else:
            wanted, how = batch * self.a, "no memory used"
        value = min(max(wanted, self.value / self.a), self.value * self.a)
        if self.failed is not None:
            value = min(value, self.failed - self.multiple_of)
        verb = "grow" if memory < self.low else "shrink"
        return value, f"{verb}: memory {memory:.0%} toward {self.target:.0%} ({how})"

    def _check(self) -> None:
        super()._check()
        if self.failed is not None:
            check_int("failed", self.failed, low=1)
        if len(self.readings) > 2:
            raise ValueError(f"readings holds {len(self.readings)} entries: expected at most 2 [batch, usage] pairs")
        for i, reading in enumerate(self.readings):
            if not isinstance(reading, list) or len(reading) != 2:
                raise ValueError(f"readings[{i}]={reading!r} is not a [batch, usage] pair")
            check_int(f"readings[{i}] batch", reading[0], low=1)
            check_float(f"readings[{i}] usage", reading[1], low=0.0)

    def oom(self, failed: int | None = None) -> int:
        """A step of ``failed`` examples (default: the current batch) ran out of memory: halve the smaller of
        the two (not below ``min_batch``) and never grow back to ``failed``. Returns the new batch size;
        the same size when it is already ``min_batch`` (nothing left to try)."""
        old = self.batch_size
        failed = old if failed is None else check_int("failed", failed, low=1)
        self.failed = failed if self.failed is None else min(self.failed, failed)
        self.value = self._clamp(min(old, failed) / 2)
        self.batch_size = self._round(self.value)
        self.readings = []                # readings before the failure say little about what fits now
        reason = f"halve: out of memory at batch {failed}"
        self.history.append(Decision(self.steps, old, self.batch_size, reason))
        return self.batch_size
