"""Learning-rate schedules over the fraction of training samples seen, p ∈ [0, 1], not over steps.

Why samples: a run whose batch grows takes fewer steps per epoch, so a schedule written in steps would end
early (or stretch) when the batch changes. Written in p = samples seen / total samples, the schedule in data
terms stays the same whatever the batch sizes. The training loop sets, for each step of batch B,

    lr = peak_lr · f(p_mid) · coupling(B)        p_mid = (seen + B/2) / total_samples

where the batch-size coupling (``labkit.strategies.scaled_lr``: linear, sqrt or none) multiplies on top.

The factor f(p), with warm-up fraction w ∈ [0, 1) (Goyal et al. 2017, "Accurate, Large Minibatch SGD", §2.2):

  every schedule but onecycle, p < w:  f = p / w   (linear warm-up); then, for p ≥ w:
  constant:  f = 1
  cosine:    f = final + (1 − final) · ½(1 + cos(π·(p − w)/(1 − w)))    (Loshchilov & Hutter 2017, SGDR)
  linear:    f = final + (1 − final) · (1 − (p − w)/(1 − w))
  step:      f = gamma^k,  k = number of milestones ≤ p                  (milestones: fractions of training)
  onecycle:  p < w: f = 1/div + (1 − 1/div) · ½(1 − cos(π·p/w))         (Smith & Topin 2019, super-convergence)
             p ≥ w: f = f_min + (1 − f_min) · ½(1 + cos(π·(p − w)/(1 − w))),   f_min = 1/(div·final_div)

onecycle is ``torch.optim.lr_scheduler.OneCycleLR`` (anneal_strategy='cos', three_phase=False); it needs
w > 0. Torch's step i of T is p = i/(T − 1), and its warm-up ends at step pct_start·T − 1, i.e. at
w = (pct_start·T − 1)/(T − 1), which is close to pct_start for large T.

Example::

    >>> s = LRSchedule("linear", total_samples=1000, warmup=0.1)
    >>> [round(s.factor_at(p), 3) for p in (0.05, 0.1, 0.55, 1.0)]
    [0.5, 1.0, 0.5, 0.0]

Chapter: Progressive batching and LR coupling.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

from labkit.checks import check_choice, check_float, check_int
from labkit.state import Stateful

LR_SCHEDULES = ("constant", "cosine", "linear", "step", "onecycle")


def lr_factor(name: str, p: float, warmup: float = 0.0, *, milestones: Sequence[float] = (0.5, 0.75),
              gamma: float = 0.1, final: float = 0.0, div: float = 25.0, final_div: float = 1e4) -> float:
    """The multiplier on the peak LR at progress p (clamped to [0, 1]); the formulas are in the module docstring.

    Args:
        name: one of ``LR_SCHEDULES``.
        p: fraction of training samples seen.
        warmup: warm-up fraction w in [0, 1); onecycle's rising phase (pct_start), which must be > 0.
        milestones: step only, strictly increasing fractions in (0, 1) where the LR is multiplied by gamma.
        gamma: step only, in (0, 1].
        final: cosine and linear only, the factor reached at p = 1, in [0, 1).
        div, final_div: onecycle only, start factor 1/div and end factor 1/(div·final_div), each >= 1.
    """
    return _factor(_clamped(p), *_checked(name, warmup, milestones, gamma, final, div, final_div))


class LRSchedule(Stateful):
    """``lr_factor`` plus a count of samples seen, so the training loop can ask for the next batch's factor.

    Example::

        >>> s = LRSchedule("cosine", total_samples=1024)
        >>> for batch in (128, 256, 512):      # a growing batch: three steps cover the whole run
        ...     f = s.factor(batch)            # factor at the middle of this batch
        ...     s.advance(batch)
        >>> s.progress
        0.875
    """

    def __init__(self, name: str = "linear", total_samples: int = 1, warmup: float = 0.0, *,
                 milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1, final: float = 0.0,
                 div: float = 25.0, final_div: float = 1e4):
        self.total_samples = check_int("total_samples", total_samples, low=1)
        (self.name, self.warmup, self.milestones, self.gamma, self.final, self.div,
         self.final_div) = _checked(name, warmup, milestones, gamma, final, div, final_div)
        self.seen = 0  # samples seen so far: the only state that changes during training

    @property
    def progress(self) -> float:
        """Fraction of training samples seen, clamped to 1."""
        return min(self.seen / self.total_samples, 1.0)

    def factor_at(self, p: float) -> float:
        """The factor at progress p (clamped to [0, 1])."""
        return _factor(_clamped(p), self.name, self.warmup, self.milestones, self.gamma, self.final, self.div,
                       self.final_div)

    def factor(self, batch: int) -> float:
        """The factor for the next batch, taken at its middle: p = (seen + batch/2) / total_samples."""
        batch = check_int("batch", batch, low=1)
        return self.factor_at((self.seen + batch / 2) / self.total_samples)

    def advance(self, batch: int) -> None:
        """Count a finished batch: seen += batch."""
        self.seen += check_int("batch", batch, low=1)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load, re-checking every value, so a corrupted or hand-edited state fails here and leaves self as is."""
        trial = copy.copy(self)
        Stateful.load_state_dict(trial, state)
        hyper = {name: value for name, value in vars(trial).items() if name != "seen"}
        restored = type(self)(**hyper)
        restored.seen = check_int("seen", trial.seen, low=0)
        vars(self).update(vars(restored))


