"""The largest batch whose training step fits in memory: fit an affine memory model and jump, or bisect.

    >>> step = probe_step(TrainStep(model, optimizer), batch_of)
    >>> probe = max_batch_that_fits(step, start=256, limit=65536, capacity_bytes=memory_capacity(device),
    ...                             restore=(model, optimizer))
    >>> probe.max_batch, len(probe.trials), probe.table()

Two methods (``method=``). "affine" (the default) uses what ``StepMemory`` assumes, that a step's peak
grows as a + b·B: it measures the peak at two small sizes, fits the line, jumps to the size the line puts
just below the capacity C (the memory a step may use), and refines from the line through the two largest
sizes that fitted (chapter: Memory-based batching). Each jump keeps a ``margin`` m of the headroom free,

    B_next = B + (1 − m)·(C − peak(B)) / slope,

so an exactly affine step ends within m² of the headroom after the first refinement, in 4 tries; a convex
curve (the line from small sizes predicts too little) is caught by verifying each jump. "bisect" is
Lightning's ``BatchSizeFinder(mode="binsearch")`` and the reference: try start, 2·start, 4·start, … until a
step runs out of memory or reaches ``limit``, then bisect between the last size that fitted and the first
that did not, on multiples of ``multiple_of``. If every size below a threshold T fits and none above,
it takes about log2(T/start) + log2(T/(2·multiple_of)) tries and returns the largest multiple below T.

Only running out of memory means "does not fit": ``torch.cuda.OutOfMemoryError`` on a GPU, and
``MemoryCapExceeded`` when a step would pass a cap you set. Any other error is a bug and is re-raised.
After an out-of-memory error the failed step's tensors are released (``gc.collect()``,
``torch.cuda.empty_cache()``) before the next try; the objects in ``restore`` (model, optimizer) get
their state back in a ``finally``: probing trains nothing, even when it fails. Both methods return only a
size that ran.

Memory of a step: on CUDA, ``torch.cuda.max_memory_allocated`` over the step (the whole process: data,
weights, optimizer state, activations); a cap is checked after the step. The CPU has no allocator to ask,
so ``StepMemory`` models it and a cap is checked before the step: this is how the search runs (and is
tested) without a GPU.
"""
from __future__ import annotations

import copy
import gc
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from torch import Tensor, nn

from labkit.checks import check_choice, check_float, check_int

if TYPE_CHECKING:
    from labkit.step import TrainStep      # labkit.step imports this module: the step needs its OOM errors

log = logging.getLogger(__name__)
ACTIVATION_FACTOR = 2.0   # StepMemory: activations kept for backward + the gradients flowing back
PARAMETER_COPIES = 4      # StepMemory: weights, gradients, up to two optimizer slots (Adam's moments)
METHODS = ("affine", "bisect")   # max_batch_that_fits


class MemoryCapExceeded(RuntimeError):
    """A step would use more memory than the cap set for it (the CPU's stand-in for a CUDA OOM)."""


OUT_OF_MEMORY = (torch.cuda.OutOfMemoryError, MemoryCapExceeded)   # the only errors a search catches


class NothingFits(RuntimeError):
    """Not even the smallest batch of a search fits in memory."""


@dataclass(frozen=True)
class Trial:
    """One try of the search: did ``batch`` fit; its peak memory in bytes (nan when unknown), or why not."""
    batch: int
    fits: bool
    peak_bytes: float = math.nan
    error: str = ""

    def __str__(self) -> str:
        return f"fits ({format_bytes(self.peak_bytes)} peak)" if self.fits else f"does not fit ({self.error})"


@dataclass(frozen=True)
class MemoryProbe:
    """A search's result: ``max_batch`` fits; ``limited`` when that is ``limit``, not memory, speaking."""
    max_batch: int
    limit: int
    trials: tuple[Trial, ...]

    @property
    def limited(self) -> bool:
        return self.max_batch == self.limit

    def table(self):
        """The trials in the order tried, as a pandas table: batch, fits, peak_mb, error."""
        import pandas as pd

        return pd.DataFrame({"batch": [t.batch for t in self.trials], "fits": [t.fits for t in self.trials],
                             "peak_mb": [t.peak_bytes / 2**20 for t in self.trials],
                             "error": [t.error for t in self.trials]})


