"""Learning-rate coupling: when the batch grows, scale the learning rate with it.

  linear: lr = base_lr · B / B_base     (Goyal et al. 2017, "Accurate, Large Minibatch SGD")
  sqrt:   lr = base_lr · √(B / B_base)  (Krizhevsky 2014; Hoffer et al. 2017: keeps the update's noise level)
  none:   lr = base_lr
  adascale: lr = base_lr · (B_noise + B_base)·B / ((B_noise + B)·B_base)   (Johnson et al. 2020; needs the
            gradient noise scale B_noise: ``LRCoupling`` with ``b_noise=``, ``labkit.train.fit``'s tracker)

``LRCoupling`` applies a rule to an optimizer on top of the user's own LR scheduler: at each batch change
it multiplies every LR by f(B_new)/f(B_old) instead of setting it, so a decay already applied is kept.

Chapter: Progressive batching and LR coupling.
"""
from __future__ import annotations

import math

from labkit.checks import check_choice, check_float, check_int

LR_RULES = ("linear", "sqrt", "none")
LR_RULES_WITH_ADASCALE = (*LR_RULES, "adascale")   # where a gradient noise scale is at hand (LRCoupling, fit)


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


def adascale_gain(batch: int, base_batch: int, b_noise: float) -> float:
    """AdaScale's gain r = (B_noise + B₀)·B / ((B_noise + B)·B₀) (Johnson et al. 2020): the factor by which
    one step at batch B goes further than one at B₀ when the gradient noise scale is B_noise. It lies in
    [1, B/B₀] for B ≥ B₀: linear scaling when the noise dominates (B_noise ≫ B), none when it vanishes."""
    batch = check_int("batch", batch, low=1)
    base_batch = check_int("base_batch", base_batch, low=1)
    b_noise = check_float("b_noise", b_noise, low=0.0)
    return (b_noise + base_batch) * batch / ((b_noise + batch) * base_batch)


class LRCoupling:
    """Couple an optimizer's learning rates to a changing batch size on top of any LR scheduler.

    ``step(batch)`` multiplies every param group's ``lr`` by f(B_new)/f(B_old), with f from ``rule``: B
    (linear), √B (sqrt), or AdaScale's gain (``adascale``, pass ``b_noise=``). It never sets an absolute
    LR, so it composes with a scheduler that already decays the LR, as torch's chainable schedulers
    compose (StepLR, ExponentialLR, MultiStepLR multiply the current ``lr``):

        >>> coupling = LRCoupling(optimizer, batch_size=strategy.batch_size, rule="sqrt")
        >>> for epoch in range(epochs):
        ...     train_one_epoch(model, batch_size=strategy.batch_size)
        ...     scheduler.step()                       # the user's own decay
        ...     coupling.step(strategy.step(loss=loss))  # ×√(B_new/B_old) when the batch changed

    ``state_dict()`` keeps the batch (and the noise scale) last applied, so a resumed run continues.
    """

    def __init__(self, optimizer, batch_size: int, rule: str = "sqrt", b_noise: float | None = None):
        self.optimizer = optimizer
        self.rule = check_choice("rule", rule, LR_RULES_WITH_ADASCALE)
        self.base_batch = self.batch_size = check_int("batch_size", batch_size, low=1)
        self.b_noise = None if b_noise is None else check_float("b_noise", b_noise, low=0.0)
        if self.rule == "adascale" and self.b_noise is None:
            raise ValueError("rule='adascale' needs b_noise=, the gradient noise scale (labkit.gns.GNSTracker)")

    def gain(self, batch: int, b_noise: float | None) -> float:
        """f(batch) relative to the first batch size: B/B₀, √(B/B₀), 1, or AdaScale's r(B)."""
        if self.rule == "adascale":
            return adascale_gain(batch, self.base_batch, b_noise)
        return scaled_lr(1.0, self.base_batch, batch, self.rule)

    def factor(self, batch: int, b_noise: float | None = None) -> float:
        """f(batch)/f(current batch), each with its noise scale: what ``step`` would multiply the LRs by."""
        batch = check_int("batch", batch, low=1)
        noise = self.b_noise if b_noise is None else check_float("b_noise", b_noise, low=0.0)
        return self.gain(batch, noise) / self.gain(self.batch_size, self.b_noise)

    def step(self, batch: int, b_noise: float | None = None) -> float:
        """Apply a batch-size change (a no-op when it is the same size and noise scale); return the factor."""
        factor = self.factor(batch, b_noise)
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
        self.batch_size = batch
        if b_noise is not None:
            self.b_noise = float(b_noise)
        return factor

    def state_dict(self) -> dict:
        return {"rule": self.rule, "base_batch": self.base_batch, "batch_size": self.batch_size,
                "b_noise": self.b_noise}

    def load_state_dict(self, state: dict) -> None:
        keys = {"rule", "base_batch", "batch_size", "b_noise"}
        if not isinstance(state, dict) or set(state) != keys:
            raise ValueError(f"LRCoupling.load_state_dict needs the dict state_dict() returns, with keys "
                             f"{sorted(keys)}; got {state!r:.80}")
        if state["rule"] != self.rule:
            raise ValueError(f"the state was saved with rule={state['rule']!r}; this coupling has {self.rule!r}")
        self.base_batch = check_int("base_batch", state["base_batch"], low=1)
        self.batch_size = check_int("batch_size", state["batch_size"], low=1)
        self.b_noise = None if state["b_noise"] is None else check_float("b_noise", state["b_noise"], low=0.0)
