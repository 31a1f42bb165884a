"""Schedules: the batch size is a function of the step count k alone (no signals but an optional epoch).

Each has a closed form ``batch_size_at(k)``, the size after k calls of ``step()``; tests check it against
the step-by-step rule. Chapter: Schedules (linear, exponential, cyclical, warm-up, milestones).
"""
from __future__ import annotations

import math
from abc import abstractmethod
from typing import Mapping

from labkit.checks import check_choice, check_float, check_int
from labkit.strategies.base import Param, Strategy


class Schedule(Strategy):
    """A strategy whose value after k steps is ``_value_at(k)``; ``step()`` just advances k."""

    def _decide(self, **signals: float) -> tuple[float, str]:
        return self._value_at(self.steps + 1), self.rule

    @abstractmethod
    def _value_at(self, k: int) -> float:
        """The formula: the unclamped value after k steps."""

    def batch_size_at(self, k: int) -> int:
        """Closed form: the batch size after k calls of ``step()``, round(clamp(formula(k)))."""
        return self._bounded(self._value_at(check_int("k", k, low=0)))

    @property
    def rule(self) -> str:
        return type(self).__name__.lower()


class Fixed(Schedule):
    """B_k = B_init for every k (the baseline)."""

    name = "fixed"

    def _value_at(self, k: int) -> float:
        return float(self.b_init)


class Linear(Schedule):
    """Linear growth (lab task 1):  B_k = clamp(B_init + a·k, min_batch, max_batch).

    ``a`` is samples added per step; a negative ``a`` gives a linear decrease.

    Example::

        >>> s = Linear(b_init=32, a=16, min_batch=16, max_batch=128)
        >>> [s.step() for _ in range(8)]
        [48, 64, 80, 96, 112, 128, 128, 128]
    """

    name = "linear"
    params = {"a": Param("samples added per step (negative: a linear decrease)", "a", [-16, 8, 16, 32, 64])}

    def __init__(self, b_init: int = 32, *, a: float = 32.0, **bounds):
        super().__init__(b_init, **bounds)
        self.a = check_float("a", a)

    def _value_at(self, k: int) -> float:
        return self.b_init + self.a * k

    @property
    def rule(self) -> str:
        return f"B = {self.b_init} + {self.a:g}·k"


class Exponential(Schedule):
    """Exponential growth (lab task 2):  B_k = clamp(B_init · a^k, min_batch, max_batch), a > 0.

    a > 1 grows, 0 < a < 1 decays. Example: B_init=32, a=2 gives 32, 64, 128, … up to max_batch.
    """

    name = "exponential"
    params = {"a": Param("factor per step (below 1: a decrease)", "a", [0.8, 1.1, 1.25, 1.5, 2.0])}

    def __init__(self, b_init: int = 32, *, a: float = 2.0, **bounds):
        super().__init__(b_init, **bounds)
        self.a = check_float("a", a, low=0.0, low_open=True)

    def _value_at(self, k: int) -> float:
        try:
            return self.b_init * self.a ** k
        except OverflowError:  # far past max_batch: the clamp gives max_batch anyway
            return math.inf

    @property
    def rule(self) -> str:
        return f"B = {self.b_init}·{self.a:g}^k"


CYCLE_MODES = ("triangular", "cosine", "sawtooth")


class Cyclical(Schedule):
    """Cycles between ``b_init`` (low) and ``max_batch`` (high) every ``period`` steps (lab task 3).

    With u = (k mod period) / period the fraction of the way up is
      triangular: f = 1 − |2u − 1|            (low → high at mid-cycle → low)
      cosine:     f = (1 − cos 2πu) / 2       (the same, smooth)
      sawtooth:   f = (k mod period) / (period − 1)  (low → high, then restart at low, as the lab words it)
    and B_k = b_init + (max_batch − b_init)·f.
    """

    name = "cyclical"
    params = {"period": Param("steps per cycle", "period", [4, 6, 8, 10, 12, 16]),
              "mode": Param("triangular | cosine | sawtooth", "cycle mode", list(CYCLE_MODES))}

    def __init__(self, b_init: int = 32, *, period: int = 10, mode: str = "triangular", **bounds):
        super().__init__(b_init, **bounds)
        self.period = check_int("period", period, low=2)
        self.mode = check_choice("mode", mode, CYCLE_MODES)

    def _value_at(self, k: int) -> float:
        phase = k % self.period
        u = phase / self.period
        if self.mode == "triangular":
            fraction = 1.0 - abs(2.0 * u - 1.0)
        elif self.mode == "cosine":
            fraction = (1.0 - math.cos(2.0 * math.pi * u)) / 2.0
        else:
            fraction = phase / (self.period - 1)
        return self.b_init + (self.max_batch - self.b_init) * fraction

    @property
    def rule(self) -> str:
        return f"{self.mode} cycle, period {self.period}"


