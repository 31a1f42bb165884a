"""Work spread over spawned worker processes that stops at once when interrupted: ``labkit tune --jobs N``.

``run_all(fn, calls, jobs)`` calls ``fn(*args)`` for each ``args`` of ``calls`` in a pool of ``jobs`` processes.
An error in one call lets the others finish, then the first one (in order) is raised. Ctrl-C, or SIGTERM (as
schedulers and ``timeout`` send it; turned into an exception while the pool runs, the previous handler back
after), stops everything at once: the queued calls are cancelled, the workers terminated (a trial resumes
from its last checkpoint), one line tells how many calls finished, and the interrupt goes on as
``KeyboardInterrupt`` or ``SystemExit(143)``. On Linux a parent killed outright (SIGKILL) takes its workers
with it too (the kernel's parent-death signal). Without this, ``with ProcessPoolExecutor()`` waits for every
running and queued call after a Ctrl-C, and a SIGTERM leaves the workers running as orphans.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable


PR_SET_PDEATHSIG = 1          # prctl(2): the signal the calling process gets when its parent dies


class _Terminated(BaseException):
    """SIGTERM arrived while the pool ran."""


def run_all(fn: Callable, calls: list[tuple], jobs: int) -> None:
    """``fn(*args)`` for each ``args`` in ``calls`` on ``jobs`` spawned processes (``fn`` a module-level
    function, as pickling needs); see the module's docstring for errors and interrupts."""
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(os.getpid(),))
    futures, previous = [], {}
    term = {} if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN else {signal.SIGTERM: _raise_terminated}
    try:
        with _handlers(term) as previous:
            futures += [pool.submit(fn, *args) for args in calls]
            wait(futures)
            for future in futures:
                future.result()
    except (KeyboardInterrupt, _Terminated) as stop:
        with _handlers({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}):   # a second Ctrl-C
            _stop(pool, [p for p in multiprocessing.active_children() if p not in before])  # cannot cut this short
        done = sum(f.done() and not f.cancelled() and f.exception() is None for f in futures)
        print(f"interrupted: {done} of {len(calls)} finished, the other {len(calls) - done} stopped (they resume "
              f"when run again)",
              file=sys.stderr, flush=True)
        if isinstance(stop, _Terminated):
            if callable(previous.get(signal.SIGTERM)):
                previous[signal.SIGTERM](signal.SIGTERM, None)
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    pool.shutdown(wait=True)


def _stop(pool: ProcessPoolExecutor, workers: list) -> None:
    """Cancel the pool's queued calls and end its ``workers`` (SIGTERM, then SIGKILL if one lingers). The
    workers are the children started since the pool was made (multiprocessing's public list: the executor
    keeps its own only in the private ``_processes``)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        process.terminate()
    for process in workers:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
    pool.shutdown(wait=True)           # the workers are gone: this only joins the executor's thread


def _raise_terminated(signum, frame):
    raise _Terminated()


def _init_worker(parent: int) -> None:
    """A worker leaves Ctrl-C (sent to the whole foreground process group) to the parent, which stops it.
    On Linux it also ends when the parent dies outright (SIGKILL, a crash), which no handler can see: the
    kernel's parent-death signal. Its progress bars are off, so tqdm's lock need not be a named semaphore,
    which a terminated worker would leave for multiprocessing's resource tracker to clean up, with a
    warning, at the parent's exit."""
    from tqdm import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:               # the parent died before the call: nobody would signal us
            os._exit(1)
    tqdm.set_lock(threading.RLock())


@contextmanager
def _handlers(handlers: dict):
    """Install ``{signal: handler}`` for the block and yield the handlers they replaced, which are back
    after it. Only the main thread can set handlers: elsewhere this does nothing (and yields {})."""
    if threading.current_thread() is not threading.main_thread():
        yield {}
        return
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield previous
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