def max_batch_that_fits(try_step: Callable[[int], float | None], start: int = 32, limit: int = 65536, *,
                        multiple_of: int = 8, restore: tuple = (), method: str = "affine",
                        capacity_bytes: float | None = None, margin: float = 0.05, tolerance: float = 0.01,
                        max_trials: int = 5) -> MemoryProbe:
    """The largest multiple of ``multiple_of`` up to ``limit`` for which ``try_step(batch)`` runs.

    Args:
        try_step: runs one training step (forward, backward, optimizer step) on a batch of that size and
            returns its peak memory in bytes (None: unknown, "bisect" only); ``probe_step`` builds one from
            a ``TrainStep``.
        start: the first size tried, a multiple of ``multiple_of``; if it does not fit, the search
            bisects below it.
        limit: the largest size tried (e.g. the training set's size), rounded down to a multiple.
        restore: objects with ``state_dict``/``load_state_dict`` (model, optimizer) to restore afterwards.
        method: "affine" (model the peak as a + b·B and jump, see the module docstring) or "bisect"
            (×2, then bisection: more tries, no model).
        capacity_bytes: "affine": the peak a step may reach, C (``memory_capacity`` gives it; inf: no
            bound, the line jumps to ``limit``).
        margin: "affine": the share m of the headroom C − peak(B) each jump keeps free (default 0.05).
        tolerance: "affine": stop when the next size would add at most this share to the largest that fits.
        max_trials: "affine": stop after this many tries once a size fitted (default 5).

    "affine" takes B₁ = start and B₂ = 2·start; then, while the line through the two largest sizes that
    fitted rises (slope > 0) and stays below the smallest size that failed,
    B_next = B + (1 − m)·(C − peak(B))/slope, rounded down to a multiple (at least B + multiple_of while the
    line has room for it); otherwise the bisection's next size (×2, or halfway to a size that failed).

    Raises ``NothingFits`` when not even ``multiple_of`` examples fit.
    """
    multiple_of = check_int("multiple_of", multiple_of, low=1)
    limit = check_int("limit", limit, low=multiple_of) // multiple_of * multiple_of
    start = check_int("start", start, low=multiple_of, high=limit)
    if start % multiple_of:
        raise ValueError(f"start={start} is not a multiple of multiple_of={multiple_of}: "
                         f"use start={-(-start // multiple_of) * multiple_of}")
    affine = None                               # the affine method's settings; None: bisect
    if check_choice("method", method, METHODS) == "affine":
        if capacity_bytes is None:
            raise ValueError("method='affine' needs capacity_bytes, the peak memory a step may reach: pass "
                             "capacity_bytes=memory_capacity(device, cap), or use method='bisect'")
        if capacity_bytes != math.inf:
            capacity_bytes = check_float("capacity_bytes", capacity_bytes, low=0.0, low_open=True)
        affine = dict(capacity=capacity_bytes, tolerance=check_float("tolerance", tolerance, low=0.0),
                      margin=check_float("margin", margin, low=0.0, high=1.0, high_open=True),
                      max_trials=check_int("max_trials", max_trials, low=3))
    trials: list[Trial] = []
    with preserved(*restore):
        good, bad, batch = 0, None, start       # the largest size known to fit, the smallest known not to
        while batch is not None:
            trials.append(_try(try_step, batch))
            good, bad = (batch, bad) if trials[-1].fits else (good, batch)
            batch = (_next_batch(good, bad, limit, multiple_of) if affine is None
                     else _next_affine(good, bad, limit, multiple_of, trials, **affine))
            log.info("batch %d %s, %s", trials[-1].batch, trials[-1], f"trying {batch}" if batch else "done")
    if good == 0:
        raise NothingFits(f"no batch fits: even {multiple_of} examples ran out of memory ({trials[-1].error}); "
                          f"free memory, use a smaller model or raise the memory cap")
    log.info("largest batch that fits: %d%s, after %d tries", good, " (the limit)" if good == limit else "",
             len(trials))
    return MemoryProbe(good, limit, tuple(trials))


