"""The protocol every batch-size strategy follows, modelled on ``torch.optim.lr_scheduler``.

A strategy holds a current ``batch_size`` and changes it only in ``step(**signals)``: one call per
decision point (an epoch or an iteration, as the training loop chooses). Signals arrive as keyword
arguments (``loss=``, ``entropy=``, ``gns=``, ``epoch=``, …); a strategy reads the ones it names in
``uses`` and ignores the rest, so the loop can pass the same signals to every strategy.

Every strategy keeps its value inside the bounds and rounds it:

    B = round_to_multiple(clamp(value, min_batch, max_batch), multiple_of)

The unrounded value is kept too (``value``), so slow growth such as ×1.05 per step is not lost to rounding.
Each call appends a ``Decision(step, old, new, reason)`` to ``history``.

A strategy's hyper-parameters are declared once: their types, defaults and checks in the constructor, and
beside it a ``Param`` per parameter in the class's ``params`` (help text, panel label and options, when it
matters). Defining a subclass with a ``name`` registers it in ``REGISTRY``: ``labkit.strategies.build``,
the command line's flags and the panels' controls all read it from there, so a new strategy needs no edit
anywhere else.
"""
from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from labkit.checks import check_float, check_int
from labkit.state import Stateful


@dataclass(frozen=True)
class Decision:
    """One entry of a strategy's decision log: after call ``step``, the batch went ``old`` → ``new``."""
    step: int
    old: int
    new: int
    reason: str


@dataclass(frozen=True)
class Param:
    """One hyper-parameter of a strategy, described once for every reader: ``help`` for its command-line
    flag, ``label`` and ``options`` for a panel's control (a list of values, or a dict of lists keyed by the
    value of ``change``), ``when = (other, value)`` if it matters only when ``other`` is ``value``, and
    ``parse`` to read it from command-line text (default: the type its constructor annotation names)."""
    help: str
    label: str | None = None
    options: Any = None
    when: tuple[str, str] | None = None
    parse: Callable[[str], Any] | None = None


REGISTRY: dict[str, type[Strategy]] = {}   # name → class, in the order the classes were defined


