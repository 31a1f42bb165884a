"""Benchmark: where the first call at each batch size is slow, and whether a warm-up elsewhere helps.

    python -m bench.warmup                                   # GPU: cnn on MNIST shapes → runs/bench_warmup.csv
    python -m bench.warmup --device cpu --model mlp --calls 300 --out /tmp/w.csv   # CPU smoke run in seconds

The served model (``labkit.serving.bench.make_model_fn``) is first run once at every batch size 1..64 in
the main thread. Then ``--calls`` model calls at random batch sizes (seeded, 1..64, a 1 ms sleep before each,
as between requests) are timed in each case:

* ``main thread``: the thread that warmed up;
* ``fresh thread``: a new thread, warmed up only in the main thread (what the serving benchmark did before
  ``TimeWindowBatcher(warmup=...)``);
* ``fresh thread, switch interval X ms``: the same with the interpreter's GIL switch interval changed;
* ``fresh thread, warmed in it``: a new thread that first runs every batch size once itself.

Rows: calls, p50/p99/max ms, and ``slow_calls`` above ``--slow-ms``. On CUDA the fresh thread shows one slow
call per batch size (cuDNN plans are chosen per thread); the batcher's worker is such a thread.
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pandas as pd
import torch

from bench.arguments import bench_parser
from labkit.runtime import pick_device, save_table
from labkit.serving.bench import SAMPLE_SHAPE, make_model_fn

MAX_BATCH = 64


def timed_calls(model_fn, inputs, sizes, device) -> np.ndarray:
    """ms per call (stack, copy to the device, model, answer on the CPU) at each batch size in ``sizes``."""
    out = []
    for size in sizes:
        time.sleep(0.001)
        start = time.perf_counter()
        with torch.inference_mode():
            model_fn(torch.stack(list(inputs[:size].unbind(0))).to(device))
        out.append((time.perf_counter() - start) * 1e3)
    return np.array(out)


def in_fresh_thread(work):
    """Run ``work()`` in a new thread (as the batcher's worker does) and return its result."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=work()))
    thread.start()
    thread.join()
    return result["value"]


def main(argv=None):
    parser = bench_parser(__doc__, "bench_warmup", "200 calls (a CPU smoke run)")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--slow-ms", type=float, default=4.0, help="a call above this counts as slow")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls = min(args.calls, 200)
    device = pick_device(args.device)
    model_fn = make_model_fn(args.model, device)
    inputs = torch.randn(MAX_BATCH, *SAMPLE_SHAPE, generator=torch.Generator().manual_seed(0))
    every_size = range(1, MAX_BATCH + 1)
    sizes = np.random.default_rng(0).integers(1, MAX_BATCH + 1, args.calls)
    timed_calls(model_fn, inputs, every_size, device)            # the warm-up, in the main thread
    old_interval = sys.getswitchinterval()
    cases = {"main thread": lambda: timed_calls(model_fn, inputs, sizes, device),
             "fresh thread": lambda: in_fresh_thread(lambda: timed_calls(model_fn, inputs, sizes, device))}
    for ms in (0.1, 50.0):
        def switched(ms=ms):
            sys.setswitchinterval(ms / 1e3)
            try:
                return in_fresh_thread(lambda: timed_calls(model_fn, inputs, sizes, device))
            finally:
                sys.setswitchinterval(old_interval)
        cases[f"fresh thread, switch interval {ms:g} ms"] = switched
    cases["fresh thread, warmed in it"] = lambda: in_fresh_thread(
        lambda: (timed_calls(model_fn, inputs, every_size, device), timed_calls(model_fn, inputs, sizes, device))[1])
    rows = []
    for name, case in cases.items():
        ms = case()
        rows.append({"case": name, "calls": len(ms), "p50_ms": np.median(ms), "p99_ms": np.percentile(ms, 99),
                     "max_ms": ms.max(), "slow_calls": int((ms > args.slow_ms).sum())})
        print(f"{name:40s} p50 {rows[-1]['p50_ms']:6.2f}  p99 {rows[-1]['p99_ms']:6.2f}  max {ms.max():6.2f} ms, "
              f"{rows[-1]['slow_calls']} calls over {args.slow_ms:g} ms", flush=True)
    save_table(pd.DataFrame(rows), args.out, device, model=args.model, max_batch=MAX_BATCH, slow_ms=args.slow_ms,
               cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None)


if __name__ == "__main__":
    main()
