"""Benchmark: what tracking the gradient noise scale costs a training run.

    python -m bench.gns                                          # GPU: cnn on CIFAR-10, writes runs/bench_gns.csv
    python -m bench.gns --quick --dataset digits --out /tmp/g.csv   # CPU smoke run in seconds

Run from the repository root with the data where ``labkit.data`` finds it (``LABKIT_DATA``).

Each run is ``labkit.train.fit``, the real loop (device-resident batches, bf16 autocast and channels_last on
CUDA, SGD), at a fixed batch size: once without tracking, and once per ``--every`` N with a
``labkit.gns.GNSTracker`` reading every N steps (k = ``GNSTracker``'s default microbatches). The tracker's
default N is what ``labkit train --strategy gns`` uses; its row carries the target: time with tracking /
time without ≤ 1.10.
On a measured step the tracker's k microbatch passes are the step's forward and backward (``labkit.step.
TrainStep`` takes the logits and loss from them), so the cost is the k smaller passes in place of one, every
N steps.

Timing: fit's ``epoch_time_s`` (training only, evaluation excluded, synchronised with the GPU at both ends),
summed over the epochs after the first (warm-up: cuDNN heuristics, the allocator). Settings run in turn
within each of ``--repeats`` rounds; a ratio is the median over rounds of (time with) / (time without).
The data are the real dataset's (timing does not depend on the pixels).
"""
from __future__ import annotations

import sys

import pandas as pd

from bench.timing import fixed_fit, parse, ratio_row, timing_parser
from labkit.gns import GNSTracker
from labkit.runtime import save_table

TARGET = 1.10       # time with the default tracker / time without


def run(args, batch: int, every: int) -> tuple[float, int, int]:
    """(training seconds over epochs 2.., steps in them, GNS readings in them) of one fit at ``batch``;
    ``every`` = 0: no tracking."""
    history = fixed_fit(args, batch, gns_every=every)
    timed = history.iloc[1:]
    first_step = int(history.steps.iloc[0])            # steps are counted from 0 across epochs
    last_step = int(history.steps.iloc[-1])
    readings = sum(1 for step in range(first_step, last_step) if every and step % every == 0)
    return float(timed.epoch_time_s.sum()), last_step - first_step, readings


def bench(args) -> pd.DataFrame:
    default = GNSTracker().every
    rows = []
    for batch in args.batch_sizes:
        runs = {every: [] for every in (0, *args.every)}          # every → [(seconds, steps, readings)]
        for _ in range(args.repeats):
            for every, results in runs.items():
                results.append(run(args, batch, every))
                seconds, steps, readings = results[-1]
                print(f"batch {batch}, every {every or 'off'}: {seconds:.3f} s for {steps} steps "
                      f"({readings} readings)", flush=True)
        without = [seconds for seconds, _, _ in runs[0]]
        for every in args.every:
            _, steps, readings = runs[every][-1]
            row = ratio_row(batch, "gns", [seconds for seconds, _, _ in runs[every]], without,
                            TARGET if every == default else None)
            rows.append({**row, "every": every, "k": GNSTracker().k, "default": every == default,
                         "steps": steps, "readings": readings})
    return pd.DataFrame(rows)


def parse_args(argv=None):
    parser = timing_parser(__doc__, model="cnn", batch_sizes=[256, 512], epochs=4, repeats=2,
                           out="bench_gns")
    parser.add_argument("--every", type=int, nargs="+", help="reading intervals to time "
                        "(default: 10, 50, the tracker's default, 200)")
    args = parse(parser, sys.argv[1:] if argv is None else argv, quick_batch=128)
    args.every = sorted(set(args.every or (10, 50, GNSTracker().every, 200)))
    if min(args.every) < 1:
        parser.error(f"--every {' '.join(map(str, args.every))}: expected integers >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    print(f"{args.model} on {args.dataset}, {args.device}, batch sizes {args.batch_sizes}, every {args.every}, "
          f"{args.epochs} epochs x {args.repeats} rounds", flush=True)
    table = bench(args)
    print(table[["batch_size", "every", "k", "default", "steps", "readings", "with_gns_s", "without_gns_s", "ratio",
                 "target", "meets_target"]].round(4).to_string(index=False))
    save_table(table, args.out, args.device, model=args.model, dataset=args.dataset, epochs=args.epochs,
               repeats=args.repeats, quick=args.quick)


if __name__ == "__main__":
    main()