def memory_capacity(device, cap_bytes: float | None = None) -> float:
    """C for the affine search, in bytes: ``cap_bytes`` when set, at most what the device can give. On
    CUDA that is the free memory plus what the caching allocator already holds (``mem_get_info`` free +
    ``memory_reserved``: an upper bound, fragmentation can fail a step below it, which the search's
    verification catches); on the CPU without a cap, inf."""
    device = torch.device(device)
    available = math.inf
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        available = float(free + torch.cuda.memory_reserved(device))
    return available if cap_bytes is None else min(float(cap_bytes), available)


def _try(try_step: Callable[[int], float | None], batch: int) -> Trial:
    try:
        peak = try_step(batch)
        return Trial(batch, True, math.nan if peak is None else float(peak))
    except OUT_OF_MEMORY as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        midway = isinstance(error, torch.cuda.OutOfMemoryError)   # a cap refuses before or after a step:
    if midway:                                                      # then nothing is left half-allocated
        free_memory()                 # outside ``except``: the error and the failed step's frames are gone
    return Trial(batch, False, error=message)


def _next_batch(good: int, bad: int | None, limit: int, multiple_of: int) -> int | None:
    """×2 while everything fitted (up to ``limit``), then the multiple halfway between; None when done."""
    if bad is None:
        return None if good == limit else min(2 * good, limit)
    if bad - good <= multiple_of:
        return None
    return (good + bad) // 2 // multiple_of * multiple_of


