"""The training loop: one function, ``fit``, for every strategy.

    python -m labkit train --dataset mnist --model mlp --strategy linear --a 64 --epochs 10 --out runs/lin
    torchrun --nproc-per-node 2 -m labkit train --strategy loss --multiple-of 2 --out runs/ddp   # DDP: see fit

Per epoch it trains on batches whose size the strategy sets, evaluates on the test split (or, with
``validation``, on a share of the training set held out for tuning), feeds the strategy its signals (train
loss, mean softmax entropy, gradient noise scale when tracked, epoch) and appends a row to the history table.

The learning rate of a step of batch B is ``lr · f(p) · coupling(B)``: the peak ``lr``, the schedule's factor
f (``labkit.lr_schedules``; default warm-up for one epoch then linear decay to zero) at p, the share of the
training samples seen by the middle of the batch, and the batch-size coupling (``lr_rule``) on top: with B₀
the batch ``lr`` was tuned for, B/B₀ (linear), √(B/B₀) (sqrt), 1 (none), or AdaScale's gain
(B_noise + B₀)·B / ((B_noise + B)·B₀) (adascale; B_noise the gradient noise scale, tracked for it). Image
training batches can be augmented on the device (``augment``: random 4 px crop and flip; on by default for
cifar10) and the loss smoothed (``label_smoothing``). A run that learns nothing, its train loss within 2% of
ln C for two epochs or its accuracy at chance after them, stops with ``DeadRun`` (its history kept), as a
NaN loss stops with ``Diverged``. Phases, in order: set LR → forward/backward → optimizer step →
accumulate signals (on the device, no sync) → end of epoch: one sync, eval, strategy decision, log,
checkpoint. The data stays on the device (``labkit.batching.DeviceBatcher``). The step is
``labkit.step.TrainStep``, the one the finder, the memory probe and the benchmarks take: on CUDA bf16
autocast with channels_last images, optionally under ``torch.compile`` with a dynamic batch dimension so a
new batch size does not recompile; the GNS-measured variant when a tracker is due.

Also per step: the peak memory against a budget (``labkit.memory.MemoryWatch``), the signal of the
``memory`` strategy. A step that runs out of memory is not lost (``TrainStep.with_requeue``): under the
``memory`` strategy the batch halves and the same examples (and the rest of the batch's queue) are retried
at the new size; any other strategy stops with a message. Per epoch: the GPU's energy over the training
time (``labkit.cost``, NVML), and with ``curriculum`` only the easiest share c(t) of the training set is
served (``labkit.curriculum``). History columns: see ``fit``; ``decisions.csv`` is the strategy's decision log.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from labkit import strategies
from labkit.batching import DeviceBatcher
from labkit.checkpoint import BrokenRun, Progress, check_resumable, resume_or_start, save_checkpoint, save_history
from labkit.checks import check_choice, check_float, check_int
from labkit.cost import EnergyMeter
from labkit.curriculum import Curriculum, loss_difficulty
from labkit.augment import Augment
from labkit.data import load
from labkit.integrations.distributed import Ranks, agree, check_split, measured_by, process_group
from labkit.lr_schedules import LR_SCHEDULES, LRSchedule
from labkit.memory import MemoryCapExceeded, MemoryWatch
from labkit.models import build_model
from labkit.runtime import pick_device, quick_mode
from labkit.signals import mean_entropy
from labkit.step import StepResult, TrainStep

OPTIMIZERS = ("sgd", "adam")
DECIDE = ("epoch", "step")
QUICK_SIZES = (2048, 512)          # train / test examples kept in quick mode
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved as ``config.json`` beside the history."""
    dataset: str = "mnist"
    model: str = "mlp"
    strategy: str = "fixed"
    strategy_params: dict = field(default_factory=dict)   # passed to labkit.strategies.build
    epochs: int = 5
    lr: float = 0.05                  # tuned for base_batch
    lr_rule: str = "sqrt"             # linear | sqrt | none | adascale (tracks the GNS): how lr follows the batch
    lr_schedule: str = "linear"       # constant | cosine | linear | step | onecycle over the share of training done
    lr_warmup: float | None = None    # epochs of linear warm-up (None: 1, at most a fifth of the run; constant: 0)
    base_batch: int | None = None     # batch size lr was tuned for (default: the strategy's b_init)
    optimizer: str = "sgd"            # sgd (momentum 0.9, nesterov) | adam
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0      # cross-entropy against (1 − ε)·one-hot + ε/C (train loss only)
    augment: bool | None = None       # random crop (4 px) and flip on the device; None: on for cifar10
    validation: float = 0.0           # share of the training set held out and evaluated instead of the test split
    decide_every: str = "epoch"       # epoch | step: when the strategy takes a decision
    gns_every: int = 0                # GNS reading every N steps (0: off; GNSTracker's default for gns, adascale)
    memory_budget_mb: float | None = None   # memory signal's budget (CUDA: the device's memory; enforced if less)
    curriculum: str | None = None     # easiest data first, scored by: "self" (the model, each epoch) | a run folder
    curriculum_c0: float = 0.25       # share of the data in the first epoch's pool
    curriculum_epochs: int = 5        # the epoch from which all data is used
    seed: int = 0
    device: str | None = None         # None: CUDA when present
    compile: bool = False
    quick: bool | None = None         # None: from LABKIT_QUICK
    data_root: str | None = None
    eval_batch: int = 2048

    def checked(self) -> "TrainConfig":
        check_int("epochs", self.epochs, low=1)
        check_float("lr", self.lr, low=0.0, low_open=True)
        check_choice("lr_rule", self.lr_rule, strategies.LR_RULES_WITH_ADASCALE)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.lr_warmup is not None:
            check_float("lr_warmup", self.lr_warmup, low=0.0, high=self.epochs, high_open=True)
        check_float("label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        check_float("validation", self.validation, low=0.0, high=1.0, high_open=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("decide_every", self.decide_every, DECIDE)
        check_int("gns_every", self.gns_every, low=0)
        check_float("weight_decay", self.weight_decay, low=0.0)
        check_float("curriculum_c0", self.curriculum_c0, low=0.0, high=1.0, low_open=True)
        check_int("curriculum_epochs", self.curriculum_epochs, low=1)
        check_int("eval_batch", self.eval_batch, low=1)
        if self.curriculum not in (None, "self") and not (Path(self.curriculum) / "checkpoint.pt").is_file():
            raise ValueError(f"curriculum={self.curriculum!r} is neither 'self' nor a run folder with a "
                             f"checkpoint.pt (the reference model whose per-example loss orders the data)")
        if self.memory_budget_mb is not None:
            check_float("memory_budget_mb", self.memory_budget_mb, low=0.0, low_open=True)
        return self


class Diverged(RuntimeError):
    """The loss became NaN or infinite; ``history`` holds the epochs before it."""

    def __init__(self, message: str, history: pd.DataFrame):
        super().__init__(message)
        self.history = history


class DeadRun(Diverged):
    """The run learns nothing: its loss or accuracy stays at chance; ``history`` holds the epochs so far."""


def fit(config: TrainConfig, out: str | Path | None = None, *, resume: bool = False,
        progress: bool = True) -> pd.DataFrame:
    """Train as ``config`` says; return the per-epoch history (and write it under ``out`` if given).

    With ``out``, each epoch writes ``history.csv`` and ``checkpoint.pt``; ``resume=True`` continues from
    the checkpoint there and gives the same result as an uninterrupted run, even after a ``kill -9`` (each
    file is replaced whole). A resume first compares ``config.json`` with ``config``: any difference but
    where it runs (device, compile, data_root, eval_batch) is a ``ValueError`` naming the fields, epochs
    included (the LR schedule spans them). A checkpoint or config that cannot be read back is a
    ``BrokenRun``. A NaN or infinite loss stops the run with ``Diverged``, per epoch or per step.

    DDP (``torchrun --nproc-per-node R -m labkit train ...``, ``labkit train --nproc R``, or R processes
    that initialised ``torch.distributed`` themselves; see ``labkit.integrations.distributed.process_group``):
    the strategy's sizes are global batches, so its ``multiple_of`` must be a multiple of R. Every rank draws
    the same order and trains, as one ``DistributedDataParallel`` model, on its piece B/R of each global
    batch B: the same batches as one process. The LR follows B; the train loss and entropy are summed over
    the ranks; every rank evaluates the whole test split (the replicas are equal, so are the numbers); each
    decision is ``agree``'d (rank 0 decides on the mean signals, every rank loads its state). Only rank 0
    writes files; a resume loads the checkpoint on every rank. A step that runs out of memory stops the run
    (one rank cannot retry alone). The GNS tracker reads the replicas (``ReplicaReadings``): B_small = B/R,
    B_big = B from DDP's own all-reduce, no microbatch passes.
    """
    config = config.checked()
    with process_group(pick_device(config.device)) as ranks:
        return _fit(config, ranks, None if out is None else Path(out), resume, progress)


def _fit(config: TrainConfig, ranks: Ranks, out: Path | None, resume: bool, progress: bool) -> pd.DataFrame:
    """``fit``'s run on this rank (of one, without DDP)."""
    quick = quick_mode() if config.quick is None else config.quick
    writes = out if ranks.leader else None                    # only rank 0 writes files
    if out is not None and resume:
        check_resumable(out, replace(config, quick=quick))       # before anything is read or written
    device = ranks.device
    torch.manual_seed(config.seed)

    # -- data, strategy, model, optimizer, batchers, memory watch, curriculum ------------------------------
    data = _data(config, quick, device)
    n_train = len(data.y_train)
    strategy = _strategy(config, n_train, quick, ranks.world)
    model = build_model(config.model, data.input_shape, data.num_classes).to(device)
    base_batch = config.base_batch or strategy.b_init
    optimizer = make_optimizer(config, model)
    gns = _gns_tracker(config, strategy)
    train = DeviceBatcher(data.x_train, data.y_train, mean=data.mean, std=data.std, shuffle=True,
                          seed=config.seed, drop_last=True, augment=_augment(config, data))
    test = DeviceBatcher(data.x_test, data.y_test, mean=data.mean, std=data.std, shuffle=False)
    schedule = LRSchedule(config.lr_schedule, warmup=_warmup_share(config))
    watch = _memory_watch(config, strategy, model, train)
    curriculum = _curriculum(config, model, data, train)
    rows, done = resume_or_start(out, resume, replace(config, quick=quick), device, writer=ranks.leader,
                                 model=model, optimizer=optimizer, strategy=strategy, batcher=train, gns=gns)
    net = ranks.replicate(model)                                # DDP with several ranks
    step = TrainStep(net, optimizer, compile=config.compile, gns=measured_by(gns, net), watch=watch,
                     loss_fn=partial(F.cross_entropy, label_smoothing=config.label_smoothing), steps=done.step)
    shrink = partial(_after_oom, strategy, ranks.world)
    chance = _chance(data)

    bar = tqdm(range(done.epoch, config.epochs), desc=f"{config.strategy} on {data.name}",
               disable=not progress or not ranks.leader, initial=done.epoch, total=config.epochs)
    with watch.limit(), EnergyMeter(device) as meter:
        for epoch in bar:
            # -- train: this rank's piece of each global batch of the strategy's size, from the epoch's pool --
            pool = None if curriculum is None else curriculum(epoch).pool(epoch)
            lr = partial(_lr, config, schedule, base_batch, epoch, n_train if pool is None else len(pool),
                         ranks.world, gns)
            decide = partial(_decide_now, strategy, epoch, gns, ranks, _Lap()) if config.decide_every == "step" \
                else None
            batches = train.batches(lambda: strategy.batch_size, pool=pool, part=(ranks.rank, ranks.world))
            tally = _over_ranks(_train_epoch(step, batches, lr, shrink, decide, meter), ranks)
            if tally.steps == 0:
                raise ValueError(f"no full batch fits in the {n_train} training examples at batch size "
                                 f"{strategy.batch_size}: lower max_batch")
            done = Progress(epoch + 1, step.steps, done.samples + tally.samples, done.wall + tally.seconds,
                            done.energy + tally.joules)

            # -- end of epoch: signals (one sync), eval, decision, log, checkpoint ------------------------
            test_loss, test_acc = evaluate(step, test, config.eval_batch)
            peak_mb, usage = watch.end_epoch()
            row = _epoch_row(done, tally, test_loss, test_acc, peak_mb, 1.0 if pool is None else len(pool) / n_train,
                             gns)
            _stop_if_failed(row, rows, chance, writes, strategy, config, base_batch)
            if config.decide_every == "epoch":
                agree(strategy, loss=row["train_loss"], entropy=row["train_entropy"], epoch=epoch + 1,
                      step_time=tally.seconds / tally.steps, **_gns_signal(gns), **_memory_signal(usage))
            rows.append({**row, "next_batch": strategy.batch_size,
                         "reason": strategy.history[-1].reason if strategy.history else ""})
            bar.set_postfix(B=int(row["batch_size"]), loss=f"{row['train_loss']:.3f}", acc=f"{test_acc:.3f}")
            save_history(writes, rows, strategy)
            if writes is not None:
                save_checkpoint(writes, done, history=rows, model=model.state_dict(), optimizer=optimizer.state_dict(),
                                strategy=strategy.state_dict(), batcher=train.state_dict(),
                                gns=gns.state_dict() if gns is not None else {}, rng=torch.get_rng_state())
    return save_history(writes, rows, strategy)     # again: a resumed, finished run restores a lost history


@dataclass
class _Tally:
    """An epoch's training: Σ loss·B and Σ entropy·B kept on the device (no sync per step), samples, steps,
    the last step's learning rate, out-of-memory retries; the seconds (synchronised with the GPU at both
    ends) and the joules (NVML's counter; nan without a GPU or NVML) it took."""
    loss_sum: torch.Tensor
    entropy_sum: torch.Tensor
    lr: float = math.nan
    samples: int = 0
    steps: int = 0
    retries: int = 0
    seconds: float = 0.0
    joules: float = 0.0

    def add(self, result: StepResult) -> torch.Tensor:
        """Count a step in; return its mean softmax entropy (0-d, on the device)."""
        entropy = mean_entropy(result.logits)
        self.loss_sum += result.loss.float() * result.batch
        self.entropy_sum += entropy * result.batch
        self.lr = result.lr
        self.samples += result.batch
        self.steps += 1
        return entropy


def _train_epoch(step: TrainStep, batches, lr: Callable[[int, int], float], shrink: Callable[[int, str], int],
                 decide: Callable | None, meter: EnergyMeter) -> _Tally:
    """One epoch of ``step`` over ``batches`` at ``lr(samples done, batch)``, a batch that runs out of memory
    retried at ``shrink``'s size. With ``decide`` (per-step decisions) each step that is not a retried piece
    (its memory says nothing about the batch the strategy now holds) takes a decision; a non-finite loss
    ends the epoch there (``fit`` then stops the run as ``Diverged``)."""
    step.model.train()
    step.synchronize()
    tally = _Tally(torch.zeros((), device=step.device), torch.zeros((), device=step.device))
    start, joules, ooms = time.perf_counter(), meter.read(), step.ooms
    results = (result for xb, yb in batches
               for result in step.with_requeue(xb, yb, shrink, lambda batch: lr(tally.samples, batch)))
    for result in results:
        entropy = tally.add(result)
        if decide is not None and not result.requeued and not decide(result, entropy):
            break
    step.synchronize()
    tally.seconds, tally.joules = time.perf_counter() - start, meter.read() - joules
    tally.retries = step.ooms - ooms
    return tally


def _lr(config: TrainConfig, schedule: LRSchedule, base_batch: int, epoch: int, epoch_size: int, replicas: int,
        gns, samples: int, batch: int) -> float:
    """A step's learning rate, lr · f(p) · coupling(B): the peak, the schedule's factor at p (the share of
    training done by the middle of the batch, ``samples`` of the epoch's ``epoch_size`` done before it)
    and the batch-size coupling of ``batch`` (``_coupling``, with the tracker ``gns``). ``samples`` and
    ``batch`` count this rank's examples: times ``replicas`` (the DDP world size), the global ones."""
    samples, batch = samples * replicas, batch * replicas
    p = (epoch + (samples + batch / 2) / epoch_size) / config.epochs
    return config.lr * schedule.factor_at(p) * _coupling(config.lr_rule, base_batch, batch, gns)


def _coupling(rule: str, base_batch: int, batch: int, gns) -> float:
    """The LR factor of global batch B = ``batch`` for ``lr`` tuned at B₀ = ``base_batch``: B/B₀ (linear),
    √(B/B₀) (sqrt), 1 (none), or for adascale AdaScale's gain (B_noise + B₀)·B / ((B_noise + B)·B₀), with
    B_noise the tracker's smoothed ``b_simple`` now, clamped at 0 (gain 1), and 1 before its first reading."""
    if rule != "adascale":
        return strategies.scaled_lr(1.0, base_batch, batch, rule)
    b_noise = gns.b_simple
    return 1.0 if b_noise is None else strategies.adascale_gain(batch, base_batch, max(b_noise, 0.0))


class _Lap:
    """Seconds since the previous call (or since it was made): after a per-step decision's sync, the time
    of the step just taken, decision included."""

    def __init__(self):
        self.last = time.perf_counter()

    def __call__(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds


def _decide_now(strategy, epoch: int, gns, ranks: Ranks, lap: _Lap, result: StepResult,
                entropy: torch.Tensor) -> bool:
    """A per-step decision, ``agree``'d over the ranks, from the step's loss and entropy (averaged over the
    ranks: ``.tolist()``, a sync per step) and time; False, and no decision, when the loss is not finite."""
    loss, entropy = ranks.mean(torch.stack([result.loss.float(), entropy.float()])).tolist()
    if not math.isfinite(loss):
        return False
    agree(strategy, loss=loss, entropy=entropy, epoch=epoch + 1, step_time=lap(), **_gns_signal(gns),
          **_memory_signal(result.usage))
    return True


def _over_ranks(tally: _Tally, ranks: Ranks) -> _Tally:
    """The epoch's tally with Σ loss·B, Σ entropy·B and the samples summed over the ranks (one all-reduce);
    steps, LR and times are this rank's (the same steps and LR on every rank)."""
    if ranks.world == 1:
        return tally
    local = torch.stack([tally.loss_sum.double(), tally.entropy_sum.double(),
                         torch.tensor(float(tally.samples), dtype=torch.float64, device=tally.loss_sum.device)])
    loss_sum, entropy_sum, samples = ranks.sum(local)
    return replace(tally, loss_sum=loss_sum, entropy_sum=entropy_sum, samples=round(samples.item()))


def _epoch_row(done: Progress, tally: _Tally, test_loss: float, test_acc: float, peak_mb: float,
               pool_fraction: float, gns) -> dict[str, Any]:
    """The history row of the epoch ``done`` has just counted in (the decision's columns come later)."""
    return dict(epoch=done.epoch, batch_size=tally.samples / tally.steps, lr=tally.lr, steps=done.step,
                samples=done.samples, train_loss=(tally.loss_sum / tally.samples).item(),     # .item(): the sync
                train_entropy=(tally.entropy_sum / tally.samples).item(), test_loss=test_loss, test_acc=test_acc,
                epoch_time_s=tally.seconds, wall_time_s=done.wall, energy_j=done.energy,
                samples_per_s=tally.samples / tally.seconds, peak_mem_mb=peak_mb, oom_retries=tally.retries,
                pool_fraction=pool_fraction, gns=gns.b_simple if gns is not None else math.nan)


def _stop_if_failed(row: dict, rows: list[dict], chance: tuple[float, float], out: Path | None, strategy,
                    config: TrainConfig, base_batch: int) -> None:
    """Stop a run whose train loss is not finite (``Diverged``) or that learns nothing (``DeadRun``, see
    ``_dead``): the row is logged with the reason and the history saved before the error is raised."""
    kept = f"history so far kept{f' in {out}' if out else ''}"
    if not math.isfinite(row["train_loss"]):
        reason, error = "stopped: loss is not finite", Diverged
        message = (f"training diverged at epoch {row['epoch']}: train loss is {row['train_loss']} at batch size "
                   f"{row['batch_size']:.0f}, lr {row['lr']:g}; lower lr or use lr_rule='sqrt' ({kept})")
    else:
        dead = _dead([*rows, row], *chance)
        if not dead:
            return
        reason, error = f"stopped: dead, {dead}", DeadRun
        message = (f"the run is dead at epoch {row['epoch']}: {dead}; lower lr (now {config.lr:g} at batch "
                   f"{base_batch}) or lengthen the warm-up ({kept})")
    rows.append({**row, "next_batch": strategy.batch_size, "reason": reason})
    raise error(message, save_history(out, rows, strategy))


@torch.no_grad()
def evaluate(step: TrainStep, batcher: DeviceBatcher, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, with the step's forward (autocast, channels_last)."""
    step.model.eval()
    loss_sum = torch.zeros((), device=batcher.y.device)
    correct = torch.zeros((), device=batcher.y.device)
    for xb, yb in batcher.batches(batch_size):
        logits = step.logits(xb)
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(dim=1) == yb).sum()
    n = batcher.num_samples
    return (loss_sum / n).item(), (correct / n).item()          # .item(): one sync per split


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``fit`` trains with: SGD with Nesterov momentum 0.9, or AdamW; weight decay from config."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _data(config: TrainConfig, quick: bool, device: torch.device):
    """The dataset on the device: a seeded subset in quick mode, and the validation split when asked."""
    data = load(config.dataset, root=config.data_root, device=device)
    if quick:
        data = data.subset(min(QUICK_SIZES[0], len(data.y_train)), min(QUICK_SIZES[1], len(data.y_test)),
                           seed=config.seed)
    if config.validation:
        data = data.validation_split(config.validation)        # seed 0: every trial validates on the same samples
    return data


def _strategy(config: TrainConfig, n_train: int, quick: bool, replicas: int):
    """The strategy ``config`` names, refused when its smallest batch is larger than the training set, or,
    under DDP, when its sizes may not split evenly over the ``replicas`` ranks."""
    strategy = strategies.build(config.strategy, **config.strategy_params)
    if strategy.min_batch > n_train:
        raise ValueError(f"min_batch={strategy.min_batch} is larger than the training set of {config.dataset} "
                         f"({n_train} examples{', quick mode' if quick else ''}): lower min_batch")
    check_split(strategy, replicas)
    return strategy


def _memory_watch(config: TrainConfig, strategy, model, train: DeviceBatcher) -> MemoryWatch:
    """Each step's peak memory against ``memory_budget_mb``; a strategy that reads the signal needs a budget."""
    budget = None if config.memory_budget_mb is None else config.memory_budget_mb * 2**20
    watch = MemoryWatch(model, train.normalise(train.x[:1]), budget)
    if "memory" in strategy.requires and watch.budget is None:
        raise ValueError(f"strategy {config.strategy!r} reads the memory signal, which needs a budget on a "
                         f"{watch.device.type.upper()}: set memory_budget_mb (--memory-budget-mb)")
    return watch


def _gns_tracker(config: TrainConfig, strategy):
    """The tracker: every ``gns_every`` steps, or at ``GNSTracker``'s default interval for a strategy that
    requires the ``gns`` signal or for ``lr_rule="adascale"``, whose gain reads it."""
    if not config.gns_every and "gns" not in strategy.requires and config.lr_rule != "adascale":
        return None
    from labkit.gns import GNSTracker
    return GNSTracker(every=config.gns_every) if config.gns_every else GNSTracker()


def _augment(config: TrainConfig, data) -> Augment | None:
    """Random crop and flip for image training batches: on for cifar10 unless ``augment=False``."""
    wanted = data.name.startswith("cifar10") if config.augment is None else config.augment
    if wanted and len(data.input_shape) != 3:
        raise ValueError(f"augment=True needs images (C, H, W); {data.name} holds samples of shape "
                         f"{data.input_shape}: leave augment off")
    return Augment() if wanted else None


def _warmup_share(config: TrainConfig) -> float:
    """The warm-up as a share of training: ``lr_warmup`` epochs / epochs; by default one epoch, at most a
    fifth of the run, and none for the constant schedule."""
    if config.lr_warmup is not None:
        return config.lr_warmup / config.epochs
    return 0.0 if config.lr_schedule == "constant" else min(1 / config.epochs, 0.2)


DEAD_LOSS = 0.02     # a train loss within 2% of ln C ...
DEAD_EPOCHS = 2      # ... for this many epochs, or chance accuracy after them, marks a dead run


def _chance(data) -> tuple[float, float]:
    """Chance level: the loss ln C of a uniform guess and the accuracy of always naming the commonest class."""
    counts = torch.bincount(data.y_test, minlength=data.num_classes)
    return math.log(data.num_classes), (counts.max() / counts.sum()).item()


def _dead(rows: list[dict], chance_loss: float, chance_acc: float) -> str | None:
    """Why the run is dead, or None: its train loss within ``DEAD_LOSS`` of ln C in each of the last
    ``DEAD_EPOCHS`` epochs, or its evaluation accuracy within one point of chance after them."""
    if len(rows) < DEAD_EPOCHS:
        return None
    last = rows[-DEAD_EPOCHS:]
    if all(abs(r["train_loss"] - chance_loss) <= DEAD_LOSS * chance_loss for r in last):
        return (f"train loss {last[-1]['train_loss']:.4f} stayed within {DEAD_LOSS:.0%} of ln C = {chance_loss:.4f} "
                f"(chance) for {DEAD_EPOCHS} epochs")
    if last[-1]["test_acc"] <= chance_acc + 0.01:
        return f"accuracy {last[-1]['test_acc']:.4f} is at chance ({chance_acc:.4f}) after {len(rows)} epochs"
    return None


def _gns_signal(gns) -> dict[str, float]:
    return {"gns": gns.b_simple} if gns is not None and gns.b_simple is not None else {}


def _curriculum(config: TrainConfig, model, data, train: DeviceBatcher) -> Callable[[int], Curriculum] | None:
    """``epoch → Curriculum`` ordering the training set by per-example loss: of the model being trained,
    re-scored at every epoch (``"self"``, self-paced), or of the reference model saved in a run folder,
    scored once. None without a curriculum."""
    if config.curriculum is None:
        return None
    shape = dict(c0=config.curriculum_c0, epochs=config.curriculum_epochs)
    if config.curriculum == "self":
        return lambda epoch: Curriculum(loss_difficulty(model, train.x, train.y, transform=train.normalise), **shape)
    folder = Path(config.curriculum)
    saved = json.loads((folder / "config.json").read_text())["config"]
    if (saved["dataset"], saved["model"]) != (config.dataset, config.model):
        raise ValueError(f"curriculum={str(folder)!r} holds a {saved['model']} on {saved['dataset']}; this run "
                         f"trains a {config.model} on {config.dataset}: score with a reference of the same kind")
    reference = build_model(config.model, data.input_shape, data.num_classes).to(train.x.device)
    reference.load_state_dict(torch.load(folder / "checkpoint.pt", map_location=train.x.device,
                                         weights_only=True)["model"])
    fixed = Curriculum(loss_difficulty(reference, train.x, train.y, transform=train.normalise), **shape)
    return lambda epoch: fixed


def _memory_signal(usage: float | None) -> dict[str, float]:
    return {} if usage is None else {"memory": usage}


def _after_oom(strategy, replicas: int, batch: int, failure: str) -> int:
    """A step of ``batch`` examples ran out of memory (``TrainStep`` has freed what it left): let the
    strategy shrink, and return the size to retry the same examples at. Only the ``memory`` strategy
    shrinks, and only on one process (under DDP one rank cannot retry alone: the others wait in the
    all-reduce); otherwise (or at ``min_batch``) the error is raised again, with what to do."""
    if replicas > 1:
        raise MemoryCapExceeded(f"batch {batch} on one of {replicas} DDP ranks ran out of memory ({failure}): "
                                f"a rank cannot retry alone; lower max_batch")
    size = strategy.oom(batch)
    if size is None:
        raise MemoryCapExceeded(f"batch {batch} ran out of memory ({failure}) under strategy "
                                f"{strategy.name!r}: lower max_batch, or use strategy 'memory', which halves "
                                f"the batch and retries")
    if size >= batch:
        raise MemoryCapExceeded(f"batch {batch} ran out of memory ({failure}) at min_batch="
                                f"{strategy.min_batch}: nothing smaller to try; lower min_batch or raise the budget")
    log.warning("batch %d ran out of memory (%s): retrying its examples in batches of %d", batch, failure, size)
    return size


__all__ = ["TrainConfig", "fit", "evaluate", "Diverged", "DeadRun", "BrokenRun", "make_optimizer"]
