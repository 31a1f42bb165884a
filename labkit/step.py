"""The training step: one for the whole package (``fit``, the finder, the memory probe, the benchmarks).

    >>> step = TrainStep(model, optimizer)                 # SGD, AdamW, …: any torch optimizer
    >>> result = step(xb, yb)                              # forward, loss, backward, optimizer step
    >>> result.loss, result.logits                         # on the device, detached: no sync yet

A step is: set the learning rate (optional) → forward and loss under bf16 autocast on CUDA, images in
channels_last → backward → ``optimizer.step()`` → ``zero_grad(set_to_none=True)`` (in a ``finally``, also
when the step fails). Chapter: Memory-based batching (the OOM requeue); Gradient noise scale (the measured
step).

Two variants:

* measured: with a ``labkit.gns.GNSTracker``, on the steps it is due (``tracker.due(step.steps)``) its k
  microbatch passes replace the forward and backward; they leave the batch's mean gradient in ``.grad``,
  and their logits (concatenated) and losses (the size-weighted mean) stand in for the batch's. The
  optimizer step is the same; only BatchNorm sees k microbatches instead of one batch.
* requeued (``with_requeue``): a step that runs out of memory (``labkit.memory.OUT_OF_MEMORY``: a CUDA
  OOM, or ``MemoryCapExceeded`` from a ``MemoryWatch`` budget) is not lost: what it left is freed, and
  its examples, with any pieces still waiting, are re-split into batches of the size ``shrink`` returns,
  which then train. No example is skipped or repeated.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.memory import OUT_OF_MEMORY, MemoryWatch, free_memory

LossFn = Callable[[Tensor, Tensor], Tensor]      # loss_fn(logits, target) -> mean loss (0-d)


@dataclass(frozen=True)
class StepResult:
    """One step's outcome, left on the device (reading ``loss`` with ``.item()`` is a CPU–GPU sync).

    loss: the batch's mean loss, detached. logits: (B, C), detached. usage: the step's peak memory / the
    watch's budget (None without a watch or a budget). lr: the learning rate the step set (None: left as
    the optimizer had it). requeued: the examples come from a batch that ran out of memory.
    """
    loss: Tensor
    logits: Tensor
    usage: float | None = None
    lr: float | None = None
    requeued: bool = False

    @property
    def batch(self) -> int:
        return len(self.logits)


class TrainStep:
    """One training step of ``model`` with ``optimizer`` (see the module docstring).

    Args:
        model: maps a batch (B, …) to logits (B, C). On CUDA its 4-D weights are moved to channels_last
            in place (the optimizer keeps its parameters).
        optimizer: steps ``model``'s parameters.
        loss_fn: mean loss of (logits, target); default cross-entropy.
        bf16: bf16 autocast on CUDA (default); False keeps float32 (a GRU: cuDNN's RNN autocast wrapper
            casts to float16 whatever dtype is asked, see ``bench.sequence``).
        compile: ``torch.compile`` the forward with a dynamic batch dimension (``compiled``).
        gns: a ``GNSTracker``: measured steps where it is due.
        watch: a ``MemoryWatch``: each step's peak against its budget (``StepResult.usage``); on the CPU its
            budget check raises ``MemoryCapExceeded`` before the step.
        steps: steps already taken (a resumed run's count): the tracker's schedule continues from it.

    ``steps`` counts the steps that trained, ``ooms`` the ones that ran out of memory.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, loss_fn: LossFn = F.cross_entropy,
                 bf16: bool = True, compile: bool = False, gns=None, watch: MemoryWatch | None = None,
                 steps: int = 0):
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.model = model.to(memory_format=torch.channels_last) if self.cuda else model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.forward = compiled(self.model) if compile else self.model
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda and bf16)
        self.gns = gns
        self.watch = watch
        self.steps = steps
        self.ooms = 0

    def prepare(self, x: Tensor) -> Tensor:
        """``x`` as the model gets it: images (B, C, H, W) on CUDA in channels_last, anything else as is."""
        return x.contiguous(memory_format=torch.channels_last) if self.cuda and x.dim() == 4 else x

    def synchronize(self) -> None:
        """Wait until the work queued on the GPU is done (around a timing); nothing to wait for on a CPU."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def logits(self, x: Tensor) -> Tensor:
        """The forward pass alone, as the step runs it (autocast, channels_last); call it under no_grad to
        evaluate."""
        with self.autocast:
            return self.forward(self.prepare(x))

    def __call__(self, x: Tensor, y: Tensor, lr: float | None = None) -> StepResult:
        """One step on the batch (x, y) at learning rate ``lr`` (None: as the optimizer has it); measured
        when the tracker is due. An out-of-memory error propagates, with the gradients cleared."""
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        x = self.prepare(x)
        try:
            if self.watch is not None:
                self.watch.before(len(y))
            if self.gns is not None and self.gns.due(self.steps):
                logits, loss = self._measured(x, y)
            else:
                with self.autocast:
                    logits = self.forward(x)
                    loss = self.loss_fn(logits, y)
                loss.backward()
            self.optimizer.step()
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        usage = None if self.watch is None else self.watch.after()
        return StepResult(loss.detach(), logits.detach(), usage, lr)

    def with_requeue(self, x: Tensor, y: Tensor, shrink: Callable[[int, str], int],
                     lr: Callable[[int], float] | None = None) -> Iterator[StepResult]:
        """Train on (x, y) in one step, or, when a step runs out of memory, in smaller ones: yield each
        step's result. ``shrink(batch, failure)`` gives the size to retry a failed batch's examples at (it
        raises to give up); ``lr(batch)`` the learning rate of a step of ``batch`` examples."""
        pending = [(x, y)]           # a stack: the next piece is last
        requeued = False
        while pending:
            xb, yb = pending.pop()
            try:
                result = self(xb, yb, None if lr is None else lr(len(yb)))
            except OUT_OF_MEMORY as error:
                failure = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            else:
                yield replace(result, requeued=requeued)
                continue
            free_memory()            # outside ``except``: the error and the failed step's frames are gone
            self.ooms += 1
            pending = requeue(xb, yb, pending, shrink(len(yb), failure))
            requeued = True

    def _measured(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The tracker's k microbatch passes as the step's forward and backward: (logits, mean loss)."""
        parts = []

        def loss_fn(logits, target):
            loss = self.loss_fn(logits, target)
            parts.append((logits.detach(), loss.detach() * len(target)))
            return loss

        with self.autocast:
            self.gns.measure(self.model, loss_fn, x, y)
        return torch.cat([logits for logits, _ in parts]), torch.stack([total for _, total in parts]).sum() / len(y)


def requeue(xb: Tensor, yb: Tensor, pending: list, size: int) -> list:
    """The failed batch and the pieces still waiting after it (``pending`` is a stack: the next piece is
    last), re-split into pieces of ``size`` in the same order: no example is skipped or repeated."""
    xs = torch.cat([xb, *(x for x, _ in reversed(pending))])
    ys = torch.cat([yb, *(y for _, y in reversed(pending))])
    return list(reversed(list(zip(xs.split(size), ys.split(size)))))


def compiled(model: nn.Module, backend: str | Callable = "inductor"):
    """``torch.compile`` with the batch dimension marked dynamic, so a new batch size reuses the same graph
    instead of recompiling (tests count the compilations)."""
    compiled_model = torch.compile(model, backend=backend)

    def forward(x):
        torch._dynamo.mark_dynamic(x, 0)
        return compiled_model(x)
    return forward


__all__ = ["TrainStep", "StepResult", "requeue", "compiled"]
