"""Batch-size strategies: small, deterministic, pure-Python objects with a scheduler-like API.

    >>> import labkit.strategies as s
    >>> strategy = s.build("linear", b_init=32, a=16, min_batch=16, max_batch=128)
    >>> strategy.batch_size, strategy.step(), strategy.step()
    (32, 48, 64)

Names for ``build``: fixed, linear, exponential, cyclical, progressive, epoch, loss, confidence, gns, memory,
goodput, and any ``Strategy`` subclass defined with a ``name`` (it registers itself; see ``Param``).
Shared parameter names: b_init, min_batch, max_batch, multiple_of, a, alpha, window, delta, change.
"""
from __future__ import annotations

from labkit.strategies.base import REGISTRY, Adaptive, Decision, Param, Strategy
from labkit.strategies.schedules import Cyclical, EpochBased, Exponential, Fixed, Linear, Progressive, Schedule
from labkit.strategies.adaptive import ConfidenceBased, GNSBased, LossBased, MemoryBased
from labkit.strategies.goodput import GoodputBased
from labkit.strategies.coupling import LR_RULES, LR_RULES_WITH_ADASCALE, LRCoupling, adascale_gain, scaled_lr

STRATEGIES: dict[str, type[Strategy]] = REGISTRY   # every subclass with a name, in the order defined


def parameters(name: str) -> list[str]:
    """The keyword parameters ``build(name, ...)`` accepts, bounds included."""
    return _lookup(name).parameters()


def build(name: str, **params) -> Strategy:
    """Make the strategy called ``name`` with keyword ``params`` (see ``parameters(name)``)."""
    cls = _lookup(name)
    allowed = parameters(name)
    unknown = [p for p in params if p not in allowed]
    if unknown:
        raise TypeError(f"strategy {name!r} takes no parameter {unknown[0]!r}; "
                        f"its parameters are: {', '.join(allowed)}")
    return cls(**params)


def _lookup(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}: expected one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


__all__ = ["Strategy", "Schedule", "Adaptive", "Decision", "Param", "REGISTRY", "GoodputBased", "Fixed", "Linear",
           "Exponential", "Cyclical",
           "LossBased", "ConfidenceBased", "GNSBased", "MemoryBased", "Progressive", "EpochBased", "STRATEGIES",
           "build", "parameters", "scaled_lr", "LR_RULES", "LR_RULES_WITH_ADASCALE", "LRCoupling", "adascale_gain"]
