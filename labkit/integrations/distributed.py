"""One batch size for every DDP rank: ``agree(strategy, loss=..., ...)`` at each decision point.

Under DDP each rank sees only its own shard, so a strategy stepped on the local loss decides differently
on every rank: ranks silently train at different batch sizes and, through ``LRCoupling``, different
learning rates. ``agree`` replaces ``strategy.step(**signals)`` and makes the decision once, for all:

* **Reduced.** The signals the strategy reads (its ``uses``: ``loss``, ``entropy``, ``gns``, ``memory``,
  ``epoch``) are averaged over the ranks: mean loss, mean entropy, the mean of the GNS estimates given.
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

Chapter: Progressive batching and LR coupling (the LR half); issue "Drop-in like an LR scheduler", item 3.
"""
from __future__ import annotations

import builtins
import math
from typing import Any

import torch
import torch.distributed as dist


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


def _mean_over_ranks(names: tuple[str, ...], signals: dict[str, Any], group):
    """All-reduce [present, value] per name; return the means of the signals present on every rank.

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
    world = dist.get_world_size(group)
    means, partial = {}, []
    for i, name in enumerate(names):
        count = round(total[2 * i].item())
        if count == world:
            means[name] = total[2 * i + 1].item() / world
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
