"""Benchmark: what tracking the gradient noise scale costs a training run.

    python -m bench.gns                                          # GPU: cnn on CIFAR-10, writes results/bench_gns.csv
    python -m bench.gns --quick --dataset digits --out /tmp/g.csv   # CPU smoke run in seconds

Run from the repository root with the data where ``labkit.data`` finds it (``LABKIT_DATA``).

Each run is ``labkit.train.fit``, the real loop (device-resident batches, bf16 autocast and channels_last on
CUDA, SGD), at a fixed batch size: once without tracking, and once per ``--every`` N with a
``labkit.gns.GNSTracker`` reading every N steps (k = ``GNSTracker``'s default microbatches). The tracker's
default N is what ``labkit train --strategy gns`` uses; its row carries the target: time with tracking /
time without ≤ 1.10.
On a measured step the tracker's k microbatch passes are the step's forward and backward (fit takes the
logits and loss from them), so the cost is the k smaller passes in place of one, every N steps.

Timing: fit's ``epoch_time_s`` (training only, evaluation excluded, synchronised with the GPU at both ends),
summed over the epochs after the first (warm-up: cuDNN heuristics, the allocator). Settings run in turn
within each of ``--repeats`` rounds; a ratio is the median over rounds of (time with) / (time without).
The data are the real dataset's (timing does not depend on the pixels).
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pandas as pd

from labkit.gns import GNSTracker
from labkit.models import MODELS
from labkit.runtime import REPO, pick_device, save_table
from labkit.train import TrainConfig, fit

TARGET = 1.10       # time with the default tracker / time without


def run(args, batch: int, every: int) -> tuple[float, int, int]:
    """(training seconds over epochs 2.., steps in them, GNS readings in them) of one fit at ``batch``;
    ``every`` = 0: no tracking."""
    config = TrainConfig(dataset=args.dataset, model=args.model, epochs=args.epochs, lr=0.05, lr_rule="none",
                         strategy="fixed", strategy_params={"b_init": batch, "min_batch": batch, "max_batch": batch},
                         gns_every=every, device=str(args.device), quick=args.quick)
    history = fit(config, progress=False)
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
            with_gns = [seconds for seconds, _, _ in runs[every]]
            ratio = statistics.median(t / off for t, off in zip(with_gns, without))
            _, steps, readings = runs[every][-1]
            rows.append({"batch_size": batch, "every": every, "k": GNSTracker().k, "default": every == default,
                         "steps": steps, "readings": readings, "with_gns_s": statistics.median(with_gns),
                         "without_gns_s": statistics.median(without), "ratio": ratio,
                         "target": f"ratio <= {TARGET}" if every == default else "",
                         "meets_target": ratio <= TARGET if every == default else None})
    return pd.DataFrame(rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="cnn")
    parser.add_argument("--dataset", default="cifar10", help="a labkit.data name (its real data are used)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--every", type=int, nargs="+", help="reading intervals to time "
                        "(default: 10, 25, the tracker's default, 100)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is not timed")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all settings")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="2048 examples, 2 epochs, 1 round (CPU smoke run)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench_gns.csv")
    args = parser.parse_args(argv)
    args.device = pick_device(args.device)
    default = GNSTracker().every
    args.every = sorted(set(args.every or (10, 50, default, 200)))
    if args.quick:
        args.epochs, args.repeats = 2, 1
        if args.batch_sizes == parser.get_default("batch_sizes"):
            args.batch_sizes = [128]
    for flag, values, low in (("--epochs", [args.epochs], 2), ("--repeats", [args.repeats], 1),
                              ("--every", args.every, 1), ("--batch-sizes", args.batch_sizes, 1)):
        if min(values) < low:
            parser.error(f"{flag} {' '.join(map(str, values))}: expected integers >= {low}"
                         f"{' (the first epoch is the warm-up)' if flag == '--epochs' else ''}")
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
