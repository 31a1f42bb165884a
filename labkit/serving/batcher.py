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

Failures. An ``Exception`` from the model reaches every caller of that batch and the worker serves on. Any
other ``BaseException`` (``SystemExit``, ``KeyboardInterrupt``, …) stops the worker, as it would stop a
program: that batch's callers get it, every request still queued fails with a ``RuntimeError`` naming it
(``__cause__`` holds it), ``error`` keeps it, one ``RuntimeWarning`` line says so, and ``submit()`` raises
the same ``RuntimeError`` at once. No future is left pending: ``close()`` waits at most ``timeout``
seconds (60 by default) for the worker, then fails whatever is still queued; a second call does nothing.

Overload. Offered more than the model answers at ``max_batch``, an unbounded queue grows all run, and so
does every request's latency. ``max_queue=Q`` bounds the wait: a request that finds Q requests queued is
refused at once, its future failing with ``Overloaded`` (counted in ``refused``: never silently dropped),
and a served request waits at most about window + (1 + ⌈Q/max_batch⌉) batch service times; Q = max_batch
keeps it within 2·(window + one batch). Measured on 2 CPU cores with a model sleeping 2 + 0.1·B ms,
``max_batch=8`` (at most 2 857 requests/s), window 5 ms, Poisson arrivals at 8× the one-by-one rate
(3 810/s, 11 520 requests in 3 s), threads generator (``run_load``), two runs each:

    queue            served p99     refused        served req/s    at 0.5× the one-by-one rate
    unbounded        1.35–1.48 s    0              2 450–2 640     p99 8–10 ms
    max_queue=8      9.0–9.6 ms     4 007–4 042    2 490–2 500     p99 9 ms, none refused

(bound 2·(5 + 2.8) = 15.6 ms). ``tests/test_serving_faults.py`` checks the bound, the count and the light
load. The window controller's side of overload is in ``labkit.serving.controller``.

Chapter: Time-window batching for inference.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
import warnings
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from labkit.checks import check_float, check_int
from labkit.serving.controller import WindowController

DEFAULT_WINDOW_MS = 10.0
CLOSE_TIMEOUT_S = 60.0  # close() waits this long for the worker by default, then fails what is still queued
_STOP = object()  # queued by close(): the worker finishes what came before it, then exits


