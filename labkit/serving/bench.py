"""``labkit serve-bench``: time-window batching vs one-by-one inference under Poisson load.

Claim (issue "The other batching families", part 3): offered several times the rate that one-by-one serving
can handle, the time-window batcher answers ≥ 5× as many requests per second as one-by-one serving, with
p99 latency ≤ window + one full batch's service time.

1. Warm-up: every batcher runs the model once at every batch size 1..max_batch in its worker thread
   before it serves (``TimeWindowBatcher(warmup=...)``): cuDNN's plans are kept per thread, so a warm-up
   anywhere else leaves the first call at each size slow (7 ms instead of 1 ms here).
2. Capacity: a burst of requests queued at once is served one by one (``max_batch=1``), then in batches of
   ``max_batch``: requests/s at saturation (``one_by_one_rps``, ``batched_rps``) and time per batch
   (``batch1_ms``, ``batch_ms``). Back-to-back calls overlap the host's work with the GPU's, so a lone
   batch takes longer: the service time s that enters the latency bound is the p99 model call (stack,
   copy to the device, model, synchronise) of 200 full batches sent one at a time with idle gaps
   (``isolated_batch1_p99_ms`` at batch 1, ``isolated_batch_p99_ms`` at ``max_batch``).
3. Load: for each offered rate (``load`` × the one-by-one capacity, or ``rates``) and each load generator
   (client threads in this process, or client processes: see ``labkit.serving.load``), ``run_load`` sends
   Poisson arrivals for ``duration_s`` to one-by-one serving, a batcher for each window, and one tuned by a
   ``WindowController`` toward ``target_p99_ms``. Past its capacity one-by-one serving builds a queue: its
   latency grows with the run's length.

Requests are single samples on the CPU (as they come off a network); the batcher stacks them, copies the
batch to the device, and the model's output comes back to the CPU (``.cpu()``), all inside the timings.
Columns: speedup = throughput / one-by-one throughput at the same rate and generator; p99_bound_ms =
window + s (one-by-one: s at batch 1; controller: its target); p99_ok = p99 ≤ p99_bound_ms; meets_target
(window rows at rates ≥ 5× the one-by-one capacity) = speedup ≥ 5 and p99_ok.

Chapter: Time-window batching for inference.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from labkit.checks import check_float, check_int
from labkit.models import build_model
from labkit.serving.batcher import BatchRecord, TimeWindowBatcher
from labkit.serving.controller import WindowController
from labkit.serving.load import GENERATORS, run_load

SAMPLE_SHAPE, NUM_CLASSES = (1, 28, 28), 10  # MNIST
SPEEDUP_TARGET = 5.0
# settings the command line fills in when not given: full runs, and a CPU smoke run in seconds
FULL = {"model": "cnn", "load": (0.5, 2.0, 8.0), "duration": 2.0, "burst": 2000, "generators": ("process",)}
QUICK = {"model": "mlp", "load": (0.5, 3.0), "duration": 0.3, "burst": 500, "generators": ("threads",)}


def make_model_fn(name: str, device: torch.device):
    """The served function: (B, 1, 28, 28) on ``device`` → (B, 10) logits on the CPU."""
    torch.manual_seed(0)
    model = build_model(name, SAMPLE_SHAPE, NUM_CLASSES).to(device).eval()

    def model_fn(x):
        return model(x).cpu()  # the answer goes back to the host, as a server's would

    return model_fn


def burst(model_fn, inputs: torch.Tensor, max_batch: int, requests: int,
          device) -> tuple[float, float, list[BatchRecord]]:
    """Serve ``requests`` queued at once in batches of up to ``max_batch``: (requests/s, ms per batch end to
    end, the batcher's ``BatchRecord`` per model call)."""
    batcher = TimeWindowBatcher(model_fn, window_ms=1.0, max_batch=max_batch, device=device, warmup=inputs[0])
    for k in range(requests):
        batcher.submit(inputs[k % len(inputs)])
    batcher.start()  # returns when the worker has warmed up and turns to the queue
    start = time.perf_counter()
    batcher.close()  # serves the queue, stops
    elapsed = time.perf_counter() - start
    return requests / elapsed, elapsed * 1e3 / len(batcher.batches), batcher.batches


def isolated_p99(model_fn, inputs: torch.Tensor, size: int, device, repeats: int = 200,
                 gap_s: float = 0.002) -> float:
    """p99 of the model call (ms) for ``repeats`` batches of ``size`` requests, each sent alone after an
    idle gap: the service time a batch closed by its window sees."""
    with TimeWindowBatcher(model_fn, window_ms=1.0, max_batch=size, device=device, warmup=inputs[0]) as batcher:
        for _ in range(repeats):
            time.sleep(gap_s)
            for future in [batcher.submit(inputs[k % len(inputs)]) for k in range(size)]:
                future.result()
    return float(np.percentile([record.compute_ms for record in batcher.batches], 99))


@contextmanager
def switch_interval(ms: float | None):
    """Set the interpreter's GIL switch interval (``sys.setswitchinterval``) for a block; None leaves it."""
    old = sys.getswitchinterval()
    if ms is not None:
        sys.setswitchinterval(check_float("switch_interval_ms", ms, low=0.0, low_open=True) / 1e3)
    try:
        yield sys.getswitchinterval() * 1e3
    finally:
        sys.setswitchinterval(old)


def serve_bench(model: str = "cnn", *, device: torch.device, max_batch: int = 64,
                windows: tuple[float, ...] = (2.0, 5.0, 10.0), target_p99_ms: float = 10.0,
                load: tuple[float, ...] = (0.5, 2.0, 8.0), rates: tuple[float, ...] | None = None,
                duration_s: float = 2.0, clients: int = 2, burst_requests: int = 2000, seed: int = 0,
                generators: tuple[str, ...] = ("process",), switch_interval_ms: float | None = None,
                log=print) -> tuple[pd.DataFrame, dict]:
    """Run the benchmark (module docstring); returns (one row per rate × generator × mode, the
    capacity measurements and settings as a dict for the table's metadata)."""
    max_batch = check_int("max_batch", max_batch, low=1)
    for name, values in (("windows", windows), ("load", load), ("rates", rates or ())):
        for value in values:
            check_float(name, value, low=0.0, low_open=True)
    for generator in generators:
        if generator not in GENERATORS:
            raise ValueError(f"generator {generator!r} is not one of {GENERATORS}")
    model_fn = make_model_fn(model, device)
    inputs = torch.randn(256, *SAMPLE_SHAPE, generator=torch.Generator().manual_seed(0))  # requests, on the CPU
    with switch_interval(switch_interval_ms) as interval_ms:
        one_rps, batch1_ms, _ = burst(model_fn, inputs, 1, burst_requests, device)
        batched_rps, batch_ms, _ = burst(model_fn, inputs, max_batch, burst_requests, device)
        capacity = {"one_by_one_rps": one_rps, "batch1_ms": batch1_ms, "batched_rps": batched_rps,
                    "batch_ms": batch_ms, "isolated_batch1_p99_ms": isolated_p99(model_fn, inputs, 1, device),
                    "isolated_batch_p99_ms": isolated_p99(model_fn, inputs, max_batch, device)}
        log(f"{model} on {device}: one-by-one {one_rps:,.0f} req/s ({batch1_ms:.3f} ms per request, "
            f"{capacity['isolated_batch1_p99_ms']:.3f} ms p99 alone); batches of {max_batch}: {batched_rps:,.0f} "
            f"req/s ({batch_ms:.3f} ms per batch, {capacity['isolated_batch_p99_ms']:.3f} ms p99 alone)")
        settings = {"model": model, "max_batch": max_batch, "duration_s": duration_s, "clients": clients,
                    "seed": seed, "target_p99_ms": target_p99_ms, "switch_interval_ms": interval_ms,
                    "torch_threads": torch.get_num_threads()}
        rows = []
        for rate in rates or [round(factor * one_rps) for factor in load]:
            for generator in generators:
                run = dict(device=device, duration_s=duration_s, clients=clients, seed=seed, generator=generator)
                rows += _bench_rate(model_fn, inputs, rate, capacity, windows, max_batch, target_p99_ms, run)
                log(f"  rate {rate:,.0f}/s, {generator} clients: done")
    return pd.DataFrame(rows), capacity | settings


def _bench_rate(model_fn, inputs, rate: float, capacity: dict, windows, max_batch: int, target_p99_ms: float,
                run: dict) -> list[dict]:
    """Rows for one offered rate and generator: one-by-one, each window, the controller."""
    rows = [_serve(model_fn, inputs, rate, run, max_batch=1)
            | {"mode": "one-by-one", "window_ms": 0.0, "p99_bound_ms": capacity["isolated_batch1_p99_ms"]}]
    for window in windows:
        rows.append(_serve(model_fn, inputs, rate, run, window_ms=window, max_batch=max_batch)
                    | {"mode": "window", "p99_bound_ms": window + capacity["isolated_batch_p99_ms"]})
    controller = WindowController(target_p99_ms, window_ms=min(1.0, target_p99_ms))
    rows.append(_serve(model_fn, inputs, rate, run, max_batch=max_batch, controller=controller)
                | {"mode": "controller", "p99_bound_ms": target_p99_ms, "controller_steps": controller.steps})
    return judge(rows, capacity["one_by_one_rps"])


def judge(rows: list[dict], one_by_one_rps: float) -> list[dict]:
    """Add speedup, p99_ok, target and meets_target to the rows of one rate and generator (rows[0] is
    one-by-one). The target applies to window rows offered ≥ 5× the one-by-one capacity, which the
    command rounds to whole requests/s."""
    one_by_one = rows[0]["throughput"]
    overloaded = rows[0]["rate"] >= round(SPEEDUP_TARGET * one_by_one_rps)  # one-by-one cannot keep up at all
    for row in rows:
        row["speedup"] = row["throughput"] / one_by_one
        row["p99_ok"] = row["p99_ms"] <= row["p99_bound_ms"]
        windowed = row["mode"] == "window" and overloaded
        row["target"] = f"speedup >= {SPEEDUP_TARGET:g} and p99_ok" if windowed else ""
        row["meets_target"] = bool(row["speedup"] >= SPEEDUP_TARGET and row["p99_ok"]) if windowed else None
    return rows


def _serve(model_fn, inputs, rate: float, run: dict, **batcher_kwargs) -> dict:
    """One ``run_load`` against a fresh batcher; its measurements as a table row."""
    with TimeWindowBatcher(model_fn, device=run["device"], warmup=inputs[0], **batcher_kwargs) as batcher:
        result = run_load(batcher, inputs, rate, duration_s=run["duration_s"], clients=run["clients"],
                          seed=run["seed"], generator=run["generator"])
    return result.row() | {"window_ms": batcher.window_ms}
