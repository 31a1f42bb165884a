"""One batch size for every DDP rank: ``agree(strategy, loss=..., ...)`` at each decision point.

Under DDP each rank sees only its own shard, so a strategy stepped on the local loss decides differently
on every rank: ranks silently train at different batch sizes and, through ``LRCoupling``, different
learning rates. ``agree`` replaces ``strategy.step(**signals)`` and makes the decision once, for all:

* **Reduced.** The signals the strategy reads (its ``uses``: ``loss``, ``entropy``, ``gns``, ``memory``,
  ``epoch``) are averaged over the ranks: mean loss, mean entropy, the mean of the GNS estimates given;
  except ``memory``, which is the largest share over the ranks (a batch must fit on the fullest one).
  A signal that is None or absent stays absent; one present on some ranks and absent on others is an
  error on every rank (a presence count is reduced with the values). Signals the strategy does not read
  go to ``step`` from rank 0 untouched.
* **Decided.** Rank 0 of the group calls ``strategy.step(**means)``.
* **Broadcast.** Rank 0's ``strategy.state_dict()`` (batch size, history, loss tracker, smoothed noise
  scale) goes to every rank, which loads it: the strategies stay equal, not only their batch sizes. If
  rank 0's step raises, the error is broadcast instead and every rank raises it (no rank hangs).

Cost per decision: one all-reduce of a float64 tensor of 2 numbers per signal the strategy reads, and
one ``broadcast_object_list`` of a state dict of a few kB (it grows with ``history``: one small record
per decision). Both are sync points; at one decision per epoch they are negligible.

Without an initialised process group, or with one rank, ``agree`` is just ``strategy.step(**signals)``.

Example, in a DDP loop (``loss`` is this rank's mean loss over the epoch)::

    strategy = labkit.strategies.build("loss", b_init=32, delta="diff", max_batch=512)
    coupling = LRCoupling(optimizer, batch_size=strategy.batch_size, rule="sqrt")
    for epoch in range(num_epochs):
        sampler.set_epoch(epoch)
        loss = train_one_epoch(ddp_model, loader, batch_size=strategy.batch_size)  # this rank's mean
        agree(strategy, loss=loss, coupling=coupling)   # was: coupling.step(strategy.step(loss=loss))

``process_group(device)`` and ``Ranks`` are what ``labkit.train.fit`` trains among: the group torchrun's
environment describes (or one already initialised), the rank's device, the DDP-wrapped model, and the sums
of an epoch's statistics over the ranks. ``ReplicaReadings`` feeds fit's GNS tracker from the replicas'
gradients (``labkit.integrations.replica_noise``) instead of microbatch passes.

Chapter: Progressive batching and LR coupling (the LR half); issue "Drop-in like an LR scheduler", item 3;
issue "Multi-GPU: adaptive global batch on DDP", item 1.
"""
from __future__ import annotations

import builtins
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn


def agree(strategy, *, coupling=None, group=None, **signals: Any) -> int:
    """Step ``strategy`` on the mean of every rank's signals and give every rank rank 0's decision.

    Args:
        strategy: a labkit strategy (``step``, ``state_dict``, ``load_state_dict``, ``uses``); the same
            class and hyper-parameters on every rank.
        coupling: an optional ``LRCoupling``; each rank steps it with the agreed batch size, so equal
            optimizers keep equal LRs. (For ``rule="adascale"`` call ``coupling.step(size, b_noise)``
            yourself with the agreed noise scale instead.)
        group: the process group (default: the world).
        **signals: this rank's signals, as for ``strategy.step``; numbers or one-element tensors.

    Returns the agreed batch size, the same on every rank. Every rank of ``group`` must call it.
    """
    if not _distributed(group):
        size = strategy.step(**signals)
    else:
        size = _agree(strategy, group, signals)
    if coupling is not None:
        coupling.step(size)
    return size