class Strategy(Stateful, ABC):
    """Base class: bounds, clamping, rounding, the decision log and ``state_dict``.

    Args:
        b_init: batch size before the first ``step()`` (default 32).
        min_batch, max_batch: bounds every decision is clamped to (defaults 8 and 1024).
        multiple_of: round every batch size to a multiple of this (default 1). Both bounds must be
            multiples of it. Multiples of 8 or 32 keep GPU kernels efficient and limit recompiles.

    Subclasses store their hyper-parameters and implement ``_decide(**signals) -> (value, reason)``.
    """

    name: ClassVar[str] = ""
    uses: ClassVar[tuple[str, ...]] = ()        # signals the rule reads
    requires: ClassVar[tuple[str, ...]] = ()    # signals that must be present on every step
    params: ClassVar[dict[str, Param]] = {
        "b_init": Param("batch size at the start", "B_init", [16, 32, 64]),
        "min_batch": Param("lower bound on the batch size", "min batch", [8, 16]),
        "max_batch": Param("upper bound on the batch size", "max batch", [256, 512, 1024]),
        "multiple_of": Param("round every batch size to a multiple of this (8 or 32 suit GPUs)", "multiple of"),
    }

    records = {"history": Decision}

    def __init_subclass__(cls, **kwargs):
        """Register a concrete strategy (one with a ``name``) and check that every constructor parameter
        has its ``Param``."""
        super().__init_subclass__(**kwargs)
        if not vars(cls).get("name"):
            return
        undeclared = [p for p in cls.parameters() if cls.param(p) is None]
        if undeclared:
            raise TypeError(f"strategy {cls.name!r} ({cls.__name__}) declares no Param for {undeclared}: add "
                            f"them to its class attribute params = {{'{undeclared[0]}': Param('help'), ...}}")
        REGISTRY[cls.name] = cls

    @classmethod
    def param(cls, name: str) -> Param | None:
        """The ``Param`` of ``name``: the nearest declaration along the class's bases (a subclass may give a
        parameter its own help or options), or None."""
        for klass in cls.__mro__:
            declared = vars(klass).get("params", {})
            if name in declared:
                return declared[name]
        return None

    def __init__(self, b_init: int = 32, *, min_batch: int = 8, max_batch: int = 1024, multiple_of: int = 1):
        self.multiple_of = check_int("multiple_of", multiple_of, low=1)
        self.min_batch = check_int("min_batch", min_batch, low=1)
        self.max_batch = check_int("max_batch", max_batch, low=1)
        if self.min_batch > self.max_batch:
            raise ValueError(f"min_batch={self.min_batch} is greater than max_batch={self.max_batch}: "
                             f"expected min_batch <= max_batch")
        for bound in ("min_batch", "max_batch"):
            value = getattr(self, bound)
            if value % self.multiple_of:
                low = value - value % self.multiple_of
                raise ValueError(f"{bound}={value} is not a multiple of multiple_of={self.multiple_of}: "
                                 f"use {max(low, self.multiple_of)} or {low + self.multiple_of}")
        b_init = check_int("b_init", b_init, low=1)
        if not self.min_batch <= b_init <= self.max_batch:
            raise ValueError(f"b_init={b_init} is outside [min_batch, max_batch] = "
                             f"[{self.min_batch}, {self.max_batch}]: pick b_init in that range")
        self.b_init = b_init
        self.steps = 0                       # calls of step() so far
        self.value = float(b_init)           # unrounded, clamped
        self.batch_size = self._round(self.value)
        self.history: list[Decision] = []

    # -- the protocol -------------------------------------------------------------------------------
    def step(self, **signals: Any) -> int:
        """Take one decision from the signals and return the new batch size."""
        readings = self._read_signals(signals)
        old = self.batch_size
        value, reason = self._decide(**readings)
        self.steps += 1
        self.value = self._clamp(value)
        self.batch_size = self._round(self.value)
        self.history.append(Decision(self.steps, old, self.batch_size, reason))
        return self.batch_size

    @abstractmethod
    def _decide(self, **signals: float) -> tuple[float, str]:
        """The rule: the next (unclamped) value and the reason for it."""

    def oom(self, failed: int | None = None) -> int | None:
        """A training step of ``failed`` examples ran out of memory. A strategy that adapts returns the batch
        size to retry at (``MemoryBased`` halves it); this base rule does not, and returns None: the
        training loop then stops and says what to do."""
        return None

    # -- bounds and rounding ----------------------------------------------------------------------
    def _clamp(self, value: float) -> float:
        return min(max(value, float(self.min_batch)), float(self.max_batch))

    def _round(self, value: float) -> int:
        """Nearest multiple of ``multiple_of`` (halves round up); bounds are multiples, so it stays inside."""
        m = self.multiple_of
        return int(math.floor(value / m + 0.5)) * m

    def _bounded(self, value: float) -> int:
        """The batch size a raw value becomes: round(clamp(value))."""
        return self._round(self._clamp(value))

    # -- signals ----------------------------------------------------------------------------------
    def _read_signals(self, signals: dict[str, Any]) -> dict[str, float]:
        missing = [name for name in self.requires if signals.get(name) is None]
        if missing:
            raise TypeError(f"{type(self).__name__}.step() needs the signal(s) {', '.join(missing)}: "
                            f"call step({', '.join(f'{m}=...' for m in missing)})")
        readings = {}
        for name in self.uses:
            if signals.get(name) is not None:
                readings[name] = check_float(f"signal {name}", signals[name])
        return readings

    # -- state ------------------------------------------------------------------------------------
    @classmethod
    def parameters(cls) -> list[str]:
        """The keyword parameters of the constructor, bounds included (each is kept as an attribute)."""
        names = []
        for klass in cls.__mro__:
            if klass is object or "__init__" not in vars(klass):
                continue
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self" and p.name not in names:
                    names.append(p.name)
        return names

    def _check(self) -> None:
        """A loaded state must be one the strategy could reach: the constructor accepts its hyper-parameters
        (so bounds, ranges and multiples are checked by the same code as at construction), and the batch
        size is round(clamp(value)) inside the bounds."""
        rebuilt = type(self)(**{name: getattr(self, name) for name in self.parameters()})
        for name in self.parameters():                     # normalised forms, e.g. sorted milestones
            setattr(self, name, getattr(rebuilt, name))
        check_int("steps", self.steps, low=0)
        value = check_float("value", self.value, low=self.min_batch, high=self.max_batch)
        batch = check_int("batch_size", self.batch_size, low=self.min_batch, high=self.max_batch)
        if batch % self.multiple_of:
            raise ValueError(f"batch_size={batch} is not a multiple of multiple_of={self.multiple_of}")
        if batch != self._round(value):
            raise ValueError(f"batch_size={batch} does not match value={value:g}, which rounds to "
                             f"{self._round(value)}: save and load the state without editing it")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(batch_size={self.batch_size}, steps={self.steps}, "
                f"bounds=[{self.min_batch}, {self.max_batch}])")


class Adaptive(Strategy):
    """Base for strategies that grow or shrink by a step ``a`` from signals.

    ``change="linear"``: grow B ← B + a, shrink B ← B − a (a > 0).
    ``change="exponential"``: grow B ← B·a, shrink B ← B / a (a > 1).
    """

    params = {
        "a": Param("the step: samples added (change=linear) or a factor (change=exponential)", "a",
                   {"exponential": [1.25, 1.5, 2.0, 3.0], "linear": [8, 16, 32, 64]}),
        "change": Param("growth: linear | exponential", "change", ["exponential", "linear"]),
    }

    def __init__(self, b_init: int = 32, *, a: float = 2.0, change: str = "exponential", **bounds):
        super().__init__(b_init, **bounds)
        if change not in ("linear", "exponential"):
            raise ValueError(f"change={change!r} is not allowed: expected 'linear' or 'exponential'")
        self.change = change
        if change == "linear":
            self.a = check_float("a", a, low=0.0, low_open=True)
        else:
            self.a = check_float("a", a, low=1.0, low_open=True)

    def _grown(self) -> float:
        return self.value + self.a if self.change == "linear" else self.value * self.a

    def _shrunk(self) -> float:
        return self.value - self.a if self.change == "linear" else self.value / self.a
