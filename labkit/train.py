"""The training loop: one function, ``fit``, for every strategy.

    python -m labkit train --dataset mnist --model mlp --strategy linear --a 64 --epochs 10 --out runs/lin

Per epoch it trains on batches whose size the strategy sets, evaluates on the test split (or, with
``validation``, on a share of the training set held out for tuning), feeds the strategy its signals (train
loss, mean softmax entropy, gradient noise scale when tracked, epoch) and appends a row to the history table.

The learning rate of a step of batch B is ``lr · f(p) · coupling(B)``: the peak ``lr``, the schedule's factor
f (``labkit.lr_schedules``; default warm-up for one epoch then linear decay to zero) at p, the share of the
training samples seen by the middle of the batch, and the batch-size coupling (``lr_rule``) on top. Image
training batches can be augmented on the device (``augment``: random 4 px crop and flip; on by default for
cifar10) and the loss smoothed (``label_smoothing``). A run that learns nothing, its train loss within 2% of
ln C for two epochs or its accuracy at chance after them, stops with ``DeadRun`` (its history kept), as a
NaN loss stops with ``Diverged``. Phases, in order: set LR → forward/backward → optimizer step →
accumulate signals (on the device, no sync) → end of epoch: one sync, eval, strategy decision, log,
checkpoint. The data stays on the device (``labkit.batching.DeviceBatcher``); on CUDA the step runs in
bf16 autocast with channels_last images, and optionally under ``torch.compile`` with a dynamic batch
dimension so a new batch size does not recompile.

Also per step: the peak memory against a budget (``labkit.memory.MemoryWatch``), the signal of the
``memory`` strategy. A step that runs out of memory is not lost: under the ``memory`` strategy the batch
halves and the same examples (and the rest of the batch's queue) are retried at the new size; any other
strategy stops with a message. Per epoch: the GPU's energy over the training time (``labkit.cost``,
NVML), and with ``curriculum`` only the easiest share c(t) of the training set is served
(``labkit.curriculum``). History columns: see ``fit``; ``decisions.csv`` is the strategy's decision log.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from labkit import strategies
from labkit.batching import DeviceBatcher
from labkit.checkpoint import BrokenRun, check_resumable, restore, save_checkpoint, write_config
from labkit.checks import check_choice, check_float, check_int
from labkit.cost import EnergyMeter
from labkit.curriculum import Curriculum, loss_difficulty
from labkit.augment import Augment
from labkit.data import load
from labkit.lr_schedules import LR_SCHEDULES, LRSchedule
from labkit.memory import OUT_OF_MEMORY, MemoryCapExceeded, MemoryWatch, free_memory
from labkit.models import build_model
from labkit.runtime import atomic_path, pick_device, quick_mode
from labkit.signals import mean_entropy

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
    lr_rule: str = "sqrt"             # linear | sqrt | none: how lr follows the batch size
    lr_schedule: str = "linear"       # constant | cosine | linear | step | onecycle over the share of training done
    lr_warmup: float | None = None    # epochs of linear warm-up (None: 1, at most a fifth of the run; constant: 0)
    base_batch: int | None = None     # batch size lr was tuned for (default: the strategy's b_init)
    optimizer: str = "sgd"            # sgd (momentum 0.9, nesterov) | adam
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0      # cross-entropy against (1 − ε)·one-hot + ε/C (train loss only)
    augment: bool | None = None       # random crop (4 px) and flip on the device; None: on for cifar10
    validation: float = 0.0           # share of the training set held out and evaluated instead of the test split
    decide_every: str = "epoch"       # epoch | step: when the strategy takes a decision
    gns_every: int = 0                # GNS reading every N steps (0: off; GNSTracker's default for gns)
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
        check_choice("lr_rule", self.lr_rule, strategies.LR_RULES)
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
    """
    config = config.checked()
    quick = quick_mode() if config.quick is None else config.quick
    out = Path(out) if out is not None else None
    if out is not None and resume:
        check_resumable(out, replace(config, quick=quick))       # before anything is read or written
    device = pick_device(config.device)
    torch.manual_seed(config.seed)

    # -- data, model, strategy, optimizer --------------------------------------------------------------
    data = load(config.dataset, root=config.data_root, device=device)
    if quick:
        data = data.subset(min(QUICK_SIZES[0], len(data.y_train)), min(QUICK_SIZES[1], len(data.y_test)),
                           seed=config.seed)
    if config.validation:
        data = data.validation_split(config.validation)        # seed 0: every trial validates on the same samples
    strategy = strategies.build(config.strategy, **config.strategy_params)
    n_train = len(data.y_train)
    if strategy.min_batch > n_train:
        raise ValueError(f"min_batch={strategy.min_batch} is larger than the training set of {config.dataset} "
                         f"({n_train} examples{', quick mode' if quick else ''}): lower min_batch")
    model = build_model(config.model, data.input_shape, data.num_classes).to(device)
    images = len(data.input_shape) == 3 and device.type == "cuda"
    if images:
        model = model.to(memory_format=torch.channels_last)
    base_batch = config.base_batch or strategy.b_init
    optimizer = make_optimizer(config, model)
    forward = compiled(model) if config.compile else model
    gns = _gns_tracker(config)
    train = DeviceBatcher(data.x_train, data.y_train, mean=data.mean, std=data.std, shuffle=True,
                          seed=config.seed, drop_last=True, augment=_augment(config, data))
    schedule = LRSchedule(config.lr_schedule, warmup=_warmup_share(config))
    chance = _chance(data)
    test = DeviceBatcher(data.x_test, data.y_test, mean=data.mean, std=data.std, shuffle=False)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    budget = None if config.memory_budget_mb is None else config.memory_budget_mb * 2**20
    watch = MemoryWatch(model, train.normalise(data.x_train[:1].to(device)), budget)
    if "memory" in strategy.requires and watch.budget is None:
        raise ValueError(f"strategy {config.strategy!r} reads the memory signal, which needs a budget on a "
                         f"{device.type.upper()}: set memory_budget_mb (--memory-budget-mb)")
    curriculum = _curriculum(config, model, data, train)

    rows: list[dict[str, Any]] = []
    start_epoch, step, samples, wall, energy = 0, 0, 0, 0.0, 0.0
    if out is not None:
        if resume and (out / "checkpoint.pt").exists():
            rows, (start_epoch, step, samples, wall, energy) = restore(
                out / "checkpoint.pt", device, config, model=model, optimizer=optimizer, strategy=strategy,
                batcher=train, gns=gns)
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, replace(config, quick=quick), device)

    bar = tqdm(range(start_epoch, config.epochs), desc=f"{config.strategy} on {data.name}",
               disable=not progress, initial=start_epoch, total=config.epochs)
    with watch.limit(), EnergyMeter(device) as meter:
        for epoch in bar:
            model.train()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0, e0 = time.perf_counter(), meter.read()
            loss_sum = torch.zeros((), device=device)       # Σ loss·B over the epoch, kept on the device
            entropy_sum = torch.zeros((), device=device)
            epoch_samples = epoch_steps = retries = 0
            diverged = False                                # a per-step decision met a NaN or infinite loss
            lr = config.lr
            pool = None if curriculum is None else curriculum(epoch).pool(epoch)
            epoch_size = n_train if pool is None else len(pool)
            for chunk in train.batches(lambda: strategy.batch_size, pool=pool):
                pending = [chunk]               # a batch that runs out of memory comes back here in halves
                retrying = False                # its pieces train but take no per-step decision: their
                while pending:                  # memory says nothing about the batch the strategy now holds
                    xb, yb = pending.pop()
                    batch = len(yb)
                    # -- LR: peak · schedule(share of training done, mid-batch) · coupling(batch size) ---------
                    progress = (epoch + (epoch_samples + batch / 2) / epoch_size) / config.epochs
                    lr = (config.lr * schedule.factor_at(progress)
                          * strategies.scaled_lr(1.0, base_batch, batch, config.lr_rule))
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    if images:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    # -- forward / backward / update; on a GNS step the tracker's microbatches do the passes --
                    try:
                        watch.before(batch)
                        if gns is not None and gns.due(step):
                            logits, loss = _measured_step(gns, model, xb, yb, autocast, config.label_smoothing)
                        else:
                            with autocast:
                                logits = forward(xb)
                                loss = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing)
                            loss.backward()
                        optimizer.step()
                        failure = None
                    except OUT_OF_MEMORY as error:
                        failure = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                    optimizer.zero_grad(set_to_none=True)
                    if failure is not None:            # outside ``except``: the failed step's frames are gone
                        pending = _requeue(xb, yb, pending, _after_oom(strategy, batch, failure))
                        retries += 1
                        retrying = True
                        continue
                    usage = watch.after()
                    # -- signals, accumulated without a sync -------------------------------------------------
                    loss_sum += loss.detach().float() * batch
                    entropy = mean_entropy(logits.detach())
                    entropy_sum += entropy * batch
                    epoch_samples += batch
                    epoch_steps += 1
                    step += 1
                    if config.decide_every == "step" and not retrying:           # .item(): a sync per step
                        step_loss = loss.item()
                        if not math.isfinite(step_loss):     # the epoch ends here; below it stops as Diverged
                            diverged = True
                            break
                        strategy.step(loss=step_loss, entropy=entropy.item(), epoch=epoch + 1, **_gns_signal(gns),
                                      **_memory_signal(usage))
                if diverged:
                    break
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            epoch_time = time.perf_counter() - t0
            energy += meter.read() - e0                     # NVML's counter; nan without a GPU or NVML
            wall += epoch_time
            samples += epoch_samples
            if epoch_steps == 0:
                raise ValueError(f"no full batch fits in the {n_train} training examples at batch size "
                                 f"{strategy.batch_size}: lower max_batch")

            # -- end of epoch: signals (one sync), eval, decision, log ---------------------------------------
            train_loss = (loss_sum / epoch_samples).item()
            train_entropy = (entropy_sum / epoch_samples).item()
            test_loss, test_acc = evaluate(forward, test, config.eval_batch, autocast, images)
            peak_mb, epoch_usage = watch.end_epoch()
            row = dict(epoch=epoch + 1, batch_size=epoch_samples / epoch_steps, lr=lr, steps=step, samples=samples,
                       train_loss=train_loss, train_entropy=train_entropy, test_loss=test_loss, test_acc=test_acc,
                       epoch_time_s=epoch_time, wall_time_s=wall, energy_j=energy,
                       samples_per_s=epoch_samples / epoch_time,
                       peak_mem_mb=peak_mb, oom_retries=retries,
                       pool_fraction=1.0 if pool is None else len(pool) / n_train,
                       gns=gns.b_simple if gns is not None else math.nan)
            if not math.isfinite(train_loss):
                rows.append({**row, "next_batch": strategy.batch_size, "reason": "stopped: loss is not finite"})
                history = _save_history(out, rows, strategy)
                raise Diverged(f"training diverged at epoch {epoch + 1}: train loss is {train_loss} at batch size "
                               f"{row['batch_size']:.0f}, lr {lr:g}; lower lr or use lr_rule='sqrt' "
                               f"(history so far kept{f' in {out}' if out else ''})", history)
            dead = _dead([*rows, row], *chance)
            if dead:
                rows.append({**row, "next_batch": strategy.batch_size, "reason": f"stopped: dead, {dead}"})
                history = _save_history(out, rows, strategy)
                raise DeadRun(f"the run is dead at epoch {epoch + 1}: {dead}; lower lr (now {config.lr:g} at batch "
                              f"{base_batch}) or lengthen the warm-up (history so far kept"
                              f"{f' in {out}' if out else ''})", history)
            if config.decide_every == "epoch":
                strategy.step(loss=train_loss, entropy=train_entropy, epoch=epoch + 1, **_gns_signal(gns),
                              **_memory_signal(epoch_usage))
            reason = strategy.history[-1].reason if strategy.history else ""
            rows.append({**row, "next_batch": strategy.batch_size, "reason": reason})
            bar.set_postfix(B=int(row["batch_size"]), loss=f"{train_loss:.3f}", acc=f"{test_acc:.3f}")
            _save_history(out, rows, strategy)
            if out is not None:
                save_checkpoint(out, model=model.state_dict(), optimizer=optimizer.state_dict(),
                                strategy=strategy.state_dict(), batcher=train.state_dict(),
                                gns=gns.state_dict() if gns is not None else {}, rng=torch.get_rng_state(),
                                history=rows, counters=[epoch + 1, step, samples, wall, energy])
    return _save_history(out, rows, strategy)        # again: a resumed, finished run restores a lost history


