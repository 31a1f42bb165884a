"""Curriculum learning: train on the easiest samples first and let harder ones in epoch by epoch.

Each sample gets a difficulty score; ``Curriculum`` sorts by it and, at epoch t, serves the easiest share
c(t) of the data, the *competence* of Platanios et al. 2019, "Competence-based Curriculum Learning for
Neural Machine Translation" (NAACL, §3), with T the epoch from which all data is used:

    linear:  c(t) = min(1, c0 + (1 − c0)·t/T)
    sqrt:    c(t) = min(1, √(c0² + (1 − c0²)·t/T))     (fast at first: new data is a smaller share later)

Platanios et al. keep the samples whose difficulty CDF is ≤ c(t); the easiest ⌈c(t)·N⌉ are the same set up
to ties. Two difficulty signals:

- ``loss_difficulty``: the per-example cross-entropy of a reference model, e.g. one trained briefly on
  the same data (the "transfer teacher" scoring of Hacohen and Weinshall 2019, "On the Power of Curriculum
  Learning in Training Deep Networks", ICML).
- ``length_difficulty``: the number of tokens of each sequence (for text, as Platanios et al.).

The curriculum combines with a growing batch (``Progressive``, ``Linear``): small batches on the small,
easy pool early, larger ones as harder data arrives and the epoch grows. The pool is a ``DeviceBatcher``
argument:

    >>> curriculum = Curriculum(loss_difficulty(reference, d.x_train, d.y_train), c0=0.25, epochs=5)
    >>> strategy = Progressive(b_init=32, target=512, warmup=2000)
    >>> for epoch in range(epochs):
    ...     for xb, yb in batcher.batches(strategy, pool=curriculum.pool(epoch)):
    ...         loss = train_step(xb, yb); strategy.step()

Chapter: Curriculum learning and growing batches.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from labkit.checks import check_choice, check_float, check_int
from labkit.text import lengths

SHAPES = ("linear", "sqrt")


def competence(epoch: int, epochs: int, c0: float = 0.25, shape: str = "sqrt") -> float:
    """The fraction c(t) of the data, easiest first, available at ``epoch`` t (0-based), with T = ``epochs``:
    linear c(t) = min(1, c0 + (1 − c0)·t/T), sqrt c(t) = min(1, √(c0² + (1 − c0²)·t/T)).
    c(0) = c0 and c(t) = 1 for t ≥ T."""
    t = check_int("epoch", epoch, low=0)
    T = check_int("epochs", epochs, low=1)
    c0 = check_float("c0", c0, low=0.0, high=1.0, low_open=True)
    progress = min(t / T, 1.0)
    if check_choice("shape", shape, SHAPES) == "linear":
        return c0 + (1 - c0) * progress
    return math.sqrt(c0 ** 2 + (1 - c0 ** 2) * progress)


@torch.no_grad()
def loss_difficulty(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024,
                    transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(N,) float32 on the CPU: ℓ_i = cross-entropy(model(transform(x_i)), y_i) of each sample, the model in
    eval mode (its training mode is restored after).

    ``x``, ``y`` and ``model`` must be on one device; ``transform`` maps a raw batch to the model's input,
    e.g. ``DeviceBatcher.normalise`` with ``x = batcher.x``. The scores come back in one copy at the end.
    """
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"x has {len(x)} samples and y {len(y)}: expected the same number, at least one")
    batch_size = check_int("batch_size", batch_size, low=1)
    was_training = model.training
    try:
        model.eval()
        losses = []
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            logits = model(xb if transform is None else transform(xb))
            losses.append(F.cross_entropy(logits.float(), yb, reduction="none"))
    finally:
        model.train(was_training)
    return torch.cat(losses).cpu()  # the one sync


def length_difficulty(sequences: list[torch.Tensor]) -> torch.Tensor:
    """(N,) float32: the number of tokens of each sequence (``labkit.text.lengths``); longer is harder."""
    return lengths(sequences).float()


class Curriculum:
    """The easiest share c(epoch) of N samples by ``scores`` (low = easy), as index pools for each epoch.

    Args:
        scores: (N,) difficulty of each sample, e.g. ``loss_difficulty`` or ``length_difficulty``.
        c0: the share available at epoch 0, in (0, 1].
        epochs: T, the epoch from which all samples are used.
        shape: "sqrt" or "linear", the competence c(t) (see ``competence``).

    ``order`` holds the sample indices by score ascending, ties by index. ``pool(epoch)`` is its first
    max(1, ⌈c(epoch)·N⌉) entries. The pools depend on the epoch alone, so there is no state to save: a
    resumed run only needs its epoch.
    """

    def __init__(self, scores, *, c0: float = 0.25, epochs: int = 5, shape: str = "sqrt"):
        scores = torch.as_tensor(scores).detach().cpu()
        if scores.ndim != 1 or len(scores) == 0:
            raise ValueError(f"scores of shape {tuple(scores.shape)}: expected one score per sample, (N,) with N >= 1")
        bad = torch.nonzero(~torch.isfinite(scores)).flatten()
        if len(bad):
            raise ValueError(f"scores at indices {bad[:5].tolist()} are {scores[bad[:5]].tolist()}: expected "
                             f"finite numbers")
        competence(0, epochs, c0, shape)  # checks the arguments once, here
        self.c0, self.epochs, self.shape = float(c0), int(epochs), shape
        self.scores = scores
        self.order = torch.sort(scores, stable=True).indices  # (N,) int64, easiest first

    @property
    def num_samples(self) -> int:
        return len(self.order)

    def fraction(self, epoch: int) -> float:
        """c(epoch), the share of the samples in ``pool(epoch)`` before rounding up."""
        return competence(epoch, self.epochs, self.c0, self.shape)

    def pool(self, epoch: int) -> torch.Tensor:
        """(n,) int64 on the CPU: the indices of the n = max(1, ⌈c(epoch)·N⌉) easiest samples, easiest first.
        c·N is rounded to 9 decimals before ⌈·⌉, so that 0.3·10 = 3.0000000000000004 gives 3."""
        size = max(1, math.ceil(round(self.fraction(epoch) * self.num_samples, 9)))
        return self.order[:size]

    def __repr__(self) -> str:
        return (f"Curriculum({self.num_samples} samples, c0={self.c0:g}, epochs={self.epochs}, "
                f"shape={self.shape!r})")
