"""A labkit strategy in a Lightning ``Trainer``: the ``AdaptiveBatchSize`` callback.

The strategy sets the batch size through a ``StrategyBatchSampler``; the callback builds the training loader
around it, feeds the strategy signals, steps it, couples the LR and logs each decision::

    strategy = labkit.strategies.build("loss", b_init=32, max_batch=512)
    adaptive = AdaptiveBatchSize(strategy)
    loader = adaptive.loader(train_set, seed=0)          # was: DataLoader(train_set, batch_size=32, shuffle=True)
    trainer = L.Trainer(callbacks=[adaptive], use_distributed_sampler=False)
    trainer.fit(model, loader)

**Signals.** ``training_step`` returns the loss, or a dict with ``"loss"`` and any other signal the strategy
reads (``"entropy"``, ``"gns"``, ``"memory"``). The callback averages each over the batches since the last
decision, weighted by the batch's size, and adds ``epoch`` (the next epoch's number, as ``labkit.train``).

**When.** ``mode="epoch"`` decides at the end of every training epoch; ``mode="step"`` every
``every_n_batches`` batches.

**Epoch length.** Lightning counts a loader's batches once, ``len(loader)`` at the first batch size, then
ends the epoch and validates at that count. ``loader()`` has no ``len()``, so Lightning treats it as it
treats an ``IterableDataset``: it fetches one batch ahead, the epoch ends when the sampler runs out and
validation runs after its last batch. The progress bar shows no total.

**Prefetch lag** (step mode): because of that look-ahead, a decision taken after batch k first shows in
batch k + 2; ``num_workers=w`` with ``prefetch_factor=p`` adds w·p batches (``StrategyBatchSampler``).
Epoch mode has no lag: the next epoch's batches are drawn after the decision.

**DDP.** Every rank steps its copy of the strategy through ``labkit.integrations.distributed.agree``: the
signals are averaged over the ranks, rank 0 decides, every rank loads its state. At ``setup`` the callback
shards the sampler for the Trainer's ranks (each gets B // world_size of every global batch B), so the
loader may be built before the processes start; pass ``Trainer(use_distributed_sampler=False)``.

**LR.** ``lr_rule`` (``"sqrt"``, ``"linear"``, ``"none"``) multiplies every optimizer's LRs by
f(B_new)/f(B_old) at each change (``LRCoupling``), on top of the LR schedulers' own updates.

**Logs.** Each decision goes to every logger of the Trainer (``log_metrics`` at the global step):
``batch_size``, ``lr`` (the first param group of the first optimizer) and the reason as text under
``reason_key``. A logger that takes numbers only (TensorBoard) refuses the text: a warning says so once,
and the reasons stay in ``strategy.history``.

**Checkpoints.** ``state_dict()`` holds the strategy's state (batch size, decision history, loss tracker)
and the sampler's position; Lightning saves it in every checkpoint and ``fit(ckpt_path=...)`` restores it,
the sampler's before its first batch is drawn. The optimizer's LR comes back with the optimizer, and the
coupling starts from the restored batch size. Resume from checkpoints taken at the end of an epoch (the
sampler's position counts the batch fetched ahead).

Needs ``lightning`` (``pip install labkit[dev]``); ``import labkit`` does not import this module.
Issue "Drop-in like an LR scheduler", item 4.
"""
from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.data import extract_batch_size
from torch.utils.data import DataLoader

from labkit.batching import StrategyBatchSampler
from labkit.checks import check_choice, check_int
from labkit.integrations.distributed import agree
from labkit.strategies import LR_RULES, LRCoupling

MODES = ("epoch", "step")


