"""Learning-rate coupling: when the batch grows, scale the learning rate with it.

  linear: lr = base_lr · B / B_base     (Goyal et al. 2017, "Accurate, Large Minibatch SGD")
  sqrt:   lr = base_lr · √(B / B_base)  (Krizhevsky 2014; Hoffer et al. 2017: keeps the update's noise level)
  none:   lr = base_lr

Chapter: Progressive batching and LR coupling.
"""
from __future__ import annotations

import math

from labkit.checks import check_choice, check_float, check_int

LR_RULES = ("linear", "sqrt", "none")


def scaled_lr(base_lr: float, base_batch: int, batch: int, rule: str = "linear") -> float:
    """The learning rate for ``batch`` when ``base_lr`` was tuned for ``base_batch``."""
    base_lr = check_float("base_lr", base_lr, low=0.0, low_open=True)
    base_batch = check_int("base_batch", base_batch, low=1)
    batch = check_int("batch", batch, low=1)
    rule = check_choice("rule", rule, LR_RULES)
    ratio = batch / base_batch
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    return base_lr
