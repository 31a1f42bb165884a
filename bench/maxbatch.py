"""Benchmark: the largest batch that fits, found four ways on the same model in one process.

    python -m bench.maxbatch --out results/bench_maxbatch.csv       # GPU: CIFAR-shaped cnn, bf16, 3 rounds
    python -m bench.maxbatch --quick --out /tmp/m.csv                 # CPU smoke run, about 20 s
    python -m bench.maxbatch --device cpu --budget-mb 60 --start 8 --limit 512 --methods labkit-affine labkit-bisect

Run from the repository root. Issue 13 item 4: labkit's bisection was the most accurate and the slowest
(21 tries); the affine search should take at most 5 tries, land at most 2 % below the true maximum, in at
most half of accelerate's time.

Every search runs the same training step: ``labkit.step.TrainStep`` (bf16 autocast and channels_last on
CUDA) of ``labkit.models`` "cnn" on random CIFAR-shaped uint8 images kept on the device (normalised per
batch), SGD with momentum 0.9, through ``labkit.memory.probe_step``. One try = one step at one size.

* ``labkit-affine``: ``max_batch_that_fits(method="affine")``, told ``memory_capacity(device, budget)``.
* ``labkit-bisect``: ``method="bisect"`` on every integer (``multiple_of=1``): the true maximum of the round.
* ``accelerate``: ``accelerate.utils.find_executable_batch_size`` from ``--accelerate-start`` (×0.9 after each
  OOM); default: 4 × the true maximum rounded up to a power of two (131072 for 26000), at most ``--limit``.
* ``lightning``: ``BatchSizeFinder(mode="binsearch")`` through ``Tuner.scale_batch_size`` (×2 from
  ``--start``, then bisection; its default ``margin=0.05`` takes 5 % off the result), one step per try, the
  step in a LightningModule with manual optimization.

A round runs the four in that order after one untimed warm-up step of 8 examples; rows: found, tries,
seconds (the whole search, synchronised with the GPU), % below the true maximum; with ``--repeats`` rounds
the table prints the medians. On a CPU (or with ``--budget-mb`` on a GPU) the budget stands in for the
memory: a step over it raises ``torch.cuda.OutOfMemoryError`` ("CUDA out of memory. (budget: ...)"), which
all four catch; on the CPU the step's memory is ``StepMemory``'s estimate, checked before the step (so
there accelerate's failed tries cost nothing and the times say little; the GPU run is the measurement).
"""
from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time

import pandas as pd
import torch

from bench.arguments import bench_parser
from labkit.memory import MemoryCapExceeded, free_memory, max_batch_that_fits, memory_capacity, probe_step
from labkit.models import build_model
from labkit.runtime import pick_device, save_table
from labkit.step import TrainStep

SHAPE, CLASSES = (3, 32, 32), 10         # CIFAR-10: one image, classes
METHODS = ("labkit-affine", "labkit-bisect", "accelerate", "lightning")
TARGET = dict(trials=5, below_true_pct=2.0, time_vs_accelerate=0.5)


class Counted:
    """The step every search runs: counts its tries; an over-budget step raises the CUDA OOM error that
    accelerate and Lightning recognise (by type and by message)."""

    def __init__(self, step):
        self.step, self.tries = step, 0

    def __call__(self, batch: int) -> float:
        self.tries += 1
        try:
            return self.step(batch)
        except MemoryCapExceeded as error:
            failure = str(error)
        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. (budget: {failure})")


def affine(step, args, model, optimizer) -> int:
    capacity = memory_capacity(args.device, args.budget_bytes)
    return max_batch_that_fits(step, args.start, args.limit, restore=(model, optimizer),
                               capacity_bytes=capacity).max_batch


def bisect(step, args, model, optimizer) -> int:
    return max_batch_that_fits(step, args.start, args.limit, multiple_of=1, method="bisect",
                               restore=(model, optimizer)).max_batch