class Overloaded(RuntimeError):
    """A request refused at once because ``max_queue`` requests were already waiting (see the module
    docstring): retry later, or add capacity."""


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
            their p99 latency (submit → result), the median service time of their batches and the share
            of full batches, and sets ``window_ms``.
        warmup: one sample (like a request); if given, the worker runs batches of 1..max_batch copies of it
            before serving (see the module docstring). ``warmup_s`` says how long that took.
        max_queue: refuse a request (its future fails with ``Overloaded``) when this many are already
            queued (default None: unbounded). ``max_queue=max_batch`` keeps a served request's latency
            within about window + 2 batches.

    Every request is answered exactly once, in arrival order: its future gets its own row of the output,
    the exception the batch raised (every caller of that batch gets it), ``Overloaded`` (``refused`` counts
    them), or a ``RuntimeError`` when the worker stopped before its turn (``error`` holds why). ``batches``
    holds a ``BatchRecord`` per model call. ``close()`` stops accepting requests and serves (or cancels) the
    queued ones.
    """

    def __init__(self, model_fn: Callable[[torch.Tensor], torch.Tensor], window_ms: float | None = None,
                 max_batch: int = 64, *, device=None, controller: WindowController | None = None,
                 warmup: torch.Tensor | None = None, max_queue: int | None = None):
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
        self.max_queue = None if max_queue is None else check_int("max_queue", max_queue, low=1)
        self.device = None if device is None else torch.device(device)
        self.controller = controller
        self.batches: list[BatchRecord] = []
        self.refused = 0                       # requests failed with Overloaded
        self.error: BaseException | None = None  # what stopped the worker, if anything did
        self._stopped_by = ""                  # "the model function", "the warm-up" or "the worker"
        self._recent_ms: list[float] = []      # latencies since the controller's last decision
        self._recent_batches: list[BatchRecord] = []  # and the batches that served them
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()          # orders submit() against close() and the worker's end
        self._closed = False                   # no more requests: close() was called or the worker stopped
        self._close_called = False
        self._worker: threading.Thread | None = None
        self._sample_shape: torch.Size | None = None
        if warmup is not None:
            if not isinstance(warmup, torch.Tensor):
                raise TypeError(f"warmup must be one sample as a torch.Tensor, got {type(warmup).__name__}")
            self._sample_shape = warmup.shape
        self._warmup = warmup
        self.warmup_s = 0.0
        self._warm = threading.Event()         # set when the worker has warmed up (or failed to)

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``close()`` (or the worker's stop)."""
        return self._worker is not None and not self._closed

    @property
    def window_ms(self) -> float:
        return self._window_ms

    @window_ms.setter
    def window_ms(self, value: float) -> None:
        self._window_ms = check_float("window_ms", value, low=0.0, low_open=True)

    # -- callers --------------------------------------------------------------------------------------
    def submit(self, x: torch.Tensor) -> Future:
        """Queue one sample (no batch dimension); the future's result is its row of the model's output. With
        ``max_queue`` requests already queued, the returned future has failed with ``Overloaded``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor holding one sample (no batch dimension); "
                            f"got {type(x).__name__}")
        with self._lock:
            if self._closed:
                if self.error is not None:
                    raise self._stopped_error("submit() after close") from self.error
                raise RuntimeError("submit() after close(): this TimeWindowBatcher accepts no more requests; "
                                   "create a new one")
            if self._sample_shape is None:
                self._sample_shape = x.shape
            elif x.shape != self._sample_shape:
                raise ValueError(f"x has shape {tuple(x.shape)} but this batcher serves samples of shape "
                                 f"{tuple(self._sample_shape)} (the first request's or the warm-up's): "
                                 f"requests are stacked")
            request = _Request(x, Future(), time.perf_counter())
            queued = self._queue.qsize()
            if self.max_queue is not None and queued >= self.max_queue:
                self.refused += 1
            else:
                self._queue.put(request)
                return request.future
        request.future.set_exception(Overloaded(  # outside the lock: done-callbacks run here
            f"refused: {queued} requests already queued (max_queue={self.max_queue}, max_batch={self.max_batch}), "
            f"so this one would wait behind {-(-queued // self.max_batch)} batches or more; retry later, or "
            f"add capacity"))
        return request.future

    def infer(self, x: torch.Tensor, timeout: float | None = None) -> torch.Tensor:
        """Submit ``x`` and wait for its output row (raises what the model raised, or ``Overloaded``)."""
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
        if self._stopped_by == "the warm-up":
            self.close(drain=False)
            raise RuntimeError(f"the warm-up failed, so the batcher is closed: {self.error!r}") from self.error
        return self

    def close(self, drain: bool = True, timeout: float | None = CLOSE_TIMEOUT_S) -> None:
        """Accept no more requests; serve the queued ones (``drain=True``, starting the worker if needed) or
        cancel their futures (``drain=False``: their ``result()`` raises ``CancelledError``); wait for the
        worker to finish, at most ``timeout`` seconds (None: no limit). A batch already running completes
        either way; requests still queued when the time is up fail with ``RuntimeError``. A second call
        does nothing."""
        timeout = None if timeout is None else check_float("timeout", timeout, low=0.0)
        with self._lock:
            if self._close_called:
                return
            self._close_called = self._closed = True
        if not drain:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    item.future.cancel()
        self._queue.put(_STOP)
        if self._worker is None and drain and self.error is None:
            self._worker = self._spawn()
        worker = self._worker
        if worker is None or worker is threading.current_thread():  # never started, or called by model_fn
            return
        worker.join(timeout)
        if worker.is_alive():  # the model has not returned: fail the rest, leave the (daemon) thread
            failed = self._fail_queued(lambda: RuntimeError(
                f"not served: close() stopped waiting after {timeout:g} s (the model function had not "
                f"returned); raise close(timeout=...) to wait longer"))
            self._queue.put(_STOP)
            warnings.warn(f"TimeWindowBatcher.close() gave up waiting after {timeout:g} s for the model function; "
                          f"{failed} queued requests failed", RuntimeWarning, stacklevel=2)

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
        stage, batch = "the worker", []
        try:
            torch.set_num_threads(threads)
            if self._warmup is not None:
                stage, start = "the warm-up", time.perf_counter()
                for size in range(1, self.max_batch + 1):
                    self._compute([self._warmup] * size)
                self.warmup_s = time.perf_counter() - start
                stage = "the worker"
            self._warm.set()
            stopping = False
            while not stopping:
                batch, stopping = self._collect()
                batch = [r for r in batch if r.future.set_running_or_notify_cancel()]  # drop cancelled ones
                if batch:
                    fatal = self._run(batch)
                    if fatal is not None:
                        batch, stage = [], "the model function"
                        raise fatal
                batch = []
        except BaseException as exc:  # nothing may end this thread with futures left pending
            self._stop(exc, stage, batch)
        finally:
            self._warm.set()

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

    def _run(self, batch: list[_Request]) -> BaseException | None:
        """One model call; every caller of the batch gets its row or the exception. Returns an exception
        that must stop the worker (a ``BaseException`` that is not an ``Exception``), else None."""
        start = time.perf_counter()
        try:
            rows, error = self._compute([r.x for r in batch]), None
        except BaseException as exc:  # delivered to every caller of the batch
            rows, error = None, exc
        end = time.perf_counter()
        self._record(batch, start, end, error)
        for i, request in enumerate(batch):
            if error is None:
                request.future.set_result(rows[i])
            else:
                request.future.set_exception(error)
        return None if error is None or isinstance(error, Exception) else error

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

    def _record(self, batch: list[_Request], start: float, end: float, error: BaseException | None) -> None:
        """Log the batch; feed the controller the latencies submit → end of this batch's requests, the
        batches' median service time and their share that closed full."""
        wait_ms, compute_ms = (start - batch[0].submitted) * 1e3, (end - start) * 1e3
        record = BatchRecord(len(batch), wait_ms, compute_ms, "" if error is None else repr(error))
        self.batches.append(record)
        if self.controller is None:
            return
        self._recent_ms.extend((end - r.submitted) * 1e3 for r in batch)
        self._recent_batches.append(record)
        if len(self._recent_ms) >= self.controller.every:
            recent = self._recent_batches
            self.window_ms = self.controller.step(
                p99_ms=float(np.percentile(self._recent_ms, 99)),
                service_ms=float(np.median([r.compute_ms for r in recent])),
                full_share=sum(r.size == self.max_batch for r in recent) / len(recent))
            self._recent_ms.clear()
            self._recent_batches.clear()

    # -- when the worker stops ------------------------------------------------------------------------
    def _stop(self, exc: BaseException, stage: str, batch: list[_Request]) -> None:
        """The worker is ending on ``exc``: refuse new requests, fail the batch in hand with ``exc`` and
        every queued request with a RuntimeError that names it, and say so in one line."""
        with self._lock:
            self._closed = True
            self.error, self._stopped_by = exc, stage
        for request in batch:
            _fail(request.future, exc)
        failed = self._fail_queued(lambda: self._stopped_error("not served"))
        if stage != "the warm-up":  # start() raises that one
            warnings.warn(f"TimeWindowBatcher stopped: {stage} raised {exc!r}; {failed} queued requests failed "
                          f"and submit() now raises", RuntimeWarning, stacklevel=1)

    def _stopped_error(self, what: str) -> RuntimeError:
        return RuntimeError(f"{what}: the batcher is closed because {self._stopped_by} raised {self.error!r}, "
                            f"which stopped its worker; create a new TimeWindowBatcher")

    def _fail_queued(self, make_error: Callable[[], BaseException]) -> int:
        """Fail every request still queued with a fresh ``make_error()``; returns how many."""
        failed = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return failed
            if item is not _STOP:
                error = make_error()
                error.__cause__ = self.error
                failed += _fail(item.future, error)

    def __repr__(self) -> str:
        state = (f"stopped by {self.error!r}" if self.error is not None else "closed" if self._closed
                 else "running" if self.running else "not started")
        queue_cap = "" if self.max_queue is None else f", max_queue={self.max_queue}, refused={self.refused}"
        return (f"{type(self).__name__}(window_ms={self.window_ms:g}, max_batch={self.max_batch}{queue_cap}, "
                f"{state}, batches={len(self.batches)})")


def _fail(future: Future, error: BaseException) -> bool:
    """Set ``error`` on a future nobody answered yet; False if it was already done (or cancelled)."""
    try:
        future.set_exception(error)
    except InvalidStateError:
        return False
    return True