def _checked(name, warmup, milestones, gamma, final, div, final_div) -> tuple:
    """The schedule's parameters, validated, in ``_factor``'s order; raises one message naming the bad value."""
    name = check_choice("name", name, LR_SCHEDULES)
    warmup = check_float("warmup", warmup, low=0.0, high=1.0, high_open=True)
    if name == "onecycle" and warmup == 0.0:
        raise ValueError("warmup=0 is not allowed for onecycle: its rising phase needs warmup (pct_start) in (0, 1), "
                         "e.g. warmup=0.3")
    return (name, warmup, _check_milestones(milestones),
            check_float("gamma", gamma, low=0.0, high=1.0, low_open=True),
            check_float("final", final, low=0.0, high=1.0, high_open=True),
            check_float("div", div, low=1.0), check_float("final_div", final_div, low=1.0))


def _clamped(p: float) -> float:
    return min(max(check_float("p", p), 0.0), 1.0)


def _check_milestones(milestones: Sequence[float]) -> tuple[float, ...]:
    try:
        values = tuple(milestones)
    except TypeError:
        raise TypeError(f"milestones={milestones!r} must be a sequence of fractions, e.g. (0.5, 0.75)") from None
    values = tuple(check_float(f"milestones[{i}]", m, low=0.0, high=1.0, low_open=True, high_open=True)
                   for i, m in enumerate(values))
    if any(a >= b for a, b in zip(values, values[1:])):
        raise ValueError(f"milestones={list(values)} must be strictly increasing fractions in (0, 1), e.g. (0.5, 0.75)")
    return values


def _factor(p, name, warmup, milestones, gamma, final, div, final_div) -> float:
    """The formulas, for checked parameters and p in [0, 1]."""
    w = warmup
    if name == "onecycle":
        if p < w:
            return 1 / div + (1 - 1 / div) * 0.5 * (1 - math.cos(math.pi * p / w))
        f_min = 1 / (div * final_div)
        return f_min + (1 - f_min) * 0.5 * (1 + math.cos(math.pi * (p - w) / (1 - w)))
    if p < w:
        return p / w
    t = (p - w) / (1 - w)  # fraction of the post-warm-up phase done
    if name == "cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t))
    if name == "linear":
        return final + (1 - final) * (1 - t)
    if name == "step":
        return gamma ** sum(m <= p for m in milestones)
    return 1.0
