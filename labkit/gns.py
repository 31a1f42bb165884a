"""Gradient noise scale: how noisy a minibatch gradient is compared with the gradient itself.

    B_simple = tr(Σ) / ‖G‖²

G is the true gradient (the mean over all data), Σ the covariance of one example's gradient. A batch of
B independent examples has gradient noise tr(Σ)/B, so B_simple is the batch size at which noise and
signal are equal. Source: McCandlish, Kaplan, Amodei 2018, "An Empirical Model of Large-Batch Training",
arXiv:1812.06162, §2.2 (B_simple) and Appendix A (estimators). Chapter: Gradient noise scale (lab task 6).

Three estimators, one result type (``GNSEstimate``):

* ``microbatch_estimate``: the lab's k microbatches, corrected to estimate B_simple (``lab_gns`` is
  the lab's raw ratio, which is *not* B_simple).
* ``two_batch_estimate`` / ``TwoBatchGNS``: McCandlish's unbiased estimator from squared gradient norms
  at two batch sizes, smoothed before the ratio (Appendix A.1). Inside gradient accumulation it costs
  nothing extra (``microbatch_norms``).
* ``per_example_estimate``: exact per-example gradients via ``torch.func``: the reference, small models.

``GNSTracker`` runs one of them every few steps of a training loop.

Sampling: the examples of a batch are treated as independent draws from the data (with replacement);
a shuffled epoch of a dataset much larger than the batch is close to that. Losses must be means over
their examples (PyTorch's default ``reduction="mean"``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from labkit.checks import check_choice, check_float, check_int
from labkit.state import Stateful

METHODS = ("two_batch", "microbatch", "per_example")
LossFn = Callable[[Tensor, Tensor], Tensor]   # loss_fn(output, target) -> mean loss (0-d)


@dataclass(frozen=True)
class GNSEstimate:
    """One reading of the gradient noise scale.

    trace_sigma: tr(Σ), the total variance of a *single example's* gradient (not of a batch's).
    grad_sq: ‖G‖², the squared norm of the true gradient. Unbiased estimates of it can come out
        negative when the signal is below the noise.
    b_simple: trace_sigma / grad_sq. Non-positive means the reading holds no usable noise scale (0.0
        when grad_sq is exactly 0); ``GNSBased`` skips such readings.
    samples: the examples behind the reading.
    method: "microbatch", "two_batch", "per_example", or "ema" for a smoothed estimate.
    """
    trace_sigma: float
    grad_sq: float
    b_simple: float
    samples: int
    method: str

    @classmethod
    def of(cls, trace_sigma: float, grad_sq: float, samples: int, method: str) -> GNSEstimate:
        """The estimate with b_simple = trace_sigma / grad_sq (0.0 when grad_sq is 0)."""
        b_simple = trace_sigma / grad_sq if grad_sq else 0.0
        return cls(float(trace_sigma), float(grad_sq), float(b_simple), int(samples), method)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.trace_sigma) and math.isfinite(self.grad_sq)


# -- gradients ------------------------------------------------------------------------------------------
def flat_grad(model: nn.Module) -> Tensor:
    """All gradients as one vector (the lab's hint): ``torch.cat([p.grad.view(-1) ...])`` over the
    parameters that require grad; a parameter without a gradient counts as zeros, so the length is always
    the number of trainable parameters."""
    params = _trainable(model)
    return _flatten([p.grad for p in params], params)


def microbatch_grads(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, k: int) -> list[Tensor]:
    """Split the batch in ``k`` microbatches (``torch.tensor_split``: sizes differ by at most one), take
    each one's gradient in its own backward pass and return the k flat gradients g_1 … g_k.

    On return every trainable parameter's ``.grad`` holds the gradient of the mean loss over the whole
    batch, Σ_i (n_i/n)·g_i: what ``zero_grad(); loss_fn(model(x), y).backward()`` leaves, up to rounding,
    so an optimizer step can use it. Whatever ``.grad`` held before is replaced, not added to.
    """
    return list(_microbatch_passes(model, loss_fn, x, y, k))


def per_example_grads(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
    """The (N, P) matrix of per-example gradients, row n = ∇ loss_fn(model(x_n), y_n), computed with
    ``torch.func``: ``vmap(grad(loss))`` over ``functional_call``. It holds N·P numbers: small models only.
    ``.grad`` is not touched. Dropout draws one mask per example; BatchNorm in training mode cannot see a
    batch of one (use ``model.eval()`` or a model without it).
    """
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}

    def example_loss(params: dict[str, Tensor], xn: Tensor, yn: Tensor) -> Tensor:
        return loss_fn(functional_call(model, params, (xn.unsqueeze(0),)), yn.unsqueeze(0))

    rows = vmap(grad(example_loss), in_dims=(None, 0, 0), randomness="different")(params, x, y)
    return torch.cat([g.reshape(len(x), -1) for g in rows.values()], dim=1)


# -- estimators -----------------------------------------------------------------------------------------
def lab_gns(grads: Sequence[Tensor] | Tensor) -> float:
    """The lab's ratio, exactly as the sheet writes it: g_m = 1/k Σ g_i, var = 1/k Σ ‖g_i − g_m‖²,
    GNS = var / ‖g_m‖².

    This is *not* B_simple. For microbatches of b examples, E[var] = (k−1)/k · tr(Σ)/b (the noise of a
    microbatch, not of one example) and E‖g_m‖² = ‖G‖² + tr(Σ)/(k·b) (the mean is noisy too), so the
    ratio is near (k−1)·B_simple / (k·b + B_simple): about B_simple·(k−1)/(k·b) when b ≫ B_simple, and
    never much above k − 1. ``microbatch_estimate`` applies the correction.
    """
    var, mean_sq = _spread(_stack(grads))
    return var / mean_sq


def microbatch_estimate(grads: Sequence[Tensor] | Tensor, batch: int) -> GNSEstimate:
    """B_simple from the k microbatch gradients of one batch of ``batch`` examples: the lab's recipe,
    corrected. With the lab's var and g_m (see ``lab_gns``) and b = batch/k,

        tr(Σ) ≈ b · var · k/(k−1),      ‖G‖² ≈ ‖g_m‖² − tr(Σ)/(k·b)

    are unbiased; their ratio is not quite (a ratio of noisy numbers), so average tr(Σ) and ‖G‖² over
    readings before dividing, as ``TwoBatchGNS`` does. When k does not divide the batch, the microbatch
    sizes b_i differ by one and b is their harmonic mean (1/b = mean_i 1/b_i), for which both expectations
    keep this form. McCandlish's two-batch formulas with B_small = b, B_big = k·b give the same numbers,
    because 1/k Σ ‖g_i‖² − ‖g_m‖² = var.
    """
    stack = _stack(grads)
    var, mean_sq = _spread(stack)
    return _corrected(var, mean_sq, batch, len(stack), "microbatch")


def per_example_estimate(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> GNSEstimate:
    """The reference: exact per-example gradients g_n of N examples (``per_example_grads``) and

        tr(Σ) = 1/(N−1) Σ_n ‖g_n − ḡ‖²,     ‖G‖² = ‖ḡ‖² − tr(Σ)/N

    the sample (unbiased) covariance of N independent draws; these are the microbatch formulas with
    b = 1, k = N. If x is a whole finite dataset (the population itself), its exact values are
    tr(Σ)·(N−1)/N and ‖ḡ‖² instead.
    """
    return _per_example(per_example_grads(model, loss_fn, x, y))


def two_batch_estimate(small_sq_norm: float | Tensor, b_small: float, big_sq_norm: float | Tensor,
                       b_big: float) -> GNSEstimate:
    """McCandlish et al. 2018, Appendix A.1: from the squared gradient norms of a batch of B_small and
    one of B_big > B_small examples, E‖G_B‖² = ‖G‖² + tr(Σ)/B gives the unbiased

        ‖G‖² ≈ (B_big ‖G_big‖² − B_small ‖G_small‖²) / (B_big − B_small)
        tr(Σ) ≈ (‖G_small‖² − ‖G_big‖²) / (1/B_small − 1/B_big)

    Norms may be floats or 0-d tensors. ``samples`` is B_big (in gradient accumulation the small batches
    are parts of the big one; see ``microbatch_norms``).
    """
    b_small = check_float("b_small", b_small, low=0.0, low_open=True)
    b_big = check_float("b_big", b_big, low=0.0, low_open=True)
    if b_big <= b_small:
        raise ValueError(f"b_big={b_big:g} must be larger than b_small={b_small:g}: "
                         f"pass the small batch first, two_batch_estimate(small, b_small, big, b_big)")
    small, big = float(small_sq_norm), float(big_sq_norm)
    grad_sq = (b_big * big - b_small * small) / (b_big - b_small)
    trace_sigma = (small - big) / (1.0 / b_small - 1.0 / b_big)
    return GNSEstimate.of(trace_sigma, grad_sq, round(b_big), "two_batch")


def microbatch_norms(grads: Iterable[Tensor], batch: int) -> tuple[float, float, float, float]:
    """What gradient accumulation gives for free: ``(small_sq_norm, b_small, big_sq_norm, b_big)`` =
    (mean_i ‖g_i‖², b, ‖g_m‖², k·b) for the k microbatch gradients of a batch of ``batch`` examples (b as
    in ``microbatch_estimate``), ready for ``two_batch_estimate(*...)`` or ``TwoBatchGNS.update(*...)``.
    Reads the gradients once and keeps only their running sum, so a generator works.
    """
    sq_norms, total = [], None
    for g in grads:
        sq_norms.append(g.dot(g))
        total = g.clone() if total is None else total.add_(g)
    k = check_int("k (the number of microbatch gradients)", len(sq_norms), low=2)
    mean = total / k
    small, big = torch.stack([torch.stack(sq_norms).mean(), mean.dot(mean)]).tolist()  # sync: one per call
    b = _microbatch_size(batch, k)
    return small, b, big, k * b


class TwoBatchGNS(Stateful):
    """McCandlish's estimator smoothed as Appendix A.1 advises: exponential moving averages of ‖G‖² and
    tr(Σ) *separately*, then B_simple = EMA[tr(Σ)] / EMA[‖G‖²]. A ratio of averages stays stable where
    single ‖G‖² readings are near zero or negative; an average of ratios does not.

        EMA ← α·reading + (1 − α)·EMA      (starting at the first reading)

    Example, inside gradient accumulation over k microbatches of b examples::

        gns = TwoBatchGNS(alpha=0.1)
        estimate = gns.update(*microbatch_norms(grads, batch=k * b))
    """

    def __init__(self, alpha: float = 0.1):
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.trace_sigma: float | None = None
        self.grad_sq: float | None = None
        self.samples = 0

    def update(self, small_sq_norm: float | Tensor, b_small: float, big_sq_norm: float | Tensor,
               b_big: float) -> GNSEstimate:
        """Add one two-batch reading (arguments as in ``two_batch_estimate``); return the smoothed estimate."""
        return self.add(two_batch_estimate(small_sq_norm, b_small, big_sq_norm, b_big))

    def add(self, reading: GNSEstimate) -> GNSEstimate:
        """Add any reading's tr(Σ) and ‖G‖² to the averages; return the smoothed estimate."""
        self.trace_sigma = _ema(self.trace_sigma, reading.trace_sigma, self.alpha)
        self.grad_sq = _ema(self.grad_sq, reading.grad_sq, self.alpha)
        self.samples += reading.samples
        return self.estimate

    @property
    def estimate(self) -> GNSEstimate | None:
        """The smoothed estimate (``samples``: all examples behind it); None before the first reading."""
        if self.trace_sigma is None:
            return None
        return GNSEstimate.of(self.trace_sigma, self.grad_sq, self.samples, "ema")


# -- the tracker the training loop uses -----------------------------------------------------------------
class GNSTracker(Stateful):
    """Measure the gradient noise scale every few steps of a training loop.

    Args:
        every: measure on steps 0, every, 2·every, … (default 100: see the cost below).
        k: microbatches per measured batch (default 4, at least 2; "per_example" ignores it).
        alpha: EMA weight of a new reading, in (0, 1] (default 0.1).
        method: how readings are taken and averaged (default "two_batch"):
            * "two_batch": k microbatch passes; McCandlish: average tr(Σ) and ‖G‖², then divide.
            * "microbatch": the same passes and the same single readings (see ``microbatch_estimate``),
              averaged the lab's way: an EMA of the positive B_simple readings, as ``GNSBased`` does.
            * "per_example": exact per-example gradients (``torch.func``, small models), averaged like
              "two_batch".
        window: how many recent readings ``band`` describes (default 10).

    A measured step replaces the step's forward and backward: ``measure`` runs k smaller passes (or one
    vmap pass) and leaves the batch's mean gradient in ``.grad`` for the optimizer (``labkit.train`` takes
    the step's logits and loss from the same passes). One CPU–GPU sync per measurement. BatchNorm layers
    see k microbatches instead of one batch on a measured step.

    Cost: where a small model's step is bound by kernel launches (the CNN on CIFAR-10 at batch 256–512
    on a GPU), a microbatch pass launches about as many kernels as a full pass, so a reading costs about
    k − 1 extra passes plus the sync. Measured on an H100 (``bench/gns.py``, ``results/bench_gns.csv``):
    at the defaults (k=4, every=100) training with tracking took 1.02× (batch 256) and 1.04× (batch 512)
    the time without it; k=4 every=10 1.27–1.42×, every=50 1.08–1.16×; the old defaults k=8 every=50
    1.17–1.26× (``results/bench_gns_k8.csv``). Run-to-run noise is about ±0.1 at these sub-second
    timings (every=200 measured 1.07–1.13×). With big batches (compute-bound) the k passes cost about
    one pass and tracking is nearly free.

    ``b_simple`` is already smoothed: hand it to ``GNSBased(alpha=1.0)``, or hand each raw
    ``measure(...).b_simple`` to a ``GNSBased`` that smooths (that is the "microbatch" recipe again).

    Example::

        tracker = GNSTracker()                                  # every=100 steps, k=4
        for step, (x, y) in enumerate(batches):
            optimizer.zero_grad()
            if tracker.due(step):
                tracker.measure(model, F.cross_entropy, x, y)    # .grad = the batch's mean gradient
            else:
                F.cross_entropy(model(x), y).backward()
            optimizer.step()
    """

    records = {"history": GNSEstimate}

    def __init__(self, every: int = 100, *, k: int = 4, alpha: float = 0.1, method: str = "two_batch",
                 window: int = 10):
        self.every = check_int("every", every, low=1)
        self.k = check_int("k", k, low=2)
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.method = check_choice("method", method, METHODS)
        self.window = check_int("window", window, low=1)
        self.components = TwoBatchGNS(self.alpha)     # "two_batch", "per_example": EMAs of tr(Σ), ‖G‖²
        self.ratio: float | None = None               # "microbatch": EMA of the B_simple readings
        self.history: list[GNSEstimate] = []          # every reading, as measured (not smoothed)

    def due(self, step: int) -> bool:
        """True on the steps to measure: 0, every, 2·every, …"""
        return check_int("step", step, low=0) % self.every == 0

    def measure(self, model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> GNSEstimate:
        """Take one reading on the batch (x, y), record it, and return it (raw, not smoothed). Leaves
        the gradient of ``loss_fn`` averaged over the whole batch in ``.grad``, replacing what was there.
        A bad reading (negative, or not finite after an overflow) is returned and recorded, never raised;
        a non-finite one stays out of the averages. A batch smaller than k is cut in single examples."""
        k = min(self.k, check_int("the batch size len(x)", len(x), low=2))
        if self.method == "per_example":
            grads = per_example_grads(model, loss_fn, x, y)
            _set_grads(_trainable(model), grads.mean(0))
            reading = _per_example(grads)
        else:
            small, b, big, b_big = microbatch_norms(_microbatch_passes(model, loss_fn, x, y, k), len(x))
            if self.method == "two_batch":
                reading = two_batch_estimate(small, b, big, b_big)
            else:   # the lab's var is mean_i ‖g_i‖² − ‖g_m‖²
                reading = _corrected(small - big, big, len(x), k, "microbatch")
        self.history.append(reading)
        if reading.finite:
            self._average(reading)
        return reading

    def _average(self, reading: GNSEstimate) -> None:
        if self.method != "microbatch":
            self.components.add(reading)
        elif reading.b_simple > 0:   # a non-positive ratio is no reading (as in GNSBased)
            self.ratio = _ema(self.ratio, reading.b_simple, self.alpha)

    @property
    def b_simple(self) -> float | None:
        """The smoothed B_simple; None until the first (for "microbatch": first positive) reading. For
        "two_batch" and "per_example" it is negative while the averaged ‖G‖² is."""
        if self.method == "microbatch":
            return self.ratio
        estimate = self.components.estimate
        return None if estimate is None else estimate.b_simple

    @property
    def band(self) -> tuple[float, float] | None:
        """(low, high): the 10th and 90th percentiles (nearest rank) of B_simple over the last ``window``
        finite readings. A reading whose ‖G‖² estimate is ≤ 0 counts as +inf: the noise hides the signal,
        B_simple is beyond what that batch resolves. This is the scatter of single readings, wider than
        the uncertainty of the smoothed ``b_simple``. None before the first finite reading."""
        values = sorted(max(r.b_simple, 0.0) if r.grad_sq > 0 else math.inf
                        for r in self.history[-self.window:] if r.finite)
        if not values:
            return None
        last = len(values) - 1
        return values[math.floor(0.1 * last)], values[math.ceil(0.9 * last)]

    def __repr__(self) -> str:
        return (f"GNSTracker(method={self.method!r}, every={self.every}, k={self.k}, "
                f"readings={len(self.history)}, b_simple={self.b_simple})")


# -- shared pieces --------------------------------------------------------------------------------------
def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _flatten(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def _set_grads(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.view_as(p).clone()


def _microbatch_passes(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, k: int) -> Iterator[Tensor]:
    """Yield each microbatch's flat gradient (see ``microbatch_grads``); ``torch.autograd.grad`` keeps
    them apart, and ``.grad`` accumulates their size-weighted mean."""
    k = check_int("k", k, low=1)
    if k > len(x):
        raise ValueError(f"k={k} microbatches need a batch of at least {k} examples, got {len(x)}: "
                         f"lower k or raise the batch size")
    params = _trainable(model)
    for p in params:
        p.grad = None
    for xi, yi in zip(x.tensor_split(k), y.tensor_split(k)):
        grads = torch.autograd.grad(loss_fn(model(xi), yi), params, allow_unused=True)
        weight = len(xi) / len(x)
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = g * weight if p.grad is None else p.grad.add_(g, alpha=weight)
        yield _flatten(grads, params)


def _stack(grads: Sequence[Tensor] | Tensor) -> Tensor:
    """The k gradients as a (k, P) matrix; k must be at least 2."""
    stack = grads if isinstance(grads, Tensor) else torch.stack(list(grads))
    check_int("k (the number of gradients)", len(stack), low=2)
    return stack


def _spread(stack: Tensor) -> tuple[float, float]:
    """(var, ‖g_m‖²) of the rows g_i of a (k, P) matrix: g_m = 1/k Σ g_i, var = 1/k Σ ‖g_i − g_m‖²."""
    mean = stack.mean(0)
    var = (stack - mean).square().sum(1).mean()
    return tuple(torch.stack([var, mean.dot(mean)]).tolist())   # sync: one per call


def _corrected(var: float, mean_sq: float, batch: int, k: int, method: str) -> GNSEstimate:
    """The corrected microbatch estimate (see ``microbatch_estimate``)."""
    b = _microbatch_size(batch, k)
    trace_sigma = b * var * k / (k - 1)          # E[var] = (k−1)/k · tr(Σ)/b
    grad_sq = mean_sq - trace_sigma / (k * b)    # E‖g_m‖² = ‖G‖² + tr(Σ)/(k·b)
    return GNSEstimate.of(trace_sigma, grad_sq, batch, method)


def _per_example(grads: Tensor) -> GNSEstimate:
    var, mean_sq = _spread(_stack(grads))
    return _corrected(var, mean_sq, len(grads), len(grads), "per_example")


def _microbatch_size(batch: int, k: int) -> float:
    """b for a batch cut in k by ``tensor_split`` (sizes ⌈n/k⌉ and ⌊n/k⌋): the harmonic mean of the sizes,
    which is n/k when k divides n."""
    q, r = divmod(check_int("batch", batch, low=k), k)
    return k / (r / (q + 1) + (k - r) / q)


def _ema(average: float | None, value: float, alpha: float) -> float:
    return value if average is None else alpha * value + (1.0 - alpha) * average