class AdaptiveBatchSize(Callback):
    """Step ``strategy`` during ``Trainer.fit``; ``loader()`` serves batches of its current size.

    Args:
        strategy: a labkit strategy; its ``batch_size`` is the global batch, summed over the ranks.
        mode: ``"epoch"`` (default): decide once per training epoch, on the epoch's mean signals;
            ``"step"``: decide every ``every_n_batches`` training batches, on their mean signals.
        every_n_batches: batches between decisions in step mode (default 1).
        lr_rule: how the optimizers' LRs follow the batch size: ``"sqrt"`` (default), ``"linear"`` or
            ``"none"``.
        reason_key: the logged name of the decision's reason (default ``"batch_size_reason"``); None logs
            numbers only.
    """

    def __init__(self, strategy, *, mode: str = "epoch", every_n_batches: int = 1, lr_rule: str = "sqrt",
                 reason_key: str | None = "batch_size_reason"):
        if not all(hasattr(strategy, name) for name in ("batch_size", "step", "history", "state_dict")):
            raise TypeError(f"strategy={strategy!r:.60} is not a labkit strategy (batch_size, step, history, "
                            f"state_dict): build one with labkit.strategies.build(name, ...)")
        self.strategy = strategy
        self.mode = check_choice("mode", mode, MODES)
        self.every_n_batches = check_int("every_n_batches", every_n_batches, low=1)
        self.lr_rule = check_choice("lr_rule", lr_rule, LR_RULES)
        self.reason_key = reason_key
        self.sampler: StrategyBatchSampler | None = None
        self.couplings: list[LRCoupling] = []
        self._sampler_state: dict[str, int] | None = None   # from a checkpoint loaded before loader()
        self._sums: dict[str, torch.Tensor] = {}       # signal name -> Σ value·batch, on the device
        self._weight = 0                                # Σ batch since the last decision
        self._batches = 0                               # batches since the last decision
        self._text_refused: set[int] = set()            # ids of loggers that refused the reason text

    def loader(self, dataset, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
               **loader_kwargs: Any) -> DataLoader:
        """The training loader: ``dataset`` in batches of the strategy's size, without a ``len()``.

        ``shuffle``, ``seed``, ``drop_last`` go to the ``StrategyBatchSampler`` (epoch e's order is drawn from
        seed + e); ``loader_kwargs`` (``num_workers``, ``collate_fn``, ...) to the ``DataLoader``. Call it
        before ``fit`` or in ``train_dataloader()``; one loader per callback.
        """
        # the ranks come from torch.distributed if it is up (in train_dataloader()), else from setup()
        self.sampler = StrategyBatchSampler(self.strategy, len(dataset), shuffle, seed, drop_last)
        if self._sampler_state is not None:
            self.sampler.load_state_dict(self._sampler_state)
        return _LengthUnknown(dataset, batch_sampler=self.sampler, **loader_kwargs)

    # -- the hooks ------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Shard the sampler for the Trainer's ranks, now that they are known."""
        if self.sampler is not None:
            self.sampler.num_replicas, self.sampler.rank = trainer.world_size, trainer.global_rank

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check that the Trainer trains on ``loader()``; couple every optimizer to the batch size."""
        batch_sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
        if self.sampler is None or batch_sampler is not self.sampler:
            raise TypeError(f"the training loader's batch_sampler is {batch_sampler!r:.80}: AdaptiveBatchSize "
                            f"changes the batch size through its own loader; pass callback.loader(dataset) to "
                            f"fit, or return it from train_dataloader()")
        self.couplings = [LRCoupling(optimizer, self.strategy.batch_size, rule=self.lr_rule)
                          for optimizer in trainer.optimizers]

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Serve this epoch's order (Lightning calls ``set_epoch`` on ``batch_sampler.sampler`` only)."""
        self.sampler.set_epoch(trainer.current_epoch)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Add this batch's signals to the running sums; in step mode, decide every ``every_n_batches``."""
        signals = outputs if isinstance(outputs, dict) else {"loss": outputs}
        size = extract_batch_size(batch)
        for name in getattr(self.strategy, "uses", ()):
            value = signals.get(name)
            if value is not None:   # no .item(): a sync point only when deciding
                value = torch.as_tensor(value).detach().float() * size
                self._sums[name] = self._sums[name] + value if name in self._sums else value
        self._weight += size
        self._batches += 1
        if self.mode == "step" and self._batches % self.every_n_batches == 0:
            self._decide(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.mode == "epoch" and self._batches:
            self._decide(trainer)

    # -- the decision -----------------------------------------------------------------------------
    def _decide(self, trainer: Trainer) -> None:
        """Mean signals → ``agree`` (all ranks, or one) → the couplings → the loggers."""
        signals = {name: total / self._weight for name, total in self._sums.items()}
        missing = [name for name in getattr(self.strategy, "requires", ()) if name not in signals]
        if missing:
            raise ValueError(f"{type(self.strategy).__name__} needs the signal(s) {', '.join(missing)}: return "
                             f"them from training_step, e.g. return {{'loss': loss, '{missing[0]}': value}}")
        self._sums, self._weight, self._batches = {}, 0, 0
        size = agree(self.strategy, epoch=trainer.current_epoch + 1, **signals)   # sync point
        for coupling in self.couplings:
            coupling.step(size)
        decision = self.strategy.history[-1]
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        rank_zero_info(f"labkit: epoch {trainer.current_epoch}, step {trainer.global_step}: batch size "
                       f"{decision.old} -> {decision.new}, lr {lr:.4g} ({decision.reason})")
        for logger in trainer.loggers:
            logger.log_metrics({"batch_size": size, "lr": lr}, step=trainer.global_step)
            if self.reason_key is not None and id(logger) not in self._text_refused:
                try:
                    logger.log_metrics({self.reason_key: decision.reason}, step=trainer.global_step)
                except (ValueError, TypeError):
                    self._text_refused.add(id(logger))
                    rank_zero_warn(f"{type(logger).__name__} logs numbers only: the batch-size reasons stay in "
                                   f"strategy.history (pass reason_key=None to silence this)")

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The strategy's state and the sampler's position (None before ``loader()``)."""
        return {"strategy": self.strategy.state_dict(),
                "sampler": None if self.sampler is None else self.sampler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the strategy now, the sampler now or when ``loader()`` builds it."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"strategy", "sampler"}:
            raise ValueError(f"AdaptiveBatchSize.load_state_dict needs the dict state_dict() returns, with keys "
                             f"['sampler', 'strategy']; got {state_dict!r:.80}")
        self.strategy.load_state_dict(state_dict["strategy"])
        self._sampler_state = state_dict["sampler"]
        if self.sampler is not None and self._sampler_state is not None:
            self.sampler.load_state_dict(self._sampler_state)


class _LengthUnknown(DataLoader):
    """A DataLoader without ``len()``: its number of batches changes with the batch size, so Lightning must
    not count them up front (it looks one batch ahead for the last one instead)."""

    def __len__(self) -> int:
        raise TypeError("AdaptiveBatchSize.loader() has no len(): its number of batches depends on batch sizes "
                        "not decided yet")

