"""What the fit-timing benchmarks share (``bench.gns``, ``bench.augment``): their command line, a fixed-batch
run of the real loop, and the ratio of two settings' training times.

Timing: fit's ``epoch_time_s`` (training only, synchronised with the GPU at both ends) summed over the epochs
after the first (warm-up: cuDNN heuristics, the allocator). Settings alternate within each round; a ratio is
the median over rounds of (time with) / (time without).
"""
from __future__ import annotations

import argparse
import statistics

import pandas as pd

from bench.arguments import bench_parser
from labkit.models import MODELS
from labkit.runtime import pick_device
from labkit.train import TrainConfig, fit


def timing_parser(doc: str, model: str, batch_sizes: list[int], epochs: int, repeats: int,
                  out: str) -> argparse.ArgumentParser:
    """The arguments every fit-timing benchmark takes (``out``: the CSV's name under runs/); a benchmark adds
    its own and calls ``parse``."""
    parser = bench_parser(doc, out, "2048 examples, 2 epochs, 1 round (CPU smoke run)")
    parser.add_argument("--model", choices=MODELS, default=model)
    parser.add_argument("--dataset", default="cifar10", help="a labkit.data name (its real data are used)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=batch_sizes)
    parser.add_argument("--epochs", type=int, default=epochs, help="epochs per run; the first is not timed")
    parser.add_argument("--repeats", type=int, default=repeats, help="rounds over all settings")
    return parser


def parse(parser: argparse.ArgumentParser, argv, quick_batch: int, extra=()) -> argparse.Namespace:
    """Parse, pick the device, shrink a ``--quick`` run (2 epochs, 1 round, ``quick_batch`` unless batch
    sizes were given) and check every count; ``extra`` holds more (flag, values, lowest) checks."""
    args = parser.parse_args(argv)
    args.device = pick_device(args.device)
    if args.quick:
        args.epochs, args.repeats = 2, 1
        if args.batch_sizes == parser.get_default("batch_sizes"):
            args.batch_sizes = [quick_batch]
    for flag, values, low in (("--epochs", [args.epochs], 2), ("--repeats", [args.repeats], 1),
                              ("--batch-sizes", args.batch_sizes, 1), *extra):
        if min(values) < low:
            parser.error(f"{flag} {' '.join(map(str, values))}: expected integers >= {low}"
                         f"{' (the first epoch is the warm-up)' if flag == '--epochs' else ''}")
    return args


def fixed_fit(args, batch: int, **config) -> pd.DataFrame:
    """The history of one fit at a fixed ``batch`` (constant lr 0.05, no coupling), ``config`` on top."""
    return fit(TrainConfig(dataset=args.dataset, model=args.model, epochs=args.epochs, lr=0.05, lr_rule="none",
                           strategy="fixed", strategy_params={"b_init": batch, "min_batch": batch,
                                                              "max_batch": batch},
                           device=str(args.device), quick=args.quick, **config), progress=False)


def ratio_row(batch: int, name: str, with_s: list[float], without_s: list[float], target: float | None) -> dict:
    """One table row: median times with and without ``name`` and the median ratio over rounds, checked
    against ``target`` when one is given."""
    ratio = statistics.median(on / off for on, off in zip(with_s, without_s))
    return {"batch_size": batch, f"with_{name}_s": statistics.median(with_s),
            f"without_{name}_s": statistics.median(without_s), "ratio": ratio,
            "target": f"ratio <= {target}" if target else "", "meets_target": ratio <= target if target else None}
