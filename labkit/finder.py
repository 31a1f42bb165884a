"""A batch size to start training with: what the gradient noise says it is worth, capped by what fits.

    labkit find-batch --dataset cifar10 --model cnn --out runs/find-cifar10     # table, JSON, plot
    >>> rec = find_batch_size("cnn", "cifar10")
    >>> rec.batch_size, rec.lr, rec.evidence
    >>> rec = find_batch_size(net, TensorDataset(X, y), loss_fn=nn.MSELoss(),          # your model, data,
    ...                       optimizer=lambda params: torch.optim.AdamW(params, 1e-3))  # loss, optimizer

Why these numbers. McCandlish, Kaplan, Amodei 2018 ("An Empirical Model of Large-Batch Training",
arXiv:1812.06162, §2, eq. 2.11) find that reaching a given loss at batch size B takes

    S = S_min · (1 + B_crit/B) steps      and      E = E_min · (1 + B/B_crit) examples,

so below B_crit doubling the batch nearly halves the steps (a shorter run for the same compute), and far
above it doubling the batch nearly doubles the examples and saves few steps (compute thrown away).
B_crit ≈ B_noise ≈ B_simple = tr(Σ)/‖G‖², the gradient noise scale, which a short stretch of training
measures (``labkit.gns``). The hardware sets the other bound: a batch that does not fit in memory
cannot be trained in one step, and samples/s stop growing once the GPU is busy. The finder of the reference
article (Masterful, "gradient noise scale and hardware analysis") combines the two; so does this one:

    batch = min(B_simple rounded to a multiple of 8 (at least min_batch), the largest batch that fits)
    lr    = scaled_lr(lr, base_batch, batch, lr_rule)      (labkit.strategies.coupling)

Four phases: (a) the largest batch that fits (``labkit.memory``: an affine memory model a + b·B fitted at
two small sizes, a jump below the memory and a refinement, about 4 tries; on the CPU a memory cap stands in
for the GPU's memory); (b) B_simple: ``gns_steps`` steps of real training at ``base_batch``
(where ``lr`` was tuned), a ``GNSTracker`` reading every ``gns_every`` steps, the smoothed value and the
10–90 % band of the last readings; (c) samples/s at a few sizes up to the largest that fits (warm-up step
first, CUDA-synchronised); (d) the recommendation, with the evidence: per batch size, fits?, peak memory,
samples/s and the predicted time to the same loss relative to the best size,

    T(B) ∝ S(B) · B / throughput(B) = (1 + B_simple/B) · B / throughput(B),

which shows when the GPU saturates below B_simple (then a smaller batch is as fast).

Caveats: "the noise scale increases as the loss decreases over a training run" (McCandlish et al.), so a
measurement at the start gives a batch for the start; ``GNSBased`` follows it during training. B_simple
leaves out the curvature that B_noise weighs the noise with. A model passed in gets its weights back.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from labkit.batching import DeviceBatcher
from labkit.checks import check_choice, check_float, check_int
from labkit.data import DATASETS, TensorData, load
from labkit.gns import GNSTracker
from labkit.memory import MemoryProbe, max_batch_that_fits, memory_capacity, preserved, probe_step
from labkit.models import MODELS, build_model
from labkit.runtime import pick_device, provenance, quick_mode
from labkit.step import LossFn, TrainStep
from labkit.strategies import LR_RULES, scaled_lr
from labkit.train import QUICK_SIZES, TrainConfig, make_optimizer

MULTIPLE_OF = 8                      # batch sizes are multiples of this: tensor-core friendly, no odd kernels


@dataclass(frozen=True)
class Budget:
    """How much work each phase gets; ``quick`` keeps a CPU run to seconds."""
    gns_steps: int                   # training steps of phase (b)
    gns_every: int                   # a GNS reading every this many steps
    timed_steps: int                 # timed steps per batch size, after one warm-up step
    cpu_memory_cap: int              # bytes: the CPU's stand-in for GPU memory


FULL = Budget(gns_steps=400, gns_every=4, timed_steps=10, cpu_memory_cap=2**30)
QUICK = Budget(gns_steps=30, gns_every=2, timed_steps=2, cpu_memory_cap=2**28)


@dataclass(frozen=True, eq=False)
class Recommendation:
    """What ``find_batch_size`` found.

    batch_size, lr: the recommendation. binding: which bound chose it: "gns" (B_simple), "memory" (the
    largest batch that fits) or "limit" (max_batch, by default the training set, fits whole; memory was
    not reached). memory_max: the largest batch that fits, up to that limit. b_simple: the smoothed
    B_simple, None when no reading had a positive ‖G‖²; b_simple_band: the 10–90 % band of the last
    readings. evidence: one row per batch size tried: fits, peak_mb, samples_per_s, relative_time.
    """
    batch_size: int
    lr: float
    binding: str
    reason: str
    b_simple: float | None
    b_simple_band: tuple[float, float] | None
    memory_max: int
    evidence: pd.DataFrame
    settings: dict
    provenance: dict

    def to_dict(self) -> dict:
        """JSON-ready: the recommendation, the evidence rows, the settings and the provenance (an infinite
        end of the band, from readings whose ‖G‖² was not positive, becomes null)."""
        band = None if self.b_simple_band is None else [b if math.isfinite(b) else None for b in self.b_simple_band]
        return {"batch_size": self.batch_size, "lr": self.lr, "binding": self.binding, "reason": self.reason,
                "b_simple": self.b_simple, "b_simple_band": band, "memory_max": self.memory_max,
                "evidence": json.loads(self.evidence.to_json(orient="records")), "settings": self.settings,
                "provenance": self.provenance}

    def save(self, out: str | Path) -> list[Path]:
        """Write ``recommendation.json``, ``evidence.csv`` and ``finder.png`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "recommendation.json", out / "evidence.csv", out / "finder.png"]
        paths[0].write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        self.evidence.to_csv(paths[1], index=False)
        plot_recommendation(self, paths[2])
        return paths

    def __str__(self) -> str:
        return f"batch {self.batch_size}, lr {self.lr:.4g}: {self.reason}"


def find_batch_size(model: str | nn.Module, dataset: str | TensorData | Dataset | DataLoader, *,
                    loss_fn: LossFn = F.cross_entropy,
                    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
                    device=None, lr: float | None = None, lr_rule: str = "sqrt", base_batch: int = 128,
                    min_batch: int = 16, max_batch: int | None = None, gns_steps: int | None = None,
                    gns_every: int | None = None, sizes=None, memory_cap_bytes: float | None = None,
                    quick: bool | None = None, seed: int = 0, data_root: str | None = None) -> Recommendation:
    """Recommend a batch size and learning rate for ``model`` on ``dataset`` (see the module docstring).

    Args:
        model: a name from ``labkit.models.MODELS`` or a module mapping (B, *input_shape) to outputs.
        dataset: a name from ``labkit.data.DATASETS``, a loaded ``TensorData``, or your own
            ``torch.utils.data.Dataset`` or ``DataLoader`` of (x, y) pairs, read once into tensors (quick:
            its first 2048 examples) and used as they come (no normalisation).
        loss_fn: the mean loss of (outputs, y), e.g. ``nn.MSELoss()`` (default cross-entropy).
        optimizer: a factory, ``optimizer(model.parameters())`` → a torch optimizer, e.g.
            ``lambda params: torch.optim.AdamW(params, 1e-3)`` (default: fit's SGD, Nesterov momentum 0.9).
        device: default CUDA when present (a module given without ``device`` stays where it is).
        lr, lr_rule, base_batch: the learning rate tuned for ``base_batch`` (default: the optimizer's, 0.05
            for the default SGD) and how it scales (linear | sqrt | none); phase (b) trains at ``base_batch``
            with ``lr`` (at the largest batch that fits, with lr scaled to it, when ``base_batch`` does not fit).
        min_batch: the smallest batch recommended (default 16).
        max_batch: the largest batch tried (default and at most: the training set's size).
        gns_steps, gns_every: phase (b)'s steps and reading interval (default 400 and 4; quick: 30 and 2).
        sizes: batch sizes to time in phase (c) (default: ×4 steps from min_batch, the largest that fits
            and the recommendation).
        memory_cap_bytes: treat a step that needs more as out of memory (default: none on CUDA, 1 GiB on
            the CPU, 256 MiB in quick mode).
        quick: a 2048-example subset and small budgets (default: ``LABKIT_QUICK``).
    """
    quick = quick_mode() if quick is None else quick
    budget = QUICK if quick else FULL
    lr = None if lr is None else check_float("lr", lr, low=0.0, low_open=True)
    lr_rule = check_choice("lr_rule", lr_rule, LR_RULES)
    base_batch = check_int("base_batch", base_batch, low=2)
    min_batch = check_int("min_batch", min_batch, low=1)
    max_batch = None if max_batch is None else check_int("max_batch", max_batch, low=1)
    if max_batch is not None and min_batch > max_batch:
        raise ValueError(f"min_batch={min_batch} is greater than max_batch={max_batch}: expected min_batch <= max_batch")
    if memory_cap_bytes is not None:
        memory_cap_bytes = check_float("memory_cap_bytes", memory_cap_bytes, low=0.0, low_open=True)
    gns_steps = check_int("gns_steps", budget.gns_steps if gns_steps is None else gns_steps, low=1)
    gns_every = check_int("gns_every", budget.gns_every if gns_every is None else gns_every, low=1)
    sizes = None if sizes is None else sorted({check_int("sizes entry", size, low=1) for size in sizes})
    seed = check_int("seed", seed, low=0)
    if isinstance(model, str):
        check_choice("model", model, MODELS)
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model={model!r} must be a model name (one of {', '.join(MODELS)}) or a torch.nn.Module")
    if isinstance(dataset, str):
        check_choice("dataset", dataset, DATASETS)
    elif not isinstance(dataset, (TensorData, Dataset, DataLoader)):
        raise TypeError(f"dataset={dataset!r} must be a dataset name (one of {', '.join(DATASETS)}), a "
                        f"labkit.data.TensorData, or a torch Dataset or DataLoader of (x, y) pairs")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn={loss_fn!r} must be callable: loss_fn(outputs, y) -> mean loss, e.g. nn.MSELoss()")
    if optimizer is not None and not callable(optimizer):
        raise TypeError(f"optimizer={optimizer!r} must be a factory of the parameters: use "
                        f"optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3)")
    if isinstance(model, nn.Module) and device is None:
        device = next(model.parameters()).device
    device = pick_device(None if device is None else str(device))
    if memory_cap_bytes is None and device.type == "cpu":
        memory_cap_bytes = budget.cpu_memory_cap

    # -- data, model, optimizer ---------------------------------------------------------------------------
    if isinstance(dataset, str):
        data = load(dataset, root=data_root, device=device)
    elif isinstance(dataset, TensorData):
        data = dataset
    else:
        data = _read(dataset, QUICK_SIZES[0] if quick else None)
    if quick and len(data.y_train) > QUICK_SIZES[0]:
        data = data.subset(QUICK_SIZES[0], min(QUICK_SIZES[1], len(data.y_test)), seed=seed)
    n_train = len(data.y_train)
    limit = n_train if max_batch is None else max_batch
    if not (MULTIPLE_OF <= limit <= n_train and base_batch <= n_train):
        raise ValueError(f"max_batch={limit}, base_batch={base_batch}: expected both at most the {n_train} training "
                         f"examples of {data.name}{' (quick mode)' if quick else ''}, and max_batch >= {MULTIPLE_OF}")
    limit = limit // MULTIPLE_OF * MULTIPLE_OF
    start = min(-(-max(min_batch, MULTIPLE_OF) // MULTIPLE_OF) * MULTIPLE_OF, limit)
    name = model if isinstance(model, str) else type(model).__name__
    torch.manual_seed(seed)
    if isinstance(model, str):
        if not data.num_classes:
            raise ValueError(f"model={model!r} is a classifier, but {data.name}'s targets are not class labels: "
                             f"pass your own nn.Module and loss_fn")
        model = build_model(model, data.input_shape, data.num_classes)
    model = model.to(device)
    if optimizer is None:
        optimizer = make_optimizer(TrainConfig(lr=0.05 if lr is None else lr), model)   # fit's: SGD, Nesterov 0.9
    else:
        made = optimizer(model.parameters())
        if not isinstance(made, torch.optim.Optimizer):
            raise TypeError(f"optimizer(model.parameters()) returned {made!r}: expected a torch.optim.Optimizer")
        optimizer = made
    if lr is None:
        lr = check_float("the optimizer's lr", optimizer.param_groups[0]["lr"], low=0.0, low_open=True)
    train = TrainStep(model, optimizer, loss_fn=loss_fn)        # fit's step: bf16 and channels_last on CUDA
    batcher = DeviceBatcher(data.x_train, data.y_train, data.mean, data.std, seed=seed, drop_last=True,
                            device=device)
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed)).to(device)

    def batch_of(size: int):
        return train.prepare(batcher.normalise(batcher.x[order[:size]])), batcher.y[order[:size]]

    with preserved(model, optimizer):
        # -- (a) the largest batch that fits ------------------------------------------------------------
        step = probe_step(train, batch_of, memory_cap_bytes=memory_cap_bytes)
        capacity = memory_capacity(device, memory_cap_bytes)
        memory = max_batch_that_fits(step, start=start, limit=limit, multiple_of=MULTIPLE_OF,
                                     restore=(model, optimizer), capacity_bytes=capacity)
        # -- (b) B_simple over a short stretch of training at base_batch (or the largest that fits) -------
        gns_batch = min(base_batch, memory.max_batch)
        tracker = GNSTracker(every=gns_every)
        _noise_scale(TrainStep(model, optimizer, loss_fn=loss_fn, gns=tracker), batcher, gns_batch,
                     gns_steps, scaled_lr(lr, base_batch, gns_batch, lr_rule))
        limit_name = "the training set" if max_batch is None else "max_batch"
        batch, binding, reason = _decide(tracker, memory, min_batch, gns_batch, limit_name)
        # -- (c) samples/s up to the largest batch that fits ---------------------------------------------
        timed = sizes or _default_sizes(start, memory.max_batch)
        speed = {size: _throughput(step, train, batch_of, size, budget.timed_steps)
                 for size in sorted({*timed, batch}) if size <= memory.max_batch}
    # -- (d) the recommendation and its evidence ------------------------------------------------------------
    lr_at = scaled_lr(lr, base_batch, batch, lr_rule)
    settings = dict(model=name, dataset=data.name, train_examples=n_train, device=str(device),
                    loss=getattr(loss_fn, "__name__", type(loss_fn).__name__), optimizer=type(optimizer).__name__,
                    lr=lr, lr_rule=lr_rule, base_batch=base_batch, min_batch=min_batch, max_batch=limit,
                    multiple_of=MULTIPLE_OF, memory_tries=len(memory.trials), gns_batch=gns_batch,
                    gns_steps=gns_steps, gns_every=gns_every, gns_k=tracker.k, gns_readings=len(tracker.history),
                    memory_cap_bytes=memory_cap_bytes, quick=quick, seed=seed)
    return Recommendation(batch, lr_at, binding, reason, tracker.b_simple, tracker.band, memory.max_batch,
                          _evidence(memory, speed, tracker.b_simple, batch, timed), settings, provenance(device))


def _read(dataset: Dataset | DataLoader, limit: int | None) -> TensorData:
    """A torch ``Dataset`` or ``DataLoader`` of (x, y) pairs as ``TensorData``: its batches concatenated (the
    first ``limit`` examples), no test split, no normalisation (mean and std None); num_classes is
    max(y) + 1 for integer targets, 0 for anything else (regression)."""
    loader = dataset if isinstance(dataset, DataLoader) else DataLoader(dataset, batch_size=256)
    name = type(loader.dataset).__name__
    xs, ys = [], []
    for item in loader:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, Tensor) for t in item)):
            raise TypeError(f"dataset={dataset!r} gave a batch of type {type(item).__name__}: expected (x, y) pairs "
                            f"of tensors, as TensorDataset(x, y) gives")
        xs.append(item[0])
        ys.append(item[1])
        if limit is not None and sum(map(len, ys)) >= limit:
            break
    if not ys:
        raise ValueError(f"dataset={dataset!r} is empty: expected (x, y) pairs")
    x, y = torch.cat(xs)[:limit], torch.cat(ys)[:limit]
    classes = 0 if y.dtype.is_floating_point else int(y.max()) + 1
    return TensorData(name, x, y, x[:0], y[:0], classes, tuple(x.shape[1:]), None, None)


def _noise_scale(step: TrainStep, batcher: DeviceBatcher, batch: int, steps: int, lr: float) -> None:
    """Train ``steps`` steps of ``batch`` examples at ``lr`` with ``step``, whose tracker measures where it
    is due (its k microbatch passes are those steps' forward and backward, as in ``fit``)."""
    while step.steps < steps:
        for x, y in batcher.batches(batch):
            step(x, y, lr)
            if step.steps == steps:
                break


def _decide(tracker: GNSTracker, memory: MemoryProbe, min_batch: int, gns_batch: int,
            limit_name: str) -> tuple[int, str, str]:
    """(batch, binding, reason): min(B_simple rounded to a multiple of 8, at least min_batch; the largest
    batch that fits), where ``binding`` names the bound that chose: "gns", "memory" or "limit"."""
    if memory.limited:
        binding, bound = "limit", f"{limit_name} ({memory.max_batch}) fits in one batch"
    else:
        binding, bound = "memory", f"{memory.max_batch} is the largest batch that fits"
    b_simple, band = tracker.b_simple, tracker.band
    if b_simple is None or b_simple <= 0:
        return memory.max_batch, binding, (
            f"B_simple is not resolved at batch {gns_batch} (no finite reading, or the averaged ‖G‖² is not "
            f"positive: noise hides the signal, B_simple is large); {bound}")
    target = max(min_batch, round(b_simple / MULTIPLE_OF) * MULTIPLE_OF)
    measured = f"B_simple ≈ {b_simple:.0f} (band {band[0]:.0f}–{band[1]:.0f}) measured at batch {gns_batch}"
    if target <= memory.max_batch:
        return target, "gns", f"{measured}; {bound}"
    return memory.max_batch, binding, f"{bound}, below {measured}"


def _throughput(try_step, train: TrainStep, batch_of, size: int, steps: int) -> tuple[float, float]:
    """(peak bytes, samples/s) at ``size``: one warm-up ``try_step`` (which measures the peak), then
    ``steps`` timed steps of ``train``, synchronised with the GPU before and after."""
    peak = try_step(size)
    x, y = batch_of(size)
    train.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        train(x, y)
    train.synchronize()
    return peak, size * steps / (time.perf_counter() - start)


def _default_sizes(low: int, high: int) -> list[int]:
    """low, 4·low, 16·low, … below ``high``, and ``high``."""
    sizes = [low]
    while sizes[-1] * 4 < high:
        sizes.append(sizes[-1] * 4)
    return sorted({*sizes, high})


def _evidence(memory, speed: dict, b_simple: float | None, batch: int, timed) -> pd.DataFrame:
    """One row per batch size met: fits, peak_mb (search or timing), samples_per_s, relative_time."""
    rows = {t.batch: dict(batch=t.batch, fits=t.fits, peak_mb=t.peak_bytes / 2**20) for t in memory.trials}
    for size, (peak, samples_per_s) in speed.items():
        rows[size] = dict(batch=size, fits=True, peak_mb=peak / 2**20, samples_per_s=samples_per_s)
    for size in timed:
        rows.setdefault(size, dict(batch=size, fits=False))     # asked for, above the largest that fits
    table = pd.DataFrame(sorted(rows.values(), key=lambda row: row["batch"]))
    table = table.reindex(columns=["batch", "fits", "peak_mb", "samples_per_s"])
    if b_simple is not None and b_simple > 0:
        time_to_loss = (1 + b_simple / table.batch) * table.batch / table.samples_per_s
        table["relative_time"] = time_to_loss / time_to_loss.min()
    else:
        table["relative_time"] = math.nan
    table["recommended"] = table.batch == batch
    return table


def plot_recommendation(rec: Recommendation, path: str | Path | None = None):
    """samples/s against batch size, with the largest batch that fits, B_simple (and its band) and the
    recommendation marked; beside it, the predicted time to the same loss. Saves to ``path`` if given."""
    import matplotlib
    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    table = rec.evidence.dropna(subset=["samples_per_s"])
    fig, (ax_speed, ax_time) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    ax_speed.plot(table.batch, table.samples_per_s, "o-", label="samples/s")
    ax_time.plot(table.batch, table.relative_time, "o-", color="C2")
    for ax in (ax_speed, ax_time):
        limited = rec.memory_max == rec.settings["max_batch"]
        ax.axvline(rec.memory_max, color="C3", ls="--",
                   label=f"{'limit (fits)' if limited else 'fits up to'} {rec.memory_max}")
        if rec.b_simple is not None and rec.b_simple > 0:
            ax.axvline(rec.b_simple, color="C1", lw=2.5, ls=":", label=f"B_simple ≈ {rec.b_simple:.0f}")
            low, high = rec.b_simple_band
            ax.axvspan(max(low, 1), min(high, rec.memory_max * 4), color="C1", alpha=0.12)
        ax.axvline(rec.batch_size, color="k", lw=1, label=f"recommended {rec.batch_size}")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size")
    ax_speed.set(ylabel="samples / s", title=f"{rec.settings['dataset']} · {rec.settings['device']}")
    ax_time.set(ylabel="(1 + B_simple/B) · B / (samples/s), × best", title="predicted time to the same loss")
    ax_speed.legend(fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def read_recommendation(path: str | Path) -> dict:
    """One ``recommendation.json`` written by ``labkit find-batch`` as a flat row: ``name`` (dataset
    model), ``ran`` (device, torch, labkit commit, date), batch, lr, binding, B_simple, band low (the low
    end of ``b_simple_band``), and from the timed evidence (rows with a relative time) the chosen batch's
    samples/s and rel. time and the ``fastest B`` (the smallest relative time). Chapter: Conclusions."""
    rec = json.loads(Path(path).read_text())
    q, s = rec["provenance"], rec["settings"]
    evidence = pd.DataFrame(rec["evidence"]).dropna(subset=["relative_time"])
    fastest = evidence.loc[evidence.relative_time.idxmin()]
    chosen = evidence[evidence.batch == rec["batch_size"]].iloc[0]
    return {"name": f"{s['dataset']} {s['model']}",
            "ran": f"{q['device_name']}, torch {q['torch']},\n  labkit commit {q['commit']}, {q['date']}",
            "batch": rec["batch_size"], "lr": rec["lr"], "binding": rec["binding"],
            "B_simple": rec["b_simple"], "band low": rec["b_simple_band"][0],
            "samples/s": chosen.samples_per_s, "rel. time": chosen.relative_time,
            "fastest B": fastest.batch}


__all__ = ["find_batch_size", "Recommendation", "plot_recommendation", "read_recommendation", "Budget", "FULL", "QUICK"]