def accelerate(step, args, model, optimizer) -> int:
    from accelerate.utils import find_executable_batch_size

    @find_executable_batch_size(starting_batch_size=args.accelerate_start)
    def largest(batch_size):
        step(batch_size)
        return batch_size

    return largest()


def lightning(step, args, model, optimizer) -> int:
    import lightning.pytorch as pl
    from lightning.pytorch.tuner import Tuner

    class Sizes(torch.utils.data.Dataset):
        """Yields the batch size: the step builds its batch on the device, as for the other searches. Its
        length is ``--limit`` (Lightning caps the batch size at the dataset's length); the loader reads one
        item, so a try is one step (the step is labkit's: Lightning's step counter does not move)."""

        def __init__(self, size):
            self.size = size

        def __len__(self):
            return args.limit

        def __getitem__(self, _index):
            return self.size

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net, self.batch_size, self.automatic_optimization = model, args.start, False

        def train_dataloader(self):
            return torch.utils.data.DataLoader(Sizes(self.batch_size), batch_size=None, sampler=[0])

        def training_step(self, batch_size, _index):
            step(int(batch_size))

        def configure_optimizers(self):
            return optimizer

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)       # its per-try lines, tips
    with tempfile.TemporaryDirectory() as root:
        cuda = args.device.type == "cuda"
        trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=[args.device.index or 0] if cuda else 1,
                             max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=root)
        try:
            return Tuner(trainer).scale_batch_size(Probe(), mode="binsearch", steps_per_trial=1,
                                                   init_val=args.start, max_val=args.limit)
        finally:                         # Lightning's teardown moves the module and optimizer state to the CPU
            model.to(args.device)
            for state in optimizer.state.values():
                state.update({k: v.to(args.device) for k, v in state.items() if torch.is_tensor(v)})


SEARCHES = dict(zip(METHODS, (affine, bisect, accelerate, lightning)))


