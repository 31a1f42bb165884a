"""``TimeWindowBatcher``: many callers submit single requests, one worker runs the model once per batch.

A server that calls the model once per request pays the per-call overhead (Python, kernel launches,
host↔device copies) every time. The lab sheet's *time-constrained adaptive batching* collects requests for a
short window and runs them together. A batch closes at

    t_close = min(t_first + window, arrival of the max_batch-th request)

where t_first is when the batch's oldest request was submitted. Under light load a request waits at most the
window, then one batch's compute: latency ≤ window + compute(B). Under heavy load batches fill to
``max_batch`` before the window ends and each model call serves ``max_batch`` requests instead of one.
Production servers use the same two knobs: Triton's dynamic batcher (``max_queue_delay_microseconds``,
``max_batch_size``) and TF Serving (``batch_timeout_micros``, ``max_batch_size``).

Example::

    with TimeWindowBatcher(model, window_ms=5, max_batch=64, device="cuda") as server:
        y = server.infer(x)              # blocking: x is one sample, e.g. (1, 28, 28); y its output row
        future = server.submit(x)        # or a concurrent.futures.Future
        y = await server.ainfer(x)       # or from asyncio

``max_batch=1`` is one-by-one serving: the same worker, every request alone.

Warm-up: the first call at a new batch size is slow. With cuDNN, a convolution's plan for a new shape is
chosen on first use (about 7 ms for the book's cnn on an H100), and PyTorch keeps those plans per thread.
``bench/warmup.py`` (``results/bench_warmup.csv``: H100, PyTorch 2.11, cuDNN 9.19) timed 2000 calls at
random batch sizes 1..64 after a warm-up in the main thread: over 4 ms were 15 calls in the main thread
(p99 2.9 ms), 73 in a fresh thread (p99 8.2 ms: about one per batch size more), and 19 in a fresh thread
that warmed up itself (p99 3.9 ms). ``warmup=sample`` runs the model once at every batch size
1..max_batch in the worker thread itself; ``start()`` returns when done.

Chapter: Time-window batching for inference.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from labkit.checks import check_float, check_int
from labkit.serving.controller import WindowController

DEFAULT_WINDOW_MS = 10.0
_STOP = object()  # queued by close(): the worker finishes what came before it, then exits


@dataclass(frozen=True)
class BatchRecord:
    """One model call: ``size`` requests; the oldest waited ``wait_ms`` before the call began, and the call
    took ``compute_ms`` (stack, copy to the device, model, CUDA synchronisation). ``error``: the exception's
    repr when the call failed, else ''."""
    size: int
    wait_ms: float
    compute_ms: float
    error: str = ""


@dataclass(frozen=True)
class _Request:
    x: torch.Tensor
    future: Future
    submitted: float  # time.perf_counter() seconds


class TimeWindowBatcher:
    """Serve single requests in batches closed by a time window or a size cap.

    Args:
        model_fn: maps a (B, *sample_shape) tensor to a tensor with B rows, e.g. an ``nn.Module`` in eval
            mode. It runs under ``torch.inference_mode()`` in the worker thread.
        window_ms: how long a batch stays open after its first request arrived (default 10 ms; > 0).
            Writable while serving. Leave it out when a ``controller`` is given: the controller's
            ``window_ms`` is the starting window.
        max_batch: a batch closes at once when it holds this many requests (default 64; >= 1).
        device: the stacked batch is moved there before ``model_fn`` (default: left where the samples are).
        controller: an optional ``WindowController``; every ``controller.every`` served requests it gets
            their p99 latency (submit → result) and sets ``window_ms``.
        warmup: one sample (like a request); if given, the worker runs batches of 1..max_batch copies of it
            before serving (see the module docstring). ``warmup_s`` says how long that took.

    Every request is served exactly once, in arrival order: its future gets its own row of the output, or
    the exception the batch raised (every caller of that batch gets it). ``batches`` holds a
    ``BatchRecord`` per model call. ``close()`` stops accepting requests and serves (or cancels) the queued
    ones.
    """

    def __init__(self, model_fn: Callable[[torch.Tensor], torch.Tensor], window_ms: float | None = None,
                 max_batch: int = 64, *, device=None, controller: WindowController | None = None,
                 warmup: torch.Tensor | None = None):
        if not callable(model_fn):
            raise TypeError(f"model_fn={model_fn!r} must be callable: a model or a function of a batch tensor")
        if controller is not None:
            if window_ms is not None:
                raise ValueError(f"window_ms={window_ms} and a controller were both given: the controller sets "
                                 f"the window; start it there, e.g. WindowController(..., window_ms={window_ms})")
            window_ms = controller.window_ms
        self.model_fn = model_fn
        self.window_ms = DEFAULT_WINDOW_MS if window_ms is None else window_ms
        self.max_batch = check_int("max_batch", max_batch, low=1)
        self.device = None if device is None else torch.device(device)
        self.controller = controller
        self.batches: list[BatchRecord] = []
        self._recent_ms: list[float] = []      # latencies since the controller's last decision
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()          # orders submit() against close()
        self._closed = False
        self._worker: threading.Thread | None = None
        self._sample_shape: torch.Size | None = None
        if warmup is not None:
            if not isinstance(warmup, torch.Tensor):
                raise TypeError(f"warmup must be one sample as a torch.Tensor, got {type(warmup).__name__}")
            self._sample_shape = warmup.shape
        self._warmup = warmup
        self.warmup_s = 0.0
        self._warm = threading.Event()         # set when the worker has warmed up (or failed to)
        self._warmup_error: Exception | None = None

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``close()``."""
        return self._worker is not None and not self._closed

    @property
    def window_ms(self) -> float:
        return self._window_ms

    @window_ms.setter
    def window_ms(self, value: float) -> None:
        self._window_ms = check_float("window_ms", value, low=0.0, low_open=True)

    # -- callers --------------------------------------------------------------------------------------
    def submit(self, x: torch.Tensor) -> Future:
        """Queue one sample (no batch dimension); the future's result is its row of the model's output."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor holding one sample (no batch dimension); "
                            f"got {type(x).__name__}")
        with self._lock:
            if self._closed:
                raise RuntimeError("submit() after close(): this TimeWindowBatcher accepts no more requests; "
                                   "create a new one")
            if self._sample_shape is None:
                self._sample_shape = x.shape
            elif x.shape != self._sample_shape:
                raise ValueError(f"x has shape {tuple(x.shape)} but this batcher serves samples of shape "
                                 f"{tuple(self._sample_shape)} (the first request's or the warm-up's): "
                                 f"requests are stacked")
            request = _Request(x, Future(), time.perf_counter())
            self._queue.put(request)
        return request.future

    def infer(self, x: torch.Tensor, timeout: float | None = None) -> torch.Tensor:
        """Submit ``x`` and wait for its output row (raises what the model raised)."""
        return self.submit(x).result(timeout)

    async def ainfer(self, x: torch.Tensor) -> torch.Tensor:
        """``infer`` for asyncio: awaits the row without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(x))

    # -- life cycle -----------------------------------------------------------------------------------
    def start(self) -> TimeWindowBatcher:
        """Start the worker thread and wait for its warm-up. Requests submitted before wait in the queue."""
        with self._lock:
            if self._closed:
                raise RuntimeError("start() after close(): create a new TimeWindowBatcher")
            if self._worker is not None:
                raise RuntimeError("start() was already called: the worker is running")
            self._worker = self._spawn()
        self._warm.wait()
        if self._warmup_error is not None:
            self.close(drain=False)
            raise RuntimeError(f"the warm-up failed, so the batcher is closed: {self._warmup_error!r}") \
                from self._warmup_error
        return self

    def close(self, drain: bool = True) -> None:
        """Accept no more requests; serve the queued ones (``drain=True``, starting the worker if needed) or
        cancel their futures (``drain=False``: their ``result()`` raises ``CancelledError``); wait for the
        worker to finish. Batches already running complete either way. A second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not drain:
            while True:
                try:
                    self._queue.get_nowait().future.cancel()
                except queue.Empty:
                    break
        self._queue.put(_STOP)
        if self._worker is None and drain:
            self._worker = self._spawn()
        if self._worker is not None:
            self._worker.join()

    def __enter__(self) -> TimeWindowBatcher:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _spawn(self) -> threading.Thread:
        # a new thread starts with torch's default intra-op thread count, not the caller's setting
        worker = threading.Thread(target=self._serve, args=(torch.get_num_threads(),), name="TimeWindowBatcher",
                                  daemon=True)
        worker.start()
        return worker

    # -- the worker -----------------------------------------------------------------------------------
    def _serve(self, threads: int) -> None:
        torch.set_num_threads(threads)
        if self._warmup is not None:
            start = time.perf_counter()
            try:
                for size in range(1, self.max_batch + 1):
                    self._compute([self._warmup] * size)
            except Exception as exc:  # start() reports it and closes the batcher
                self._warmup_error = exc
            self.warmup_s = time.perf_counter() - start
        self._warm.set()
        stopping = False
        while not stopping:
            batch, stopping = self._collect()
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]  # drop cancelled ones
            if batch:
                self._run(batch)

    def _collect(self) -> tuple[list[_Request], bool]:
        """Wait for a first request, then gather until ``window_ms`` after its arrival or ``max_batch``.
        A request that waited through the previous batch may find its window over: then the batch takes
        what is already queued, without waiting. Returns (batch, stop seen)."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = first.submitted + self.window_ms / 1000
        while len(batch) < self.max_batch:
            timeout = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self, batch: list[_Request]) -> None:
        start = time.perf_counter()
        try:
            rows, error = self._compute([r.x for r in batch]), None
        except Exception as exc:  # delivered to every caller of the batch; the worker serves on
            rows, error = None, exc
        end = time.perf_counter()
        self._record(batch, start, end, error)
        for i, request in enumerate(batch):
            if error is None:
                request.future.set_result(rows[i])
            else:
                request.future.set_exception(error)

    def _compute(self, samples: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            x = torch.stack(samples)                         # (B, *sample_shape)
            if self.device is not None:
                x = x.to(self.device)
            out = self.model_fn(x)                           # (B, ...)
        if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != len(samples):
            got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model_fn must return a tensor with one row per request: got {got} for a batch "
                             f"of {len(samples)}")
        if out.is_cuda:
            torch.cuda.synchronize(out.device)  # kernels are queued asynchronously: wait before answering
        return out.unbind(0)

    def _record(self, batch: list[_Request], start: float, end: float, error: Exception | None) -> None:
        """Log the batch; feed the controller the latencies submit → end of this batch's requests."""
        wait_ms, compute_ms = (start - batch[0].submitted) * 1e3, (end - start) * 1e3
        self.batches.append(BatchRecord(len(batch), wait_ms, compute_ms, "" if error is None else repr(error)))
        if self.controller is None:
            return
        self._recent_ms.extend((end - r.submitted) * 1e3 for r in batch)
        if len(self._recent_ms) >= self.controller.every:
            self.window_ms = self.controller.step(p99_ms=float(np.percentile(self._recent_ms, 99)))
            self._recent_ms.clear()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self.running else "not started"
        return (f"{type(self).__name__}(window_ms={self.window_ms:g}, max_batch={self.max_batch}, "
                f"{state}, batches={len(self.batches)})")
