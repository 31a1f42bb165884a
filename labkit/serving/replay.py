"""A replay of ``TimeWindowBatcher``'s close rule with nothing else happening (no threads, no clock noise):
a batch opens at its first request and closes at min(t_first + w, the arrival filling it to B_max), or when
the worker is free if it is still busy, and every batch takes ``service_ms``. Beside it the formula it is
checked against, E[B] ≈ min(B_max, 1 + λw). Chapter: Time-window batching for inference ("A replay of the
rule"); the serving panel replays it at every grid point.
"""
from __future__ import annotations

import numpy as np


def replay(arrivals: np.ndarray, window_ms: float, max_batch: int,
           service_ms: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Batch sizes and latencies (ms) of the close rule on arrival times (s, increasing), every batch
    taking ``service_ms``: a model of ``TimeWindowBatcher`` with nothing else happening (no threads, no
    clock noise). Chapter: Time-window batching for inference ("A replay of the rule")."""
    w, s = window_ms / 1e3, service_ms / 1e3
    sizes, latency = [], np.empty(len(arrivals))
    free, k = 0.0, 0                              # when the worker is next free; the oldest request waiting
    while k < len(arrivals):
        close = max(arrivals[k] + w, free)        # the window ends, or later if the worker is still busy
        end = min(int(np.searchsorted(arrivals, close, side="right")), k + max_batch)
        if end - k == max_batch:                  # full: the batch closes when its last request arrives
            close = max(arrivals[end - 1], free)
        free = close + s                          # the whole batch is answered
        latency[k:end] = (free - arrivals[k:end]) * 1e3
        sizes.append(end - k)
        k = end
    return np.array(sizes), latency


def formula_batch(rate: float, window_ms: float, max_batch: int) -> float:
    """E[B] ≈ min(B_max, 1 + λw): the first request and the Poisson arrivals of its window."""
    return min(max_batch, 1 + rate * window_ms / 1e3)