class Progressive(Schedule):
    """Batch-size warm-up from ``b_init`` to ``target`` over ``warmup`` steps, then constant.

    With t = min(k / warmup, 1):
      linear:      B_k = b_init + (target − b_init)·t
      exponential: B_k = b_init · (target / b_init)^t      (doubles at an even pace)
    ``target`` defaults to ``max_batch``.
    """

    name = "progressive"
    params = {"target": Param("batch size at the end of the warm-up (default: max_batch)", "target"),
              "warmup": Param("steps of the warm-up", "warm-up steps", [5, 10, 15, 20, 30]),
              "change": Param("warm-up shape: linear | exponential", "change", ["linear", "exponential"])}

    def __init__(self, b_init: int = 32, *, target: int | None = None, warmup: int = 10,
                 change: str = "linear", **bounds):
        super().__init__(b_init, **bounds)
        self.target = self.max_batch if target is None else check_int(
            "target", target, low=self.min_batch, high=self.max_batch)
        self.warmup = check_int("warmup", warmup, low=1)
        self.change = check_choice("change", change, ("linear", "exponential"))

    def _value_at(self, k: int) -> float:
        t = min(k / self.warmup, 1.0)
        if self.change == "linear":
            return self.b_init + (self.target - self.b_init) * t
        return self.b_init * (self.target / self.b_init) ** t

    @property
    def rule(self) -> str:
        return f"{self.change} warm-up to {self.target} over {self.warmup}"


def parse_milestones(text: str) -> dict[int, int]:
    """The one written form of epoch milestones, on the command line and in run specs alike:
    '5>128;10>256' → {5: 128, 10: 256} (EPOCH>BATCH pairs joined by ';'; quote it in a shell)."""
    try:
        return {int(e): int(b) for e, b in (pair.split(">") for pair in text.split(";") if pair)}
    except ValueError:
        raise ValueError(f"milestones={text!r} is not allowed: expected EPOCH>BATCH pairs joined by ';', "
                         f"e.g. '5>128;10>256'") from None


class EpochBased(Schedule):
    """Milestones, like ``MultiStepLR``: B = milestones[m] for the largest milestone m ≤ epoch.

    ``milestones`` maps an epoch to the batch size used from that epoch on, e.g. ``{5: 128, 10: 256}``.
    ``step(epoch=e)`` jumps to epoch e; without ``epoch`` the count of calls is the epoch.
    """

    name = "epoch"
    uses = ("epoch",)
    params = {"milestones": Param("'EPOCH>BATCH;...', e.g. '5>128;10>256' (quoted), as in run specs",
                                  "milestones", parse=parse_milestones)}

    def __init__(self, b_init: int = 32, *, milestones: Mapping[int, int] | None = None, **bounds):
        super().__init__(b_init, **bounds)
        pairs = isinstance(milestones, (list, tuple)) and all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in milestones)   # as state_dict saves them
        if milestones is not None and not isinstance(milestones, Mapping) and not pairs:
            raise TypeError(f"milestones={milestones!r} must map an epoch to the batch size used from it on, "
                            f"e.g. {{5: 128, 10: 256}}")
        milestones = dict(milestones or {})
        for epoch, batch in milestones.items():
            check_int("milestone epoch", epoch, low=1)
            check_int(f"milestones[{epoch}]", batch, low=self.min_batch, high=self.max_batch)
        self.milestones = sorted([int(epoch), int(batch)] for epoch, batch in milestones.items())  # JSON-safe

    def _decide(self, epoch: float | None = None) -> tuple[float, str]:
        k = self.steps + 1 if epoch is None else check_int("signal epoch", epoch, low=0)
        return self._value_at(k), f"epoch {k}"

    def _value_at(self, k: int) -> float:
        batch = self.b_init
        for epoch, value in self.milestones:
            if epoch <= k:
                batch = value
        return float(batch)