@torch.no_grad()
def evaluate(model, batcher: DeviceBatcher, batch_size: int, autocast, channels_last: bool) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split."""
    model.eval()
    loss_sum = torch.zeros((), device=batcher.y.device)
    correct = torch.zeros((), device=batcher.y.device)
    for xb, yb in batcher.batches(batch_size):
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(xb)
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


def compiled(model: torch.nn.Module, backend: str | Callable = "inductor"):
    """``torch.compile`` with the batch dimension marked dynamic, so a new batch size reuses the same graph
    instead of recompiling (tests count the compilations)."""
    compiled_model = torch.compile(model, backend=backend)

    def forward(x):
        torch._dynamo.mark_dynamic(x, 0)
        return compiled_model(x)
    return forward


def _gns_tracker(config: TrainConfig):
    """The tracker: every ``gns_every`` steps, or at ``GNSTracker``'s default interval for the gns strategy."""
    if not config.gns_every and config.strategy != "gns":
        return None
    from labkit.gns import GNSTracker
    return GNSTracker(every=config.gns_every) if config.gns_every else GNSTracker()


def _measured_step(gns, model, xb, yb, autocast, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A GNS step's forward and backward, without a pass of its own: the tracker's k microbatch passes
    leave the batch's mean gradient in ``.grad``, and their logits (concatenated) and losses (the
    size-weighted mean) stand in for the batch's. BatchNorm normalises each microbatch by its own
    statistics, so these logits differ slightly from one full-batch forward's."""
    parts = []

    def loss_fn(logits, target):
        loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
        parts.append((logits.detach(), loss.detach() * len(target)))
        return loss

    with autocast:
        gns.measure(model, loss_fn, xb, yb)
    return torch.cat([logits for logits, _ in parts]), torch.stack([total for _, total in parts]).sum() / len(yb)


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


