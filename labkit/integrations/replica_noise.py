"""The gradient noise scale from DDP's own all-reduce: no extra backward pass, one scalar all-reduce.

With R replicas each computing the mean gradient g_r of its own b examples, DDP averages them into
ḡ = (1/R) Σ_r g_r, the mean gradient of all R·b examples. Those are exactly the two batch sizes of
McCandlish et al.'s estimator (``labkit.gns.two_batch_estimate``):

    B_small = b,    ‖G_small‖² = (1/R) Σ_r ‖g_r‖²        (each replica's gradient, before the all-reduce)
    B_big = R·b,    ‖G_big‖² = ‖ḡ‖²                       (the averaged gradient, after it)

``ReplicaNoise`` is a DDP communication hook that reads both as the gradient buckets go by: ‖g‖² is the
sum over buckets of their squared norms, since buckets partition the parameters. Register it with
``ddp_model.register_comm_hook(None, noise.hook)``; after ``loss.backward()`` (and before the next one),
``noise.reading(local_batch)`` gives ``(small_sq_norm, b, big_sq_norm, R·b)`` for
``labkit.gns.TwoBatchGNS.update``. The hook averages the gradients itself (all-reduce of the bucket / R,
as DDP's default hook does), so training is unchanged. Under ``no_sync`` gradient accumulation it runs on
the synchronising step only, over the accumulated gradient, and b is the examples accumulated per replica.

Issue "Multi-GPU: adaptive global batch on DDP", item 2. Chapter: Gradient noise scale.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from labkit.checks import check_int


class ReplicaNoise:
    """A DDP communication hook that keeps Σ_buckets ‖local bucket‖² and Σ_buckets ‖averaged bucket‖²
    of the last backward pass; ``reading`` turns them into the two-batch estimator's inputs."""

    def __init__(self, group=None):
        self.group = group
        self.local_sq: torch.Tensor | None = None     # this replica's ‖g_r‖², summed over buckets
        self.global_sq: torch.Tensor | None = None    # ‖ḡ‖², summed over buckets

    def hook(self, state, bucket):      # no annotations: DDP compares them with its own objects
        """The communication hook: note this bucket's ‖local‖², average it over the ranks, note ‖mean‖²."""
        grads = bucket.buffer()
        self.local_sq = _plus(self.local_sq, grads.detach().float().square().sum())
        grads.div_(dist.get_world_size(self.group))
        future = dist.all_reduce(grads, group=self.group, async_op=True).get_future()

        def averaged(done: torch.futures.Future) -> torch.Tensor:
            mean = done.value()[0]
            self.global_sq = _plus(self.global_sq, mean.detach().float().square().sum())
            return mean

        return future.then(averaged)

    def reading(self, local_batch: int) -> tuple[float, int, float, int]:
        """``(mean_r ‖g_r‖², b, ‖ḡ‖², R·b)`` of the last backward pass, then reset. Every rank must call
        it (it all-reduces this replica's ‖g_r‖², a sync point); the values are equal on every rank."""
        local_batch = check_int("local_batch", local_batch, low=1)
        if self.local_sq is None or self.global_sq is None:
            raise RuntimeError("ReplicaNoise.reading: no gradient went through the hook since the last reading; "
                               "register it with ddp_model.register_comm_hook(None, noise.hook) and call it after "
                               "loss.backward()")
        world = dist.get_world_size(self.group)
        local = self.local_sq.reshape(1).double()
        dist.all_reduce(local, group=self.group)
        small, big = local.item() / world, self.global_sq.item()
        self.local_sq = self.global_sq = None
        return small, local_batch, big, world * local_batch


def _plus(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    return value if total is None else total + value
