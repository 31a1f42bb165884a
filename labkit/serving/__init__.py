"""Time-window inference batching: serve single requests in batches, load them, tune the window.

* ``TimeWindowBatcher`` (``labkit.serving.batcher``): callers submit one sample at a time; a worker closes a
  batch ``window_ms`` after its first request or at ``max_batch`` requests and runs the model once. With
  ``max_queue`` it refuses requests beyond that many waiting (their futures fail with ``Overloaded``), which
  bounds the latency of the ones it serves under overload; a model function that raises ``SystemExit`` (any
  ``BaseException``) closes the batcher and fails what is queued, and later submits raise at once.
* ``run_load``, ``poisson_arrivals`` (``labkit.serving.load``): Poisson arrivals at a rate, open loop,
  p50/p99 latency, throughput, mean batch.
* ``WindowController`` (``labkit.serving.controller``): AIMD on the window toward a p99 latency target,
  never below one batch's service time.
* ``replay``, ``formula_batch`` (``labkit.serving.replay``): the close rule replayed on arrival times without
  threads, and E[B] ≈ min(B_max, 1 + λw); ``labkit.serving.report`` reads a ``serve-bench`` CSV.

Lab sheet: *time-constrained adaptive batching*. Chapter: Time-window batching for inference.
Benchmark: ``labkit serve-bench`` (``labkit.serving.bench``).
"""
from labkit.serving.batcher import BatchRecord, Overloaded, TimeWindowBatcher
from labkit.serving.controller import WindowController, WindowDecision
from labkit.serving.load import LoadResult, poisson_arrivals, run_load

__all__ = ["BatchRecord", "LoadResult", "Overloaded", "TimeWindowBatcher", "WindowController", "WindowDecision",
           "poisson_arrivals", "run_load"]
