"""Benchmark: time-window batching vs one-by-one inference under Poisson load.

    python -m bench.serving                                  # GPU: cnn on MNIST shapes → results/bench_serving.csv
    python -m bench.serving --quick --out /tmp/serving.csv   # CPU smoke run in about 20 s (mlp, short runs)
    python -m bench.serving --model mlp --windows 1 2 5 --load 0.5 4 16 --target-p99-ms 5

Run from the repository root (``-m`` puts it on the import path; or install labkit with ``pip install -e .``).

Claim (issue "The other batching families", part 3): offered several times the rate that one-by-one serving
can handle, the time-window batcher answers ≥ 5× as many requests per second as one-by-one serving, with
p99 latency ≤ window + one full batch's service time.

1. Warm-up: the model runs once at every batch size 1..max_batch.
2. Capacity: a burst of requests queued at once is served one by one (``max_batch=1``), then in batches of
   ``max_batch``: requests/s at saturation, and the service time of one batch (collect, stack, copy to the
   device, model, synchronise, answer) = burst time / batches.
3. Load: for each rate (``--load`` × the one-by-one capacity, or ``--rates``), ``labkit.serving.run_load``
   sends Poisson arrivals (seeded) for ``--duration`` s from ``--clients`` threads to: one-by-one serving, a
   time-window batcher for each ``--windows``, and one tuned by a ``WindowController`` (``--target-p99-ms``).
   Past its capacity one-by-one serving builds a queue: its latency grows with the run's length.

Requests are single samples on the CPU (as they come off a network); the batcher stacks them, copies the
batch to ``--device``, and the model's output comes back to the CPU (``.cpu()``), all inside the timings.
Columns: speedup = throughput / one-by-one throughput at the same rate; p99_bound_ms = window + batch_ms
(one-by-one: batch_ms at batch 1; controller: its target); p99_ok = p99 ≤ p99_bound_ms.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from labkit.models import MODELS, build_model
from labkit.runtime import REPO, pick_device, save_table
from labkit.serving import TimeWindowBatcher, WindowController, run_load

SAMPLE_SHAPE, NUM_CLASSES = (1, 28, 28), 10  # MNIST
SPEEDUP_TARGET = 5.0


def make_model_fn(name: str, device: torch.device):
    """The served function: (B, 1, 28, 28) on ``device`` → (B, 10) logits on the CPU."""
    torch.manual_seed(0)
    model = build_model(name, SAMPLE_SHAPE, NUM_CLASSES).to(device).eval()

    def model_fn(x):
        return model(x).cpu()  # the answer goes back to the host, as a server's would

    return model_fn


def warm_up(model_fn, inputs, max_batch: int, device: torch.device) -> None:
    """One call per batch size: kernel choice and memory allocation happen here, not in the timings."""
    with torch.inference_mode():
        for size in range(1, max_batch + 1):
            model_fn(inputs[:size].to(device))


def burst(model_fn, inputs, max_batch: int, requests: int, device) -> tuple[float, float]:
    """(requests/s, ms per batch) serving ``requests`` queued at once in batches of up to ``max_batch``."""
    batcher = TimeWindowBatcher(model_fn, window_ms=1.0, max_batch=max_batch, device=device)
    for k in range(requests):
        batcher.submit(inputs[k % len(inputs)])
    start = time.perf_counter()
    batcher.close()  # starts the worker, serves the queue, stops
    elapsed = time.perf_counter() - start
    return requests / elapsed, elapsed * 1e3 / len(batcher.batches)


def serve(model_fn, inputs, rate: float, args, **batcher_kwargs) -> dict:
    """One ``run_load`` against a fresh batcher; its measurements as a table row."""
    with TimeWindowBatcher(model_fn, device=args.device, **batcher_kwargs) as batcher:
        result = run_load(batcher, inputs, rate, duration_s=args.duration, clients=args.clients, seed=args.seed)
    return result.row() | {"window_ms": batcher.window_ms}


def bench_rate(model_fn, inputs, rate: float, args, capacity: dict) -> list[dict]:
    """Rows for one offered rate: one-by-one, each window, the controller."""
    rows = [serve(model_fn, inputs, rate, args, max_batch=1)
            | {"mode": "one-by-one", "window_ms": 0.0, "p99_bound_ms": capacity["batch1_ms"]}]
    for window in args.windows:
        rows.append(serve(model_fn, inputs, rate, args, window_ms=window, max_batch=args.max_batch)
                    | {"mode": "window", "p99_bound_ms": window + capacity["batch_ms"]})
    controller = WindowController(args.target_p99_ms, window_ms=min(1.0, args.target_p99_ms))
    rows.append(serve(model_fn, inputs, rate, args, max_batch=args.max_batch, controller=controller)
                | {"mode": "controller", "p99_bound_ms": args.target_p99_ms, "controller_steps": controller.steps})
    one_by_one = rows[0]["throughput"]
    overloaded = rate >= SPEEDUP_TARGET * capacity["one_by_one_rps"]  # one-by-one cannot keep up at all
    for row in rows:
        row["speedup"] = row["throughput"] / one_by_one
        row["p99_ok"] = row["p99_ms"] <= row["p99_bound_ms"]
        windowed = row["mode"] == "window" and overloaded
        row["target"] = f"speedup >= {SPEEDUP_TARGET:g} and p99_ok" if windowed else ""
        row["meets_target"] = bool(row["speedup"] >= SPEEDUP_TARGET and row["p99_ok"]) if windowed else None
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="cnn", help="served on MNIST shapes (1, 28, 28)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--windows", type=float, nargs="+", default=[2.0, 5.0, 10.0], help="fixed windows, ms")
    parser.add_argument("--target-p99-ms", type=float, default=10.0, help="the controller's latency target")
    parser.add_argument("--load", type=float, nargs="+", default=[0.5, 2.0, 8.0],
                        help="offered rates as multiples of the measured one-by-one capacity")
    parser.add_argument("--rates", type=float, nargs="+", help="offered rates in requests/s (instead of --load)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds of arrivals per run")
    parser.add_argument("--clients", type=int, default=2, help="client threads sending the requests")
    parser.add_argument("--burst", type=int, default=2000, help="requests in the capacity measurement")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="short runs of an mlp for a CPU smoke run")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench_serving.csv")
    args = parser.parse_args(argv)
    args.device = pick_device(args.device)
    if args.quick:
        args.model = "mlp" if args.model == parser.get_default("model") else args.model
        args.duration = min(args.duration, 0.3)
        args.burst = min(args.burst, 500)
        args.load = [0.5, 3.0] if args.load == parser.get_default("load") else args.load
    return args


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    if device.type == "cpu":
        # the worker shares the cores with the client threads: intra-op threads would wait for descheduled
        # peers (batches of x*2 took 12 ms instead of 0.2 ms on a 2-core machine)
        torch.set_num_threads(1)
    model_fn = make_model_fn(args.model, device)
    inputs = torch.randn(256, *SAMPLE_SHAPE, generator=torch.Generator().manual_seed(0))  # requests, on the CPU
    warm_up(model_fn, inputs, args.max_batch, device)
    one_rps, batch1_ms = burst(model_fn, inputs, 1, args.burst, device)
    batched_rps, batch_ms = burst(model_fn, inputs, args.max_batch, args.burst, device)
    capacity = {"one_by_one_rps": one_rps, "batch1_ms": batch1_ms, "batched_rps": batched_rps, "batch_ms": batch_ms}
    print(f"{args.model} on {device}: one-by-one {one_rps:,.0f} req/s ({batch1_ms:.3f} ms per request); "
          f"batches of {args.max_batch}: {batched_rps:,.0f} req/s ({batch_ms:.3f} ms per batch)", flush=True)
    rates = args.rates or [round(factor * one_rps) for factor in args.load]
    rows = []
    for rate in rates:
        rows += bench_rate(model_fn, inputs, rate, args, capacity)
        print(f"  rate {rate:,.0f}/s done", flush=True)
    table = pd.DataFrame(rows)
    print(table[["rate", "mode", "window_ms", "throughput", "p50_ms", "p99_ms", "mean_batch", "speedup",
                 "p99_bound_ms", "p99_ok", "meets_target", "max_lag_ms"]].round(3).to_string(index=False))
    save_table(table, args.out, device, **capacity, model=args.model, max_batch=args.max_batch,
               duration_s=args.duration, clients=args.clients, seed=args.seed, target_p99_ms=args.target_p99_ms,
               torch_threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
