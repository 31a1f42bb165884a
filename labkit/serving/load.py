"""Load generator for a ``TimeWindowBatcher``: Poisson arrivals, an open loop, latency and throughput.

Requests arrive as a Poisson process of rate λ (requests/s): the gaps between arrivals are independent
exponentials, g ~ Exp(λ) with mean 1/λ, and request k arrives at t_k = g_1 + … + g_k. Client threads submit
each request at its scheduled time whether or not earlier ones have been answered (an *open* loop, like
independent users), so a server slower than λ builds a queue instead of slowing its clients down. With C
clients, client c submits requests c, c + C, c + 2C, …: together they still follow the one Poisson schedule.

Latency is measured from ``submit`` to the moment the result is set; throughput = served requests / (last
result − start). A batcher with ``max_queue`` refuses requests beyond it at once (``Overloaded``): they are
counted in ``refused`` (and in ``errors``) and left out of the percentiles and the throughput, which
describe the requests that were served. Two generators:

* ``"threads"``: the clients are threads of the server's process. They share its GIL, so a client may
  submit late, and while a client runs Python the worker waits for the GIL (up to the interpreter's switch
  interval, 5 ms by default, when the client does not block).
* ``"process"``: the clients are separate processes (``multiprocessing``, spawned). Each sleeps until a
  request's time and sends its index through a pipe (every request already due, when it is late); one
  receiver thread in the server's process submits them, like a network server's reading loop. The
  schedule runs on ``time.perf_counter`` (CLOCK_MONOTONIC, shared by all processes on Linux), so lateness
  is measured against the same clock.

``lag`` = submit time − scheduled time: how far behind schedule a request reached the batcher. A lag near
the latencies means the generator, not the batcher, was the limit: the offered rate was not really offered.
``wait`` and ``compute`` come from the batcher's records: how long a batch's oldest request waited before
the model call, and how long the call took. A p99 latency far above p99 wait + p99 compute is time spent
outside both: handing results back, or waiting for the GIL.

Garbage collection: a full collection scans every tracked Python object (about 2·10⁵ once torch is
imported: ~0.1 s on a CPU core) while every thread waits. The many futures of a run trigger such
collections, which then show up as latency spikes of 100 ms. ``run_load`` collects once, then moves the
surviving objects out of the collector's reach with ``gc.freeze()`` until the run ends (long-running
servers do the same after start-up), so only the run's own garbage is scanned.

Chapter: Time-window batching for inference.
"""
from __future__ import annotations

import gc
import math
import multiprocessing
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

import numpy as np
import torch

from labkit.checks import check_float, check_int
from labkit.serving.batcher import Overloaded, TimeWindowBatcher

START_DELAY_S = 0.01  # the schedule starts this long after the clients are ready
GENERATORS = ("threads", "process")


def poisson_arrivals(rate: float, *, count: int | None = None, duration_s: float | None = None,
                     seed: int = 0) -> np.ndarray:
    """Arrival times (s, increasing, from 0) of a Poisson process of ``rate`` per second: the first
    ``count`` arrivals, or all arrivals before ``duration_s``. The same seed gives the same schedule."""
    rate = check_float("rate", rate, low=0.0, low_open=True)
    if (count is None) == (duration_s is None):
        raise ValueError(f"give exactly one of count= or duration_s=; got count={count}, duration_s={duration_s}")
    rng = np.random.default_rng(seed)
    if count is not None:
        return np.cumsum(rng.exponential(1 / rate, size=check_int("count", count, low=1)))
    duration_s = check_float("duration_s", duration_s, low=0.0, low_open=True)
    expected = rate * duration_s
    times = np.cumsum(rng.exponential(1 / rate, size=math.ceil(expected + 6 * math.sqrt(expected) + 10)))
    while times[-1] < duration_s:  # more than 6 standard deviations above the mean: draw more
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1 / rate, size=len(times)))])
    return times[times < duration_s]


@dataclass(frozen=True)
class LoadResult:
    """What one ``run_load`` measured. Latencies (submit → result) in ms; ``latencies_ms`` has one per request
    (a refused request's is the moment it took to refuse it); the percentiles are over served requests."""
    rate: float            # offered, requests/s
    requests: int
    errors: int            # requests whose future raised, refused ones included
    refused: int           # requests refused by a full queue (Overloaded): never queued
    throughput: float      # served (not refused) requests/s
    p50_ms: float          # of the served requests
    p99_ms: float
    mean_batch: float      # requests per model call during the run
    batches: int
    max_lag_ms: float      # how far behind schedule a request was submitted, at worst
    p99_lag_ms: float
    p99_wait_ms: float     # of the batches: the oldest request's wait before the model call
    p99_compute_ms: float  # of the batches: the model call
    generator: str         # "threads" or "process"
    latencies_ms: np.ndarray = field(repr=False)

    def row(self) -> dict:
        """The scalar fields, for a table."""
        return {name: value for name, value in vars(self).items() if name != "latencies_ms"}