@dataclass(frozen=True)
class Ranks:
    """The processes one run trains on: this one's ``rank`` of ``world`` and its ``device`` (rank 0 of 1
    without DDP). Rank 0 leads: it alone writes the run's files."""
    rank: int
    world: int
    device: torch.device

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def replicate(self, model: nn.Module) -> nn.Module:
        """``model`` wrapped in ``DistributedDataParallel`` when there are several ranks, else as it is. On
        CUDA its images' weights go to channels_last first (as ``TrainStep`` would), so DDP's buckets match
        the layout it trains in."""
        if self.world == 1:
            return model
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
            return nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index])
        return nn.parallel.DistributedDataParallel(model)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (a copy; all-reduced on the backend's device, a sync point)."""
        if self.world == 1:
            return values
        total = values.to(_device(None), copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(values.device)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` averaged over the ranks (see ``sum``)."""
        return values if self.world == 1 else self.sum(values) / self.world


def check_split(strategy, replicas: int) -> None:
    """Refuse a strategy whose batch sizes may not split evenly over ``replicas`` DDP ranks: its
    ``multiple_of`` must be a multiple of them (the bounds and every decision then are)."""
    if strategy.multiple_of % replicas:
        raise ValueError(f"multiple_of={strategy.multiple_of} under {replicas} DDP ranks: each global batch is "
                         f"split evenly over the ranks, so the strategy's sizes must be multiples of "
                         f"{replicas}; pass multiple_of={replicas} (--multiple-of {replicas}), with min_batch, "
                         f"max_batch multiples of it")


class ReplicaReadings:
    """A ``GNSTracker`` (method "two_batch") whose readings come from the DDP replicas: what ``TrainStep``
    measures with under DDP. It registers a ``ReplicaNoise`` hook on ``model``; a measured step is one
    ordinary forward and backward, and its reading is the two-batch estimate with B_small = this rank's
    batch b and B_big = R·b (``ReplicaNoise.reading``: one scalar all-reduce, equal on every rank),
    recorded in the tracker as its own readings are. No extra pass; the tracker's state is unchanged in form.
    """

    def __init__(self, tracker, model: nn.parallel.DistributedDataParallel):
        from labkit.integrations.replica_noise import ReplicaNoise

        if tracker.method != "two_batch":
            raise ValueError(f"GNSTracker(method={tracker.method!r}) under DDP: the replicas give two-batch "
                             f"readings only; use method='two_batch'")
        self.tracker, self.noise = tracker, ReplicaNoise()
        model.register_comm_hook(None, self.noise.hook)

    def due(self, step: int) -> bool:
        return self.tracker.due(step)

    def measure(self, model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor):
        """One pass of (x, y) through the DDP ``model``, backward included; the replicas' reading of it,
        recorded in the tracker and returned (raw, not smoothed)."""
        from labkit.gns import two_batch_estimate

        self.noise.local_sq = self.noise.global_sq = None      # the hook's sums of the unmeasured steps
        loss_fn(model(x), y).backward()
        reading = two_batch_estimate(*self.noise.reading(len(y)))
        self.tracker.history.append(reading)
        if reading.finite:
            self.tracker.components.add(reading)
        return reading


def measured_by(tracker, model: nn.Module):
    """What ``TrainStep`` measures the gradient noise scale with: ``tracker`` itself (or None), or, when
    ``model`` is a ``DistributedDataParallel``, ``ReplicaReadings`` feeding it."""
    if tracker is None or not isinstance(model, nn.parallel.DistributedDataParallel):
        return tracker
    return ReplicaReadings(tracker, model)


@contextmanager
def process_group(device: torch.device) -> Iterator[Ranks]:
    """The ranks a run trains among, on ``device``'s kind.

    An initialised process group is used as it is (the caller destroys it). Else, launched by torchrun
    (``WORLD_SIZE`` > 1 in the environment, with ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), a group is
    initialised from the environment, gloo on the CPU and nccl on CUDA, and destroyed when the block ends.
    Else a single rank. On CUDA with several ranks, rank r trains on ``cuda:LOCAL_RANK``.
    """
    made = not (dist.is_available() and dist.is_initialized()) and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if made and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if made:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        if not _distributed(None):
            yield Ranks(0, 1, device)
            return
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        yield Ranks(dist.get_rank(), dist.get_world_size(), device)
    finally:
        if made:
            dist.destroy_process_group()


def _distributed(group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _agree(strategy, group, signals: dict[str, Any]) -> int:
    names = tuple(getattr(strategy, "uses", None) or sorted(signals))
    means, local_error = _mean_over_ranks(names, signals, group)
    rank0 = 0 if group is None else dist.get_global_rank(group, 0)
    leader = dist.get_rank(group) == 0
    message: list[Any] = [None]
    if leader:
        try:
            strategy.step(**{**signals, **means})
            message[0] = ("state", strategy.state_dict())
        except Exception as error:                      # hand it to the other ranks, then raise it here
            message[0] = ("error", (_builtin_type(error).__name__, f"{type(error).__name__}: {error}"))
            rank0_error = error
    dist.broadcast_object_list(message, src=rank0, group=group)   # sync point
    kind, payload = message[0]
    if local_error is not None:                         # this rank's own bad value says more than rank 0's
        raise local_error
    if kind == "error":
        if leader:
            raise rank0_error
        error_type, text = payload
        raise getattr(builtins, error_type)(f"agree: rank 0 could not step the strategy on the mean "
                                            f"signals: {text}")
    if not leader:
        strategy.load_state_dict(payload)
    return strategy.batch_size


def _builtin_type(error: Exception) -> type:
    """The nearest built-in class of ``error`` (e.g. ValueError for StateKeyError's KeyError base): every
    rank can rebuild it from its name, without unpickling a class it may not import."""
    for cls in type(error).__mro__:
        if cls.__module__ == "builtins":
            return cls
    return RuntimeError


PEAKED = ("memory",)    # signals reduced to their largest value over the ranks, not their mean


def _mean_over_ranks(names: tuple[str, ...], signals: dict[str, Any], group):
    """All-reduce [present, value] per name; return the means of the signals present on every rank (the
    maximum for the ``PEAKED`` ones).

    A value that is not a number becomes NaN here (so every rank still joins the collectives) and is
    returned as this rank's error; a signal present on only some ranks raises on every rank."""
    local = torch.zeros(2 * len(names), dtype=torch.float64)
    local_error = None
    for i, name in enumerate(names):
        value = signals.get(name)
        if value is None:
            continue
        local[2 * i] = 1.0
        try:
            local[2 * i + 1] = float(value)              # a one-element tensor: a sync point
        except (TypeError, ValueError, RuntimeError):
            local[2 * i + 1] = math.nan
            local_error = TypeError(f"agree: signal {name}={value!r:.60} on rank {dist.get_rank()} must be a "
                                    f"number or a one-element tensor")
    total = local.to(_device(group), copy=True)         # reduced in place: keep this rank's own
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)   # sync point
    total = total.cpu()
    peaks = local[1::2].to(_device(group), copy=True)
    dist.all_reduce(peaks, op=dist.ReduceOp.MAX, group=group)   # sync point
    peaks = peaks.cpu()
    world = dist.get_world_size(group)
    means, partial = {}, []
    for i, name in enumerate(names):
        count = round(total[2 * i].item())
        if count == world:
            means[name] = peaks[i].item() if name in PEAKED else total[2 * i + 1].item() / world
        elif count:
            here = "passes it" if local[2 * i] else "does not"
            partial.append(f"{name!r} on {count} of {world} ranks (rank {dist.get_rank()} {here})")
    if partial:
        raise ValueError(f"agree: signal {'; '.join(partial)}: pass each signal on every rank, or on "
                         f"none (None counts as absent); rank 0 decides from the mean over ranks")
    return means, local_error


def _device(group) -> torch.device:
    """NCCL reduces CUDA tensors only; gloo (and the CPU half of 'cpu:gloo,cuda:nccl') takes CPU ones."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