def bench(args) -> pd.DataFrame:
    torch.manual_seed(0)
    model = build_model("cnn", SHAPE, CLASSES).to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train = TrainStep(model, optimizer)
    generator = torch.Generator(args.device).manual_seed(0)
    images = torch.randint(0, 256, (args.limit, *SHAPE), dtype=torch.uint8, device=args.device, generator=generator)
    labels = torch.randint(0, CLASSES, (args.limit,), device=args.device, generator=generator)

    def batch_of(size):                  # (B, 3, 32, 32) normalised, channels_last on CUDA; (B,) labels
        return train.prepare((images[:size].float() / 255 - 0.5) / 0.25), labels[:size]

    step = Counted(probe_step(train, batch_of, memory_cap_bytes=args.budget_bytes))
    step(8)                              # warm-up: CUDA context, cuDNN, cuBLAS workspaces; not timed
    rows = []
    for round_ in range(args.repeats):
        for method in args.methods:
            free_memory()
            step.tries = 0
            train.synchronize()
            start = time.perf_counter()
            found = SEARCHES[method](step, args, model, optimizer)
            train.synchronize()
            rows.append(dict(round=round_, method=method, found=found, trials=step.tries,
                             seconds=time.perf_counter() - start))
            print(f"round {round_}: {method}: {found} after {step.tries} tries, {rows[-1]['seconds']:.2f} s",
                  flush=True)
            if method == "labkit-bisect" and found >= args.limit:
                raise SystemExit(f"bench.maxbatch: every size up to --limit {args.limit} fits, so the true maximum "
                                 f"is unknown: raise --limit")
            if method == "labkit-bisect" and args.accelerate_start is None:
                args.accelerate_start = min(args.limit, 2 ** math.ceil(math.log2(4 * found)))
    table = pd.DataFrame(rows)
    truth = table[table.method == "labkit-bisect"].set_index("round").found
    table["true_max"] = table["round"].map(truth)
    table["below_true_pct"] = 100 * (1 - table.found / table.true_max)
    return table


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Medians over rounds per method, the time relative to accelerate's, and for the affine search whether it
    meets issue 13's target: ≤ 5 tries, ≤ 2 % below the true maximum, ≤ 0.5 × accelerate's time."""
    medians = table.groupby("method", sort=False)[["found", "trials", "seconds", "below_true_pct"]].median()
    accelerate_s = medians.seconds.get("accelerate", math.nan)
    medians["time_vs_accelerate"] = medians.seconds / accelerate_s
    medians["meets_target"] = None
    if "labkit-affine" in medians.index:
        row = medians.loc["labkit-affine"]
        medians.loc["labkit-affine", "meets_target"] = bool(
            row.trials <= TARGET["trials"] and row.below_true_pct <= TARGET["below_true_pct"]
            and row.time_vs_accelerate <= TARGET["time_vs_accelerate"])
    return medians


QUICK = dict(device="cpu", budget_mb=300.0, start=8, limit=1024, repeats=1)      # --quick: about 20 s on a CPU


def parse_args(argv=None) -> argparse.Namespace:
    parser = bench_parser(__doc__, "bench_maxbatch", "a CPU smoke run in about 20 s: " +
                          ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in QUICK.items()))
    parser.add_argument("--budget-mb", type=float, help="a memory budget in MiB that stands in for the device's "
                        "memory (needed on the CPU)")
    parser.add_argument("--start", type=int, default=256, help="the first size the labkit and Lightning searches try")
    parser.add_argument("--limit", type=int, default=2**21, help="the largest size any search tries")
    parser.add_argument("--accelerate-start", type=int, help="accelerate's starting_batch_size (default: 4 × the "
                        "true maximum rounded up to a power of two, at most --limit)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD",
                        help=f"searches to run, in this order (default: all; 'labkit-bisect' gives the true "
                             f"maximum): {', '.join(map(repr, METHODS))}")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all searches")
    args = parser.parse_args(argv)
    if args.quick:                       # the smoke run's settings, where the command line left the defaults
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    try:
        args.device = pick_device(args.device)
    except ValueError as error:
        parser.error(f"--device {args.device}: {error}")
    if args.device.type == "cpu" and args.budget_mb is None:
        parser.error("on the CPU the search needs --budget-mb: the CPU has no memory to run out of (or use --quick)")
    if "labkit-bisect" not in args.methods:
        parser.error("--methods must include 'labkit-bisect': it gives the true maximum the others are measured by")
    for flag, value, low in (("--start", args.start, 8), ("--limit", args.limit, args.start),
                             ("--repeats", args.repeats, 1)):
        if value < low:
            parser.error(f"{flag} {value}: expected an integer >= {low}")
    if args.accelerate_start is not None and not 1 <= args.accelerate_start <= args.limit:
        parser.error(f"--accelerate-start {args.accelerate_start}: expected an integer from 1 to --limit "
                     f"({args.limit}); the images end there")
    if args.budget_mb is not None and not args.budget_mb > 0:
        parser.error(f"--budget-mb {args.budget_mb:g}: expected a number of MiB > 0")
    args.budget_bytes = None if args.budget_mb is None else args.budget_mb * 2**20
    args.methods = sorted(args.methods, key=METHODS.index)
    return args


def main(argv=None):
    args = parse_args(argv)
    print(f"cnn on {SHAPE} images, {args.device}, start {args.start}, limit {args.limit}, "
          f"budget {'the device' if args.budget_mb is None else f'{args.budget_mb:g} MiB'}, {args.repeats} rounds",
          flush=True)
    table = bench(args)
    print(summary(table).round(3).to_string())
    save_table(table, args.out, args.device, model="cnn", shape="x".join(map(str, SHAPE)),
               dtype="bf16" if args.device.type == "cuda" else "float32", budget_mb=args.budget_mb,
               start=args.start, limit=args.limit, accelerate_start=args.accelerate_start, lightning_margin=0.05)


if __name__ == "__main__":
    main()
