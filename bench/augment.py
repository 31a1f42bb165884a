"""Benchmark: what on-device augmentation (random crop with padding, horizontal flip) costs a training run.

    python -m bench.augment --out runs/bench_augment.csv          # GPU: resnet on CIFAR-10, batch 512
    python -m bench.augment --quick --dataset digits --model cnn --out /tmp/a.csv   # CPU smoke run

Run from the repository root with the data where ``labkit.data`` finds it (``LABKIT_DATA``).

Each run is ``labkit.train.fit``, the real loop, at a fixed batch size: once with ``augment=False`` and once
with ``augment=True`` (``labkit.augment.Augment``: 4 px reflect padding, crop, flip, batched on the device
inside ``DeviceBatcher``); timed as ``bench.timing`` says. Target: ≤ 1.05 at batch 512.
"""
from __future__ import annotations


import pandas as pd

from bench.timing import fixed_fit, parse, ratio_row, timing_parser
from labkit.runtime import save_table

TARGET = 1.05       # epoch time with augmentation / without


def bench(args) -> pd.DataFrame:
    rows = []
    for batch in args.batch_sizes:
        times = {False: [], True: []}
        for _ in range(args.repeats):
            for augment, results in times.items():
                results.append(float(fixed_fit(args, batch, augment=augment).iloc[1:].epoch_time_s.sum()))
                print(f"batch {batch}, augment {augment}: {results[-1]:.3f} s", flush=True)
        rows.append(ratio_row(batch, "augment", times[True], times[False], TARGET))
    return pd.DataFrame(rows)


def parse_args(argv=None):
    parser = timing_parser(__doc__, model="resnet", batch_sizes=[512], epochs=3, repeats=3,
                           out="bench_augment")
    return parse(parser, argv, quick_batch=64)     # 2048 examples: enough steps to leave chance in 2 epochs


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