def run_load(batcher: TimeWindowBatcher, inputs: torch.Tensor, rate: float, *, duration_s: float | None = None,
             count: int | None = None, clients: int = 1, seed: int = 0, generator: str = "threads") -> LoadResult:
    """Submit Poisson arrivals of ``rate`` requests/s to a started ``batcher`` for ``duration_s`` seconds or
    ``count`` requests, from ``clients`` threads or processes (``generator``, see the module docstring), and
    wait for every answer. Request k sends ``inputs[k % len(inputs)]``; ``inputs`` is (N, *sample_shape)."""
    clients = check_int("clients", clients, low=1)
    if generator not in GENERATORS:
        raise ValueError(f"generator={generator!r} is not one of {GENERATORS}")
    if not batcher.running:
        raise RuntimeError(f"{batcher!r} is not serving: call start() first (or use it in a with-block)")
    arrivals = poisson_arrivals(rate, count=count, duration_s=duration_s, seed=seed)
    n, samples = len(arrivals), inputs.unbind(0)
    submitted, finished = np.zeros(n), np.zeros(n)
    futures: list[Future | None] = [None] * n
    remaining, lock, all_done = [n], threading.Lock(), threading.Event()
    first_batch = len(batcher.batches)

    def stamp(k: int) -> None:  # runs in the worker thread when request k is answered
        finished[k] = time.perf_counter()
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                all_done.set()

    def submit(k: int) -> None:
        submitted[k] = time.perf_counter()
        futures[k] = batcher.submit(samples[k % len(samples)])
        futures[k].add_done_callback(lambda _future, k=k: stamp(k))

    shares = [range(c, n, clients) for c in range(clients)]  # client c sends requests c, c + C, c + 2C, …
    gc.collect()
    gc.freeze()  # see the module docstring: no full collection pauses every thread mid-run
    try:
        run = _run_threads if generator == "threads" else _run_processes
        start = run(arrivals, shares, submit)
        if any(future is None for future in futures):
            raise RuntimeError(f"a client failed to submit (traceback above); served so far: {batcher!r}")
        all_done.wait()
    finally:
        gc.unfreeze()
    latencies, lags = (finished - submitted) * 1e3, (submitted - start - arrivals) * 1e3
    records = batcher.batches[first_batch:]
    sizes = [record.size for record in records]
    failures = [future.exception() if not future.cancelled() else True for future in futures]
    served = np.array([not isinstance(error, Overloaded) for error in failures])
    kept = latencies[served] if served.any() else np.array([np.nan])
    return LoadResult(rate=float(rate), requests=n, errors=sum(error is not None for error in failures),
                      refused=int(n - served.sum()),
                      throughput=float(served.sum() / (finished[served].max() - start)) if served.any() else 0.0,
                      p50_ms=float(np.percentile(kept, 50)), p99_ms=float(np.percentile(kept, 99)),
                      mean_batch=sum(sizes) / max(len(sizes), 1),
                      batches=len(sizes), max_lag_ms=float(lags.max()), p99_lag_ms=float(np.percentile(lags, 99)),
                      p99_wait_ms=_p99([record.wait_ms for record in records]),
                      p99_compute_ms=_p99([record.compute_ms for record in records]),
                      generator=generator, latencies_ms=latencies)


def _p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


def _run_threads(arrivals: np.ndarray, shares: list[range], submit) -> float:
    """One client thread per share sleeps until each request's time and submits it; returns the start."""
    def client(ks: range) -> None:
        for k in ks:
            delay = start + arrivals[k] - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            submit(k)

    threads = [threading.Thread(target=client, args=(ks,), name=f"load-client-{c}") for c, ks in enumerate(shares)]
    start = time.perf_counter() + START_DELAY_S
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return start


def _run_processes(arrivals: np.ndarray, shares: list[range], submit) -> float:
    """One spawned client process per share sends request indices at their times; this thread receives
    them and submits them. Returns the start of the schedule, set once every client is ready."""
    context = multiprocessing.get_context("spawn")  # fork is unsafe in a process running threads and CUDA
    pipes, processes = [], []
    try:
        for ks in shares:
            ours, theirs = context.Pipe()
            process = context.Process(target=_client_process, args=(theirs, arrivals[ks.start::ks.step], ks),
                                      name="load-client", daemon=True)
            process.start()
            theirs.close()
            pipes.append(ours)
            processes.append(process)
        for pipe in pipes:
            pipe.recv()  # "ready": the child has imported its modules
        start = time.perf_counter() + START_DELAY_S
        for pipe in pipes:
            pipe.send(start)
        live = list(pipes)
        while live:
            for pipe in wait(live):
                message = pipe.recv_bytes()  # EOFError if a client died: its traceback is above
                if not message:
                    live.remove(pipe)
                for k in np.frombuffer(message, dtype=np.int64):
                    submit(int(k))
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
    return start


def _client_process(pipe: Connection, times: np.ndarray, ks: range) -> None:
    """In a client process: wait for the start; send request k's index at start + its arrival time. A
    client behind schedule sends every request already due in one message (int64 indices); b'' ends."""
    pipe.send("ready")
    start = pipe.recv()
    ks, i = np.asarray(ks, dtype=np.int64), 0
    while i < len(ks):
        delay = start + times[i] - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        due = max(i + 1, int(np.searchsorted(times, time.perf_counter() - start, side="right")))
        pipe.send_bytes(ks[i:due].tobytes())
        i = due
    pipe.send_bytes(b"")
    pipe.close()
