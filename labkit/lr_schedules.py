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


# -- grow the batch or decay the LR: SGD's noise scale -----------------------------------------------------
PAIR_RUNS = ("decay LR", "grow batch")


def noise_scale(lr: float, n: int, batch: int, momentum: float = 0.0, *, exact: bool = True) -> float:
    """The noise scale of SGD, g = lr·(n/batch − 1)/(1 − momentum) ≈ lr·n/(batch·(1 − momentum)).

    The scale of the random fluctuations when SGD is read as a stochastic differential equation
    (Smith & Le 2018, "A Bayesian perspective on generalization and SGD"); with momentum m the effective
    rate is lr/(1 − m) (Smith, Kindermans, Ying & Le 2018, "Don't decay the learning rate, increase the
    batch size"). For batch ≪ n, g ≈ lr·n/batch: dividing lr by k or multiplying batch by k lowers g alike.

    Args:
        lr: learning rate ε, > 0.
        n: training set size N.
        batch: batch size B, in [1, n].
        momentum: m in [0, 1).
        exact: False gives the batch ≪ n form lr·n/(batch·(1 − m)).

    Example::

        >>> round(noise_scale(0.1, 50_000, 128), 3), round(noise_scale(0.1, 50_000, 128, exact=False), 3)
        (38.963, 39.062)

    Chapter: Progressive batching and LR coupling (grow the batch or decay the LR).
    """
    lr = check_float("lr", lr, low=0.0, low_open=True)
    n = check_int("n", n, low=1)
    batch = check_int("batch", batch, low=1, high=n)
    momentum = check_float("momentum", momentum, low=0.0, high=1.0, high_open=True)
    ratio = n / batch - 1 if exact else n / batch
    return lr * ratio / (1 - momentum)


def step_pair(epochs: int, milestones: Sequence[int], gamma: float, lr: float, batch: int, n: int,
              momentum: float = 0.0):
    """Two runs with the same noise scale g ≈ lr·n/B: "decay LR" (batch fixed, lr·γ^k) and "grow batch"
    (lr fixed, batch/γ^k rounded to an integer), where k counts the milestones passed.

    A milestone m is a number of finished epochs, as in torch's ``MultiStepLR`` and the ``epoch``
    strategy's ``milestones={6: 1280}``: epoch e (1-based, as in history.csv) has k = #{m < e}.

    Returns a pandas DataFrame with one row per run and epoch: ``epoch``, ``run``, ``lr``, ``batch``,
    ``g`` (the batch ≪ n form, equal for both runs up to the rounding of the batch), ``g_exact``
    (``noise_scale``; the grown batch's is lower by lr·(1 − γ^k)/(1 − m)), ``steps`` (updates in the
    epoch, ⌊n/B⌋: the trainer drops the last partial batch) and ``cum_steps`` (updates so far; history.csv
    calls this ``steps``).

    Example::

        >>> t = step_pair(12, (6, 9), gamma=0.1, lr=0.05, batch=128, n=60_000)
        >>> t.groupby("run").cum_steps.last().to_dict()
        {'decay LR': 5616, 'grow batch': 2958}

    Chapter: Progressive batching and LR coupling (grow the batch or decay the LR).
    """
    import pandas as pd

    epochs = check_int("epochs", epochs, low=1)
    if isinstance(milestones, str) or not isinstance(milestones, Sequence):
        raise TypeError(f"milestones={milestones!r} must be a sequence of epochs, e.g. (6, 9)")
    marks = tuple(check_int(f"milestones[{i}]", m, low=1, high=max(epochs - 1, 1))
                  for i, m in enumerate(milestones))
    if any(a >= b for a, b in zip(marks, marks[1:])):
        raise ValueError(f"milestones={list(marks)} must be strictly increasing epochs, e.g. (6, 9)")
    gamma = check_float("gamma", gamma, low=0.0, high=1.0, low_open=True)
    lr = check_float("lr", lr, low=0.0, low_open=True)
    n = check_int("n", n, low=1)
    batch = check_int("batch", batch, low=1, high=n)
    grown = round(batch / gamma ** len(marks))
    if grown > n:
        raise ValueError(f"the grow-batch run reaches batch {grown} = {batch}/{gamma:g}^{len(marks)}, more than "
                         f"the n={n} training examples: use fewer milestones, a larger gamma or a smaller batch")
    rows = []
    for run in PAIR_RUNS:
        total = 0
        for epoch in range(1, epochs + 1):
            k = sum(m < epoch for m in marks)
            lr_e, b = (lr * gamma ** k, batch) if run == PAIR_RUNS[0] else (lr, round(batch / gamma ** k))
            total += n // b
            rows.append(dict(epoch=epoch, run=run, lr=lr_e, batch=b,
                             g=noise_scale(lr_e, n, b, momentum, exact=False),
                             g_exact=noise_scale(lr_e, n, b, momentum), steps=n // b, cum_steps=total))
    return pd.DataFrame(rows)


def with_noise_scale(histories, n: int, momentum: float = 0.0):
    """``labkit.experiments.load_histories`` output plus the columns of ``step_pair``: ``g``, ``g_exact``
    (from each epoch's ``lr`` and ``batch_size``), ``epoch_steps`` (updates in the epoch) and
    ``cum_steps`` (history.csv's cumulative ``steps``), so a recorded pair compares with a planned one.

    ``lr`` in history.csv is the rate of an epoch's last batch: with a step schedule it changes at epoch
    boundaries only when the milestones fall on them (as 50 % and 75 % of 12 epochs do).
    """
    n = check_int("n", n, low=1)
    out = histories.sort_values(["run", "seed", "epoch"]).copy()
    out["g"] = [noise_scale(lr, n, b, momentum, exact=False) for lr, b in zip(out.lr, out.batch_size)]
    out["g_exact"] = [noise_scale(lr, n, b, momentum) for lr, b in zip(out.lr, out.batch_size)]
    out["cum_steps"] = out.steps
    out["epoch_steps"] = out.groupby(["run", "seed"]).steps.diff().fillna(out.steps).astype(int)
    return out
