"""A labkit strategy in a Hugging Face ``accelerate`` loop: ``adaptive_loader`` and the recipe around it.

``accelerator.prepare(loader)`` re-shards a loader with ``BatchSamplerShard``, which assumes one fixed
batch size. ``adaptive_loader`` builds the loader ``prepare`` would return (a ``DataLoaderShard``: batches
moved to ``accelerator.device``, one batch of look-ahead so accelerate knows the last one) around a
``StrategyBatchSampler`` that shards each global batch over the processes itself. Prepare the model and
the optimizer as usual; decide with ``agree`` (re-exported here), which averages the signals over the
processes, lets process 0 decide and gives every process its decision::

    accelerator = Accelerator()
    strategy = labkit.strategies.build("loss", b_init=64, max_batch=1024)
    loader = adaptive_loader(accelerator, train_set, strategy, seed=0)   # was: accelerator.prepare(DataLoader(...))
    model, optimizer = accelerator.prepare(model, optimizer)
    coupling = LRCoupling(optimizer, strategy.batch_size, rule="sqrt")
    accelerator.register_for_checkpointing(strategy)                     # save_state/load_state keep it
    for epoch in range(first_epoch, epochs):
        loader.set_epoch(epoch)                                          # epoch e's order, also after load_state
        loss = train_one_epoch(model, loader, optimizer, accelerator)   # this process's mean loss
        agree(strategy, loss=loss, coupling=coupling)                    # every process: the same B and LR

The strategy's ``batch_size`` is the global batch, summed over the processes; each process gets
B // num_processes samples (B must be a multiple of it). Without ``set_epoch`` the loader counts its own
passes from 0. A size changed after batch k of an epoch shows in batch k + 2 (the look-ahead), and
``num_workers × prefetch_factor`` batches later with workers.

Needs ``accelerate`` (``pip install labkit[dev]``); ``import labkit`` does not import this module.
Issue "Drop-in like an LR scheduler", item 4.
"""
from __future__ import annotations

from typing import Any

from accelerate import Accelerator
from accelerate.data_loader import DataLoaderShard

from labkit.batching import StrategyBatchSampler
from labkit.integrations.distributed import agree

__all__ = ["adaptive_loader", "agree"]


def adaptive_loader(accelerator: Accelerator, dataset, strategy: Any, *, shuffle: bool = True, seed: int = 0,
                    drop_last: bool = False, **loader_kwargs: Any) -> DataLoaderShard:
    """A loader over ``dataset`` for this process of ``accelerator``, its batch size read from ``strategy``.

    Args:
        accelerator: the run's ``Accelerator``; its ``num_processes``, ``process_index`` and ``device``.
        dataset: a map-style dataset (with ``len``).
        strategy: a labkit strategy, or anything ``StrategyBatchSampler`` reads a global batch size from.
        shuffle, seed, drop_last: as for ``StrategyBatchSampler`` (epoch e's order comes from seed + e).
        **loader_kwargs: passed to the ``DataLoader`` (``num_workers``, ``collate_fn``, ``pin_memory``, ...).

    Returns a ``DataLoaderShard`` (a ``DataLoader``); do not pass it to ``accelerator.prepare``.
    """
    sampler = StrategyBatchSampler(strategy, len(dataset), shuffle, seed, drop_last,
                                   num_replicas=accelerator.num_processes, rank=accelerator.process_index)
    return DataLoaderShard(dataset, device=accelerator.device, batch_sampler=sampler, **loader_kwargs)