def _next_affine(good: int, bad: int | None, limit: int, multiple_of: int, trials: list[Trial], *,
                 capacity: float, margin: float, tolerance: float, max_trials: int) -> int | None:
    """B + (1 − margin)·(capacity − peak(B))/slope on the line through the two largest sizes that fitted,
    while it rises and stays below ``bad``; else ``_next_batch``. None when done (see max_batch_that_fits)."""
    if good == 0:
        return _next_batch(good, bad, limit, multiple_of)             # nothing fitted yet: bisect below
    if len(trials) >= max_trials:
        return None
    fitted = sorted((t.batch, t.peak_bytes) for t in trials if t.fits)
    if math.isnan(fitted[-1][1]):
        raise ValueError(f"method='affine' needs the step's peak memory, but try_step({fitted[-1][0]}) returned "
                         f"None: return the peak in bytes, or use method='bisect'")
    candidate = None
    if len(fitted) >= 2:
        (low, low_peak), (high, high_peak) = fitted[-2:]
        slope = (high_peak - low_peak) / (high - low)                 # bytes per example
        if slope > 0:
            room = (capacity - high_peak) / slope                     # examples the line still fits
            aim = high + max((1 - margin) * room, min(room, multiple_of))
            candidate = limit if aim >= limit else max(int(aim) // multiple_of * multiple_of, 0)
            if bad is not None and candidate >= bad:                  # the line was wrong there: bisect
                candidate = None
    if candidate is None:
        candidate = _next_batch(good, bad, limit, multiple_of)
    return None if candidate is None or candidate - good <= tolerance * good else candidate


def probe_step(step: TrainStep, batch_of: Callable[[int], tuple[Tensor, Tensor]], *,
               memory_cap_bytes: float | None = None) -> Callable[[int], float]:
    """A ``try_step`` for ``max_batch_that_fits``: one ``step`` (``labkit.step.TrainStep``, the step ``fit``
    takes) on ``batch_of(batch)``, returning its peak memory in bytes. With ``memory_cap_bytes``, a step whose
    peak passes the cap raises ``MemoryCapExceeded``: on CUDA after the step, from the measured peak; on the
    CPU before it, from ``StepMemory``'s prediction, so no oversized batch is ever allocated."""
    cap = None if memory_cap_bytes is None else check_float("memory_cap_bytes", memory_cap_bytes, low=0.0,
                                                            low_open=True)
    device = step.device
    estimate: list[StepMemory] = []     # measured on the first call

    def try_step(batch: int) -> float:
        if not step.cuda:
            if not estimate:
                estimate.append(StepMemory.of(step.model, batch_of(1)[0]))
            peak = estimate[0](batch)
            if cap is not None and peak > cap:
                raise MemoryCapExceeded(f"batch {batch} needs about {format_bytes(peak)}, more than the cap "
                                        f"of {format_bytes(cap)}")
            step(*batch_of(batch))
            return peak
        torch.cuda.reset_peak_memory_stats(device)
        step(*batch_of(batch))
        torch.cuda.synchronize(device)
        peak = float(torch.cuda.max_memory_allocated(device))
        if cap is not None and peak > cap:
            raise MemoryCapExceeded(f"batch {batch} peaked at {format_bytes(peak)}, more than the cap of "
                                    f"{format_bytes(cap)}")
        return peak

    return try_step


@dataclass(frozen=True)
class StepMemory:
    """A rough model of a training step's peak memory in bytes, for devices that cannot report it:

        bytes(B) = PARAMETER_COPIES · P + B · ACTIVATION_FACTOR · (x + Σ_layers out)

    P: the parameters' bytes (weights, gradients, optimizer slots); x: one example's bytes; Σ out: the
    bytes of every leaf module's output for one example (a forward hook, in eval mode, no grad). Autograd
    keeps about one copy of the activations for backward, and backward's gradients are at most another.
    It is a cap the search can hit on a CPU, not a measurement: GPU kernels add workspace, bf16 halves
    activations, in-place layers save some.
    """
    fixed_bytes: float
    per_example_bytes: float

    @classmethod
    def of(cls, model: nn.Module, example: Tensor) -> StepMemory:
        """Measured with one forward pass of ``example`` (a batch of one)."""
        outputs = [example.nbytes / len(example)]

        def record(_module, _inputs, output):
            if isinstance(output, Tensor):
                outputs.append(output.nbytes / len(output))

        leaves = [m for m in model.modules() if not any(m.children())]
        hooks = [m.register_forward_hook(record) for m in leaves]
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(example)
        finally:
            model.train(was_training)
            for hook in hooks:
                hook.remove()
        params = sum(p.nbytes for p in model.parameters())
        return cls(PARAMETER_COPIES * params, ACTIVATION_FACTOR * sum(outputs))

    def __call__(self, batch: int) -> float:
        return self.fixed_bytes + batch * self.per_example_bytes


class MemoryWatch:
    """Each training step's peak memory as a fraction of a budget: the signal of the ``memory`` strategy.

        usage = peak bytes of the step / budget bytes

    On CUDA the peak is ``torch.cuda.max_memory_allocated``, reset before every step (both are host-side
    allocator counters: no sync); the budget is ``budget_bytes`` or else the device's total memory. A
    budget below the device's memory is enforced for real while ``limit()`` is active
    (``torch.cuda.set_per_process_memory_fraction``): the caching allocator then raises a CUDA OOM at the
    budget, which is how a GPU run shows OOM recovery on a model far smaller than the device. On a CPU
    there is no allocator to ask: the peak is ``StepMemory``'s estimate, and ``before(batch)`` raises
    ``MemoryCapExceeded`` when that passes the budget (the CPU's stand-in for an OOM); without a budget
    there is no signal (``usage`` is None).
    """

    def __init__(self, model: nn.Module, example: Tensor, budget_bytes: float | None = None):
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == "cuda"
        if budget_bytes is not None:
            budget_bytes = check_float("memory budget (bytes)", budget_bytes, low=0.0, low_open=True)
        self.total = torch.cuda.get_device_properties(self.device).total_memory if self.cuda else None
        self.budget = budget_bytes if budget_bytes is not None or not self.cuda else float(self.total)
        self.estimate = None if self.cuda else StepMemory.of(model, example[:1])
        self.peak = 0.0                        # the step's peak, bytes
        self.epoch_peak = 0.0

    def before(self, batch: int) -> None:
        """Start a step of ``batch`` examples: reset the CUDA peak, or check the CPU estimate against the budget."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        self.peak = self.estimate(batch)
        if self.budget is not None and self.peak > self.budget:
            raise MemoryCapExceeded(f"batch {batch} needs about {format_bytes(self.peak)}, more than the memory "
                                    f"budget of {format_bytes(self.budget)}")

    def after(self) -> float | None:
        """End a step: its usage (peak / budget), or None when there is no budget to compare with."""
        if self.cuda:
            self.peak = float(torch.cuda.max_memory_allocated(self.device))
        self.epoch_peak = max(self.epoch_peak, self.peak)
        return None if self.budget is None else self.peak / self.budget

    def end_epoch(self) -> tuple[float, float | None]:
        """The epoch's peak in MiB (nan when unknown: a CPU without a budget) and its usage, peak / budget
        (None without a budget); starts the next epoch's count."""
        known = self.cuda or self.budget is not None
        peak_mb = self.epoch_peak / 2**20 if known else math.nan
        usage = None if self.budget is None else self.epoch_peak / self.budget
        self.epoch_peak = 0.0
        return peak_mb, usage

    @contextmanager
    def limit(self) -> Iterator[None]:
        """While active, a CUDA budget below the device's memory is a hard limit for this process."""
        capped = self.cuda and self.budget < self.total
        if capped:
            torch.cuda.set_per_process_memory_fraction(self.budget / self.total, self.device)
        try:
            yield
        finally:
            if capped:
                torch.cuda.set_per_process_memory_fraction(1.0, self.device)


@contextmanager
def preserved(*objects) -> Iterator[None]:
    """Save each object's ``state_dict()`` (deep copies) and load it back on exit, even after an error."""
    saved = [copy.deepcopy(obj.state_dict()) for obj in objects]
    try:
        yield
    finally:
        for obj, state in zip(objects, saved):
            obj.load_state_dict(state)


def free_memory() -> None:
    """Release what a failed step left: collect reference cycles, return cached CUDA blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def format_bytes(n: float) -> str:
    """1536 → '1.5 KiB', 3.4e9 → '3.17 GiB', nan → 'unknown'."""
    if not math.isfinite(n):
        return "unknown"
    exponent = min(int(math.log(max(abs(n), 1.0), 1024)), 3)
    return f"{n / 1024 ** exponent:.3g} {('B', 'KiB', 'MiB', 'GiB')[exponent]}"


def memory_verdict(history, budget_mb: float) -> tuple[dict, list[str]]:
    """One memory-based run against its budget, from its per-epoch history (batch_size, oom_retries,
    peak_mem_mb, samples_per_s, test_acc): the batch it settled at (the last epoch's), the mean samples/s
    after epoch 1, the peak as a share of ``budget_mb`` and the out-of-memory retries summed. Returns (the
    verdict entry: accuracy, time, cost / energy, caveat; printable lines). Chapter: Conclusions."""
    settled, retries = history.batch_size.iloc[-1], int(history.oom_retries.sum())
    peak = history.peak_mem_mb.max()
    share = 100 * peak / budget_mb
    entry = {"accuracy": f"n/a (one run of {len(history)} epochs, test accuracy "
                         f"{history.test_acc.iloc[-1]:.3f})",
             "time": f"settled at batch {settled:.0f}, {history.samples_per_s.iloc[1:].mean():,.0f} "
                     "samples/s after epoch 1",
             "cost / energy": f"peak {peak:.0f} MiB = {share:.0f} % of the budget",
             "caveat": f"{retries} out-of-memory retries; no fixed-batch baseline was run"}
    lines = [(f"settled at batch {settled:.0f} after {retries} out-of-memory retries, "
              f"peak {share:.0f} % of {budget_mb:g} MiB")]
    return entry, lines


__all__ = ["max_batch_that_fits", "memory_capacity", "METHODS", "probe_step", "StepMemory", "MemoryWatch",
           "MemoryProbe", "Trial", "MemoryCapExceeded", "NothingFits", "OUT_OF_MEMORY", "preserved", "free_memory",
           "format_bytes", "memory_verdict"]