def _requeue(xb, yb, pending: list, size: int) -> list:
    """The failed batch and the pieces still waiting after it (``pending`` is a stack: the next piece is
    last), re-split into pieces of ``size`` in the same order: no example is skipped or repeated."""
    xs = torch.cat([xb, *(x for x, _ in reversed(pending))])
    ys = torch.cat([yb, *(y for _, y in reversed(pending))])
    return list(reversed(list(zip(xs.split(size), ys.split(size)))))


def _after_oom(strategy, batch: int, failure: str) -> int:
    """A step of ``batch`` examples ran out of memory: free what it left, let the strategy shrink, and
    return the size to retry the same examples at. Only the ``memory`` strategy shrinks; for any other
    (or at ``min_batch``) the error is raised again, with what to do."""
    free_memory()
    if not hasattr(strategy, "oom"):
        raise MemoryCapExceeded(f"batch {batch} ran out of memory ({failure}) under strategy "
                                f"{strategy.name!r}: lower max_batch, or use strategy 'memory', which halves "
                                f"the batch and retries")
    size = strategy.oom(batch)
    if size >= batch:
        raise MemoryCapExceeded(f"batch {batch} ran out of memory ({failure}) at min_batch="
                                f"{strategy.min_batch}: nothing smaller to try; lower min_batch or raise the budget")
    log.warning("batch %d ran out of memory (%s): retrying its examples in batches of %d", batch, failure, size)
    return size


def _save_history(out: Path | None, rows: list[dict], strategy=None) -> pd.DataFrame:
    """Write ``history.csv`` (one row per epoch) and the strategy's decision log, ``decisions.csv``."""
    history = pd.DataFrame(rows)
    if out is not None:
        with atomic_path(out / "history.csv") as partial:
            history.to_csv(partial, index=False)
        if strategy is not None:
            with atomic_path(out / "decisions.csv") as partial:
                pd.DataFrame([asdict(d) for d in strategy.history], columns=["step", "old", "new", "reason"]
                             ).to_csv(partial, index=False)
    return history


__all__ = ["TrainConfig", "fit", "evaluate", "Diverged", "DeadRun", "BrokenRun", "make_optimizer", "compiled"]
