"""Benchmark: what on-device augmentation (random crop with padding, horizontal flip) costs a training run.

    python -m bench.augment --out runs/bench_augment.csv          # GPU: resnet on CIFAR-10, batch 512
    python -m bench.augment --quick --dataset digits --model cnn --out /tmp/a.csv   # CPU smoke run

Run from the repository root with the data where ``labkit.data`` finds it (``LABKIT_DATA``).

Each run is ``labkit.train.fit``, the real loop, at a fixed batch size: once with ``augment=False`` and once
with ``augment=True`` (``labkit.augment.Augment``: 4 px reflect padding, crop, flip, batched on the device
inside ``DeviceBatcher``). Timing: fit's ``epoch_time_s`` (training only, synchronised with the GPU at both
ends) summed over the epochs after the first (warm-up), settings alternating within each of ``--repeats``
rounds; the ratio is the median over rounds of (time with) / (time without). Target: ≤ 1.05 at batch 512.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pandas as pd

from labkit.models import MODELS
from labkit.runtime import pick_device, save_table
from labkit.train import TrainConfig, fit

TARGET = 1.05       # epoch time with augmentation / without


def run(args, batch: int, augment: bool) -> float:
    """Training seconds over epochs 2.. of one fixed-batch fit."""
    config = TrainConfig(dataset=args.dataset, model=args.model, epochs=args.epochs, lr=0.05, lr_rule="none",
                         strategy="fixed", strategy_params={"b_init": batch, "min_batch": batch, "max_batch": batch},
                         augment=augment, device=str(args.device), quick=args.quick)
    return float(fit(config, progress=False).iloc[1:].epoch_time_s.sum())


def bench(args) -> pd.DataFrame:
    rows = []
    for batch in args.batch_sizes:
        times = {False: [], True: []}
        for _ in range(args.repeats):
            for augment, results in times.items():
                results.append(run(args, batch, augment))
                print(f"batch {batch}, augment {augment}: {results[-1]:.3f} s", flush=True)
        ratio = statistics.median(on / off for on, off in zip(times[True], times[False]))
        rows.append({"batch_size": batch, "with_augment_s": statistics.median(times[True]),
                     "without_augment_s": statistics.median(times[False]), "ratio": ratio,
                     "target": f"ratio <= {TARGET}", "meets_target": ratio <= TARGET})
    return pd.DataFrame(rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="resnet")
    parser.add_argument("--dataset", default="cifar10", help="a labkit.data name with images (C, H, W)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over both settings")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="2048 examples, batch 64, 2 epochs, 1 round (CPU "
                        "smoke run)")
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench_augment.csv")
    args = parser.parse_args(argv)
    args.device = pick_device(args.device)
    if args.quick:
        args.epochs, args.repeats = 2, 1
        if args.batch_sizes == parser.get_default("batch_sizes"):
            args.batch_sizes = [64]             # 2048 examples: enough steps to leave chance in 2 epochs
    for flag, values, low in (("--epochs", [args.epochs], 2), ("--repeats", [args.repeats], 1),
                              ("--batch-sizes", args.batch_sizes, 1)):
        if min(values) < low:
            parser.error(f"{flag} {' '.join(map(str, values))}: expected integers >= {low}")
    return args


def main(argv=None):
    args = parse_args(argv)
    print(f"{args.model} on {args.dataset}, {args.device}, batch sizes {args.batch_sizes}, "
          f"{args.epochs} epochs x {args.repeats} rounds", flush=True)
    table = bench(args)
    print(table.round(4).to_string(index=False))
    save_table(table, args.out, args.device, model=args.model, dataset=args.dataset, epochs=args.epochs,
               repeats=args.repeats, quick=args.quick)


if __name__ == "__main__":
    main()
